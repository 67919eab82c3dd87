"""Downloads end to end against a local HTTP server on 127.0.0.1: archives and files built from tests/fixtures,
interrupted transfers that resume with a Range request, checksum mismatches, the cache folder."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prompt_adapters.data import lama, superglue
from prompt_adapters.data.download import (
    CACHE_ENV,
    ChecksumMismatch,
    DownloadFailed,
    Expected,
    default_cache_dir,
    fetch,
)
from prompt_adapters.data.lama import LamaDataUnavailable, download_lama, load_candidates, load_facts, load_relations
from prompt_adapters.data.superglue import SuperGlueDataUnavailable, download_fewglue, load_task


@dataclass
class Server:
    """What the local server serves (path -> bytes), how it misbehaves, and the requests it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    """path -> bytes sent before the connection is dropped, once per entry (the entry is then removed)."""
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            requested = self.headers.get("Range")
            state.requests.append((path, requested))
            if path not in state.files:
                self.send_error(404)
                return
            body = state.files[path]
            start = int(requested.removeprefix("bytes=").rstrip("-")) if requested and not state.ignore_range else 0
            if start >= len(body) and start > 0:
                self.send_error(416)
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = state.cut_after.pop(path, None)
            self.wfile.write(body[start:cut] if cut is not None else body[start:])
            if cut is not None:
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No offline flags, and a cache folder of the test's own."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _expected(data: bytes) -> Expected:
    return Expected(len(data), hashlib.sha256(data).hexdigest())


def _lama_archives(lama_dir: Path) -> tuple[bytes, bytes]:
    """A data.zip and a data.tar.gz laid out like LAMA's and OptiPrompt's, holding the fixture files."""
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.write(lama_dir / "relations.jsonl", "data/relations.jsonl")
        z.write(lama_dir / "trex/autoprompt_original_full/P19/test.jsonl", "data/TREx/P19.jsonl")
        google_re = "google_re/lama_original/place_of_birth_test.jsonl"
        z.write(lama_dir / google_re, "data/Google_RE/place_of_birth_test.jsonl")
        z.write(lama_dir / "squad/lama_original/test.jsonl", "data/Squad/test.jsonl")
        z.writestr("data/ConceptNet/test.jsonl", "{}\n")  # not selected by any rule
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w:gz") as t:
        for split in ("train", "dev"):
            facts = lama_dir / f"trex/autoprompt_original_subobj/P19/{split}.jsonl"
            t.add(facts, f"data/autoprompt_data/P19/{split}.jsonl")
    return zipped.getvalue(), tarred.getvalue()


def _lama_downloads(server: Server, lama_dir: Path) -> tuple[lama.Download, ...]:
    """The real download table, pointed at the local server, with the fixture vocabulary as the one plain file."""
    server.files["data.zip"], server.files["data.tar.gz"] = _lama_archives(lama_dir)
    vocab = (lama_dir / "vocab/common_vocab_cased.txt").read_bytes()
    server.files["common_vocab_cased.txt"] = vocab
    zip_entry, tar_entry = lama.DOWNLOADS[0], lama.DOWNLOADS[1]
    assert zip_entry.url == lama.LAMA_DATA_URL and tar_entry.url == lama.OPTIPROMPT_DATA_URL
    return (
        replace(zip_entry, url=f"{server.url}/data.zip"),
        replace(tar_entry, url=f"{server.url}/data.tar.gz"),
        lama.Download(f"{server.url}/common_vocab_cased.txt", {"": "vocab/common_vocab_cased.txt"}, _expected(vocab)),
    )


# ---------------------------------------------------------------------------------------------- LAMA end to end


def test_download_lama_from_a_local_server(server: Server, online: Path, fixture_data: Path) -> None:
    lama_dir = fixture_data / "lama"
    downloads = _lama_downloads(server, lama_dir)
    target = download_lama(downloads=downloads)
    assert target == online / "lama"
    assert len(load_relations(target)) == len(load_relations(lama_dir))
    test = load_facts(target, "P19", "test")  # the "autoprompt" corpus falls back to the LAMA-format file
    assert test.to_dict() == load_facts(lama_dir, "P19", "test", corpus="autoprompt_full").to_dict()
    assert load_facts(target, "P19", "train").to_dict() == load_facts(lama_dir, "P19", "train").to_dict()
    assert load_facts(target, corpus="squad").to_dict() == load_facts(lama_dir, corpus="squad").to_dict()
    assert len(load_facts(target, "place_of_birth", corpus="google_re")) == 2
    assert load_candidates(target, "common_vocab_cased") == load_candidates(lama_dir, "common_vocab_cased")
    assert not (target / "conceptnet").exists()
    assert sorted(p.name.split("-", 1)[1] for p in (online / "downloads").iterdir()) == ["data.tar.gz", "data.zip"]
    seen = len(server.requests)
    assert download_lama(downloads=downloads) == target  # everything is in the cache: no request at all
    assert len(server.requests) == seen


def test_interrupted_archive_download_resumes_with_a_range_request(
    server: Server, online: Path, fixture_data: Path
) -> None:
    downloads = _lama_downloads(server, fixture_data / "lama")
    server.cut_after["data.zip"] = 300
    target = download_lama(downloads=downloads)
    assert [r for r in server.requests if r[0] == "data.zip"] == [("data.zip", None), ("data.zip", "bytes=300-")]
    archive = next((online / "downloads").glob("*-data.zip"))
    assert archive.read_bytes() == server.files["data.zip"]
    assert load_facts(target, "P19", "test")[0]["sub"] == "Allan Peiper"


def test_checksum_mismatch_is_refused_and_nothing_is_kept(server: Server, online: Path, fixture_data: Path) -> None:
    *archives, vocab = _lama_downloads(server, fixture_data / "lama")
    wrong = replace(vocab, expected=Expected(vocab.expected.size, "0" * 64))
    with pytest.raises(ChecksumMismatch, match=r"common_vocab_cased\.txt: downloaded file has sha256 [0-9a-f]{64}, "
                                               r"expected 0{64}; it was deleted"):
        download_lama(downloads=(*archives, wrong))
    vocab_file = online / "lama" / "vocab" / "common_vocab_cased.txt"
    assert not vocab_file.exists() and not vocab_file.with_name(vocab_file.name + ".part").exists()
    short = replace(vocab, expected=Expected(vocab.expected.size + 1, None))
    with pytest.raises(ChecksumMismatch, match=f"size {vocab.expected.size} bytes, expected {vocab.expected.size + 1}"):
        download_lama(downloads=(short,))


def test_lama_download_errors_say_what_to_do(server: Server, online: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = lama.Download(f"{server.url}/nothing.zip", {"x": "x"})
    with pytest.raises(LamaDataUnavailable, match=r"nothing\.zip.*HTTP Error 404.*--data-dir") as err:
        download_lama(downloads=(missing,))
    assert "docs/lama-data-and-metrics.md" in str(err.value)
    assert [r[0] for r in server.requests] == ["nothing.zip"]  # a 404 is not retried
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LamaDataUnavailable, match="offline mode: HF_HUB_OFFLINE=1"):
        download_lama()


# ---------------------------------------------------------------------------------------------- FewGLUE end to end


def test_download_fewglue_from_a_local_server(server: Server, online: Path, fixture_data: Path) -> None:
    root = fixture_data / "superglue"
    files = {}
    for path in sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jsonl")):
        server.files[path] = (root / path).read_bytes()
        files[path] = (f"{server.url}/{path}", _expected(server.files[path]))
    server.cut_after["val/RTE/val.jsonl"] = 1000
    target = download_fewglue(files=files)
    assert target == online / "superglue"
    for task, split in (("RTE", "train"), ("RTE", "val"), ("MultiRC", "dev32"), ("WSC", "unlabeled")):
        assert load_task(target, task, split).to_list() == load_task(root, task, split).to_list()
    assert ("val/RTE/val.jsonl", "bytes=1000-") in server.requests
    seen = len(server.requests)
    download_fewglue(files=files)
    assert len(server.requests) == seen


def test_fewglue_table_is_complete() -> None:
    """Every split load_task reads has a pinned address, size and SHA-256."""
    expected = {
        superglue.SPLIT_FILES[split].format(task=task)
        for task in superglue.TASKS
        for split in ("train", "dev32", "val")
    } | {superglue.SPLIT_FILES["unlabeled"].format(task=task) for task in ("COPA", "MultiRC", "WiC", "WSC")}
    assert set(superglue.FEWGLUE_FILES) == expected
    for url, sums in superglue.FEWGLUE_FILES.values():
        assert url.startswith("https://raw.githubusercontent.com/") and sums.size and len(sums.sha256 or "") == 64


def test_fewglue_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SuperGlueDataUnavailable, match="offline mode: HF_DATASETS_OFFLINE=1"):
        download_fewglue()


# ---------------------------------------------------------------------------------------------- fetch


def test_fetch_keeps_the_received_bytes_and_resumes_on_the_next_call(server: Server, tmp_path: Path) -> None:
    server.files["f.bin"] = bytes(range(256)) * 40
    server.cut_after["f.bin"] = 1234
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadFailed, match=r"1234 bytes are kept in .*f\.bin\.part and the next attempt resumes"):
        fetch(f"{server.url}/f.bin", dest, _expected(server.files["f.bin"]), retries=0)
    assert not dest.exists() and dest.with_name("f.bin.part").stat().st_size == 1234
    fetch(f"{server.url}/f.bin", dest, _expected(server.files["f.bin"]), retries=0)
    assert dest.read_bytes() == server.files["f.bin"]
    assert server.requests == [("f.bin", None), ("f.bin", "bytes=1234-")]
    assert not dest.with_name("f.bin.part").exists()


def test_fetch_starts_over_when_the_server_ignores_range(server: Server, tmp_path: Path) -> None:
    server.files["f.bin"] = b"0123456789" * 100
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"0123")
    fetch(f"{server.url}/f.bin", dest, Expected())
    assert dest.read_bytes() == server.files["f.bin"]  # the 200 answer replaced the partial file


def test_fetch_of_an_already_complete_part_asks_nothing_more(server: Server, tmp_path: Path) -> None:
    server.files["f.bin"] = b"abc" * 10
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(server.files["f.bin"])
    fetch(f"{server.url}/f.bin", dest, _expected(server.files["f.bin"]))
    assert server.requests == [] and dest.read_bytes() == server.files["f.bin"]


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert lama.default_lama_dir() == tmp_path / "mine" / "lama"
    assert superglue.default_superglue_dir() == tmp_path / "mine" / "superglue"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "prompt_adapters"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "prompt_adapters"
