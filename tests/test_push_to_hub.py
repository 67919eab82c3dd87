"""push_to_hub of a prompt adapter over real HTTP to a local fake hub, then reload from the repo id."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
import torch
from fakehub import FakeHub
from peft import PeftConfig, PeftModel, get_peft_model

from prompt_adapters import DeepPerturbConfig, PromptCollator
from prompt_adapters.testing import build_tiny_model, perturb_trainable


@pytest.fixture
def hub(tmp_path: pathlib.Path) -> Iterator[FakeHub]:
    with FakeHub() as hub, hub.patch_client(tmp_path / "hf_home"):
        yield hub


def test_push_to_hub_and_reload_by_repo_id(hub: FakeHub) -> None:
    base, tok = build_tiny_model("t5")
    model = get_peft_model(base, DeepPerturbConfig(templates=["[X] was born in [Y] ."], tokenizer=tok))
    perturb_trainable(model, 1.0)
    batch = PromptCollator(tok, model)([("Dante", "Paris")])
    expected = model(**batch).answer_log_probs

    model.push_to_hub("me/born-in")

    files = hub.files("me/born-in")
    assert set(files) == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    card = files["README.md"].decode()
    assert "import prompt_adapters" in card and "library_name: peft" in card
    assert "PeftModel.from_pretrained(base, \"me/born-in\")" in card
    assert PeftConfig.from_pretrained("me/born-in").peft_type == "DEEP_PERTURB"
    again = PeftModel.from_pretrained(build_tiny_model("t5")[0], "me/born-in")
    assert torch.equal(again(**batch).answer_log_probs, expected)
