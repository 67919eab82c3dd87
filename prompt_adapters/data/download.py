"""Resumable, verified downloads into a local cache folder (used by the LAMA and FewGLUE downloaders).

Files land in ``default_cache_dir()``: ``$PROMPT_ADAPTERS_CACHE`` if set, else ``$XDG_CACHE_HOME/prompt_adapters``,
else ``~/.cache/prompt_adapters`` (the layout Hugging Face uses for its own caches). A download is written to
``<file>.part`` and renamed only once complete and verified, so an interrupted download never looks finished; the
next attempt asks the server for the missing bytes only (an HTTP ``Range`` request) and starts over if the server
ignores it. Size and SHA-256 are checked where they are known; a mismatch deletes the file and raises
``ChecksumMismatch``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "PROMPT_ADAPTERS_CACHE"
"""Environment variable naming the cache folder (downloads and unpacked data sets)."""
CHUNK_BYTES = 1 << 20


def default_cache_dir() -> Path:
    """The cache folder: ``$PROMPT_ADAPTERS_CACHE``, else ``$XDG_CACHE_HOME/prompt_adapters``, else
    ``~/.cache/prompt_adapters``. It is not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "prompt_adapters"


class DownloadFailed(RuntimeError):
    """A download could not be completed (network error, or the connection broke too often); the bytes received
    so far stay in ``<file>.part`` and the next attempt resumes from there."""


class ChecksumMismatch(ValueError):
    """A downloaded file is not the expected one (wrong size or SHA-256); it has been deleted."""


@dataclass(frozen=True)
class Expected:
    """What a remote file must be: its size in bytes and SHA-256, each None where the source publishes neither."""

    size: int | None = None
    sha256: str | None = None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(path: Path, expected: Expected) -> str | None:
    """Why ``path`` is not the expected file, or None when it matches (unknown fields are not checked)."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size {size} bytes, expected {expected.size}"
    if expected.sha256 is not None:
        digest = sha256_of(path)
        if digest != expected.sha256:
            return f"sha256 {digest}, expected {expected.sha256}"
    return None


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-", header or "")
    return int(match.group(1)) if match else None


def _attempt(url: str, part: Path, expected: Expected, timeout: float) -> int | None:
    """One request for the bytes of ``url`` missing from ``part``; return the total size if the server said it.

    Raises the network errors of urllib / http.client unchanged; what was received is kept in ``part``.
    """
    offset = part.stat().st_size if part.exists() else 0
    if expected.size is not None and offset >= expected.size:
        return expected.size  # complete (or too long: the size check rejects it)
    headers = {"User-Agent": "prompt-adapters", "Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing after offset: the part is already whole
            return offset
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        start = _content_range_start(response.headers.get("Content-Range"))
        if resumed and start != offset:
            raise http.client.HTTPException(f"asked for bytes from {offset}, the server sent bytes from {start}")
        length = response.headers.get("Content-Length")
        total = (offset if resumed else 0) + int(length) if length is not None else None
        with part.open("ab" if resumed else "wb") as f:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                f.write(chunk)
    return total


def fetch(url: str, dest: Path, expected: Expected = Expected(), *, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds the expected file; return ``dest``.

    A broken connection is retried ``retries`` times, each retry resuming where the last stopped. Raises
    ``DownloadFailed`` (bytes kept in ``dest.part`` for the next call) or ``ChecksumMismatch`` (file deleted).
    """
    dest = Path(dest)
    if dest.is_file() and _mismatch(dest, expected) is None:  # only complete, verified files are ever renamed here
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    error: Exception | None = None
    for _ in range(retries + 1):
        try:
            total = _attempt(url, part, expected, timeout)
        except urllib.error.HTTPError as e:
            error = e
            if e.code < 500:  # the request itself is wrong (no such file, forbidden): asking again cannot help
                break
            continue
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
            error = e
            continue
        received = part.stat().st_size
        if total is not None and received < total:
            error = ConnectionError(f"connection closed after {received} of {total} bytes")
            continue
        problem = _mismatch(part, Expected(size=expected.size if expected.size is not None else total,
                                           sha256=expected.sha256))
        if problem is not None:
            part.unlink()
            raise ChecksumMismatch(f"{url}: downloaded file has {problem}; it was deleted. The file at that address "
                                   "has changed or the transfer was corrupted: try again, and report it if it persists")
        os.replace(part, dest)
        return dest
    received = part.stat().st_size if part.exists() else 0
    raise DownloadFailed(f"cannot download {url} ({type(error).__name__}: {error}); {received} bytes are kept in "
                         f"{part} and the next attempt resumes from there") from error
