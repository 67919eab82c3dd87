"""The fake Hub works with the real huggingface_hub client, in-process and in a fresh interpreter."""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Iterator

import pytest
import torch
from fakehub import FakeHub, run_with_hub
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForMaskedLM


@pytest.fixture
def hub(tmp_path: pathlib.Path) -> Iterator[FakeHub]:
    """A running fake Hub that this process's client talks to, with a fresh cache under tmp_path."""
    with FakeHub() as hub, hub.patch_client(tmp_path / "hf_home"):
        yield hub


def test_upload_download_round_trip(hub: FakeHub, tmp_path: pathlib.Path) -> None:
    api = HfApi()
    assert api.create_repo("me/data").repo_id == "me/data"
    assert api.create_repo("me/data", exist_ok=True).repo_id == "me/data"
    assert api.create_repo("solo").repo_id == "me/solo"  # no namespace -> the token's user
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a/b.txt", repo_id="me/data")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="me/data")

    path = hf_hub_download("me/data", "a/b.txt")
    assert pathlib.Path(path).read_bytes() == b"hello"
    assert pathlib.Path(path).is_relative_to(tmp_path / "hf_home" / "hub")
    assert sorted(api.list_repo_files("me/data")) == ["a/b.txt", "config.json"]
    assert [f.path for f in api.list_repo_tree("me/data", "a")] == ["a/b.txt"]
    snapshot = pathlib.Path(snapshot_download("me/data"))
    assert (snapshot / "config.json").read_bytes() == b"{}"
    assert hub.files("me/data") == {"a/b.txt": b"hello", "config.json": b"{}"}
    assert hub.repos() == ["me/data", "me/solo"]


def test_missing_repo_file_and_revision_raise_client_errors(hub: FakeHub) -> None:
    HfApi().create_repo("me/empty")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/nope", "x.txt")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("me/empty", "x.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("me/empty", "x.txt", revision="0" * 40)
    assert not HfApi().file_exists("me/empty", "x.txt")


def test_history_and_per_file_etags(hub: FakeHub) -> None:
    api = HfApi()
    api.create_repo("me/hist")
    upload = functools.partial(api.upload_file, path_in_repo="f.txt", repo_id="me/hist")
    first = upload(path_or_fileobj=b"v1", commit_message="v1").oid
    upload(path_or_fileobj=b"v2", commit_message="v2")
    upload(path_or_fileobj=b"v2", commit_message="v3")  # unchanged content: the client makes no commit

    # both versions land in one cache; only per-content ETags keep their blobs apart
    assert pathlib.Path(hf_hub_download("me/hist", "f.txt", revision=first)).read_bytes() == b"v1"
    assert pathlib.Path(hf_hub_download("me/hist", "f.txt")).read_bytes() == b"v2"
    assert [c.message for c in hub.commits("me/hist")] == ["initial commit", "v1", "v2"]


def _tiny_bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    return BertForMaskedLM(config).eval()


def test_peft_push_to_hub_and_from_pretrained(hub: FakeHub) -> None:
    lora = LoraConfig(target_modules=["query", "value"], init_lora_weights=False)
    model = get_peft_model(_tiny_bert(), lora)
    input_ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits

    model.push_to_hub("me/lora-test")

    files = hub.files("me/lora-test")
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    # transformers' push_to_hub replaces peft's README with its own template card (when the repo has none)
    assert b"library_name: transformers" in files["README.md"]
    posted = set(hub.paths("POST"))
    assert {"/api/repos/create", "/api/validate-yaml", "/api/models/me/lora-test/commit/main"} <= posted
    assert PeftConfig.from_pretrained("me/lora-test").target_modules == {"query", "value"}
    loaded = PeftModel.from_pretrained(_tiny_bert(), "me/lora-test")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=input_ids).logits, expected, rtol=0, atol=0)

    model.push_to_hub("me/lora-test")  # nothing changed: the client skips the commit
    assert len(hub.commits("me/lora-test")) == 2


def test_patch_client_restores_offline_client(tmp_path: pathlib.Path) -> None:
    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, dict(os.environ))
    with FakeHub() as hub, hub.patch_client(tmp_path):
        assert hub.endpoint == constants.ENDPOINT
        assert not constants.HF_HUB_OFFLINE
    assert (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, dict(os.environ)) == before


def test_run_with_hub_uses_env_vars_in_a_fresh_interpreter(tmp_path: pathlib.Path) -> None:
    script = (
        "from huggingface_hub import HfApi, hf_hub_download\n"
        "HfApi().create_repo('me/sub')\n"
        "HfApi().upload_file(path_or_fileobj=b'hi', path_in_repo='x.txt', repo_id='me/sub')\n"
        "print(open(hf_hub_download('me/sub', 'x.txt')).read())\n"
    )
    with FakeHub() as hub:
        result = run_with_hub(script, hub, tmp_path / "hf_home")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hi"
    assert hub.files("me/sub") == {"x.txt": b"hi"}
    assert (tmp_path / "hf_home" / "hub" / "models--me--sub").is_dir()
