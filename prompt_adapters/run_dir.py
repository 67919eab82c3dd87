"""Crash-safe run directories: versioned checkpoints, atomic files, an exclusive lock and the resume manifest.

A kill at any instruction leaves saved state readable:

- every file is written under a temporary name, flushed to disk, then renamed over its final name;
- a checkpoint is a fresh directory ``v000007/`` (written as ``.tmp-v000007-*`` and renamed once complete), after
  which the small pointer file ``LATEST`` is replaced atomically; older versions and stale temporaries are removed
  only after that, so at every moment at least one complete checkpoint exists;
- resuming takes the newest complete version (the pointer's, unless a crash fell between the rename and the
  pointer update) and removes what an interrupted save left behind, including the ``<dir>.old`` leftover and the
  flat ``meta.json`` + ``state.safetensors`` layout of checkpoints written by earlier versions of this library.

Every filesystem call here goes through ``os`` (no buffered ``open``), so a test can inject a failure before any one
of them. ``RunLock`` makes a run's output directory exclusive to one run; ``check_manifest`` refuses to resume a run
whose settings, library version, base model or data differ from the saved ones. ``read_record`` reads a finished
job's record, treating a damaged one as not finished. The command-line harnesses share their checks of count options
(``positive_int``, ``non_negative_int``) and model arguments (``check_model_source``) from here too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


POINTER = "LATEST"
MANIFEST = "run.json"
LOCK = ".lock"
_VERSION = re.compile(r"^v(\d{6,})$")
_LEGACY_FILES = ("meta.json", "state.safetensors")


# ------------------------------------------------------------------------------------------------ atomic files


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    if sys.platform == "win32":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data`` and flush it to disk."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(handle, view)
            view = view[written:]
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a reader (or a crash) sees the old content or the new, never a mix."""
    path = Path(path)
    os.makedirs(path.parent, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    _write_new_file(temporary, data)
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


#: what marks a folder as holding a run of the command-line harnesses
RUN_ENTRIES = ("checkpoints", "relations", "jobs", MANIFEST)


def refuse_used_output(out: Path, resume: bool, is_main_process: bool) -> None:
    """Stop a new run (no resume) whose output folder already holds a run's files, or any other file: a run
    writes ``results.md`` and more there, which must not replace a user's own files.

    Only the main process looks: it writes ``run.json`` before the others pass the barrier that follows, so a
    process started a little later would otherwise find the new run's own manifest and refuse it.
    """
    if not is_main_process or resume:
        return
    if any((Path(out) / name).exists() for name in RUN_ENTRIES):
        raise SystemExit(f"--output {out} already holds a run; pass --resume to continue it, or another --output")
    foreign = sorted(entry for entry in os.listdir(out) if entry != LOCK) if Path(out).is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise SystemExit(f"--output {out} is not empty and holds no run of this harness ({len(foreign)} entries: "
                         f"{shown}); a run writes results.md and other files there, so pass an empty or new folder")


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Delete the temporaries an interrupted atomic write left in ``directory``; return their names.

    ``.<name>.<id>.tmp`` are this module's; ``tmp*.tmp`` those of earlier versions of the library.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in os.listdir(directory):
        if entry.endswith(".tmp") and (entry.startswith(".") or entry.startswith("tmp")):
            path = directory / entry
            if path.is_dir():
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(entry)
    return removed


# ------------------------------------------------------------------------------------------------ checkpoints


class CheckpointStore:
    """Versioned checkpoints of one training job in ``directory``.

    ``save({"state.safetensors": bytes, "meta.json": bytes})`` writes a new version; ``latest()`` returns the
    directory of the newest complete one (or None). ``is_complete(path)`` says whether a version directory holds a
    readable checkpoint; the default checks that every expected file is present.
    """

    def __init__(
        self,
        directory: Path,
        files: tuple[str, ...] = _LEGACY_FILES,
        is_complete: Callable[[Path], bool] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.files = files
        self._is_complete = is_complete

    # --------------------------------------------------------------------------- reading

    def is_complete(self, path: Path) -> bool:
        if not all((path / name).is_file() for name in self.files):
            return False
        return self._is_complete(path) if self._is_complete is not None else True

    def versions(self) -> list[tuple[int, Path]]:
        """Committed version directories, newest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in os.listdir(self.directory):
            match = _VERSION.match(entry)
            if match and (self.directory / entry).is_dir():
                found.append((int(match.group(1)), self.directory / entry))
        return sorted(found, reverse=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint; falls back to older ones if the newest is damaged, with a warning that
        names the damaged versions and the one used, or says that none is left (the run then starts over)."""
        damaged = []
        found = None
        for _, path in self.versions():
            if self.is_complete(path):
                found = path
                break
            damaged.append(str(path))
        if found is None:
            legacies = (self.directory, self.directory.with_name(self.directory.name + ".old"))
            found = next((legacy for legacy in legacies if legacy.is_dir() and self.is_complete(legacy)), None)
        if damaged:
            outcome = (f"resuming from the older complete checkpoint {found}" if found is not None else
                       "no complete checkpoint is left, so training starts over from the first epoch")
            warnings.warn(f"checkpoint {', '.join(damaged)} is incomplete or unreadable; {outcome}", stacklevel=2)
        return found

    def pointer(self) -> str | None:
        """The version name ``LATEST`` points at (None when there is no pointer yet)."""
        path = self.directory / POINTER
        return path.read_text(encoding="utf-8").strip() if path.is_file() else None

    # --------------------------------------------------------------------------- writing

    def save(self, files: Mapping[str, bytes]) -> Path:
        """Write ``files`` as a new version, point ``LATEST`` at it, then remove older versions and leftovers."""
        missing = sorted(set(self.files) - set(files))
        if missing:
            raise ValueError(f"a checkpoint needs the files {list(self.files)}; {missing} not given")
        os.makedirs(self.directory, exist_ok=True)
        number = max([n for n, _ in self.versions()] + [0]) + 1
        name = f"v{number:06d}"
        staging = self.directory / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        os.mkdir(staging)
        for file_name, data in files.items():
            _write_new_file(staging / file_name, data)
        _fsync_directory(staging)
        final = self.directory / name
        os.rename(staging, final)
        _fsync_directory(self.directory)
        atomic_write_text(self.directory / POINTER, name + "\n")
        self.clean(keep=final)
        return final

    def clean(self, keep: Path) -> None:
        """Remove every version but ``keep``, staging directories, pointer temporaries and legacy leftovers.

        Legacy leftovers are the flat files, ``<dir>.old`` and ``.tmp-*`` staging directories in the parent, which
        earlier versions of this library wrote; nothing else ever writes ``.tmp-*`` there.
        """
        for entry in os.listdir(self.directory):
            path = self.directory / entry
            if path == keep or entry == POINTER:
                continue
            if _VERSION.match(entry) or entry.startswith(".tmp-"):
                shutil.rmtree(path)
            elif (entry.startswith(".") and entry.endswith(".tmp")) or entry in _LEGACY_FILES:
                os.unlink(path)
        old = self.directory.with_name(self.directory.name + ".old")
        if old.is_dir():
            shutil.rmtree(old)
        for entry in os.listdir(self.directory.parent):  # the earlier layout staged in the parent as .tmp-*
            if entry.startswith(".tmp-") and (self.directory.parent / entry).is_dir():
                shutil.rmtree(self.directory.parent / entry)


# ------------------------------------------------------------------------------------------------ lock


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive, advisory lock on a run's output directory (``OUTPUT/.lock``), held for the life of the run.

    The operating system drops the lock when its holder dies, so a killed run never leaves a stale lock. The lock
    file names its holder (pid, host, start time, command) for the message a second run gets. POSIX only
    (``fcntl.flock``); on network filesystems without flock support the lock may not be exclusive.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self._handle: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        os.makedirs(self.directory, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(handle)
            os.close(handle)
            raise RunLockedError(
                f"output directory {self.directory} is in use by another run ({describe_holder(holder)}); wait for it "
                "to finish, or pass another output directory"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        os.ftruncate(handle, 0)
        os.lseek(handle, 0, os.SEEK_SET)
        os.write(handle, json.dumps(info).encode("utf-8"))
        os.fsync(handle)
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        fcntl.flock(self._handle, fcntl.LOCK_UN)
        os.close(self._handle)
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_locked(directory: Path, is_main_process: bool, run: Callable[[], Any]) -> Any:
    """Call ``run`` while the main process holds the lock on ``directory``; a held lock ends the program with a
    message naming the holder (the command-line harnesses' ``--output``)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(directory).acquire() if is_main_process else None
    except RunLockedError as error:
        raise SystemExit(f"--output: {error}") from None
    try:
        return run()
    finally:
        if lock is not None:
            lock.release()


#: what the refusal says when the lock file names no holder
HOLDER_UNKNOWN = "holder not recorded yet"


def _read_holder(handle: int, wait: float = 2.0) -> str:
    """The lock file's holder record. A holder writes it just after taking the lock, so a run that lost the race by
    an instant may find the file still empty: it re-reads for up to ``wait`` seconds before giving up on it."""
    deadline = time.monotonic() + wait
    while True:
        os.lseek(handle, 0, os.SEEK_SET)
        text = os.read(handle, 4096).decode("utf-8", "replace")
        if describe_holder(text) != HOLDER_UNKNOWN or time.monotonic() >= deadline:
            return text
        time.sleep(0.01)


def describe_holder(text: str) -> str:
    """'pid 123 on host x, started ..., command ...' from a lock file's content."""
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}, "
                f"command: {info.get('command', '?')}")
    except (ValueError, KeyError, TypeError):
        return HOLDER_UNKNOWN


# ------------------------------------------------------------------------------------------------ manifest


def digest(value: Any) -> str:
    """A short stable hash of a JSON-serialisable value (e.g. a list of facts)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def model_digest(model: nn.Module) -> dict[str, Any]:
    """Fingerprint of a base model: its class, its config (without paths and versions) and a hash of every weight."""
    import torch  # here, so that the rest of this module (locks, atomic files) loads without torch
    hasher = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(model.state_dict().items()):
        hasher.update(name.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(str(data.dtype).encode())
        hasher.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    config = getattr(model, "config", None)
    settings = config.to_dict() if config is not None else {}
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash"):
        settings.pop(volatile, None)
    return {"class": type(model).__name__, "config": digest(settings), "weights": hasher.hexdigest()}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``{"a": {"b": 1}} -> {"a.b": 1}``)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: saved -> now' for every dotted key whose value differs (JSON round trip, so tuples equal lists)."""
    old, new = flatten(json.loads(json.dumps(saved))), flatten(json.loads(json.dumps(current)))
    return [f"{key}: {old.get(key, '<absent>')!r} in the saved run, {new.get(key, '<absent>')!r} now"
            for key in sorted(set(old) | set(new)) if old.get(key, "<absent>") != new.get(key, "<absent>")]


class ResumeMismatchError(ValueError):
    """A resumed run differs from the saved one."""


def check_manifest(directory: Path, manifest: Mapping[str, Any], resume: bool) -> None:
    """Record ``manifest`` for a new run; on resume, refuse unless it equals the saved one (naming what differs)."""
    path = Path(directory) / MANIFEST
    if not resume:
        atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))
        return
    if not path.is_file():
        raise ResumeMismatchError(
            f"cannot resume the run in {directory}: it has no {MANIFEST} (settings, library version, base model and "
            "data of the run), so a resume could mix results of different settings; start a new output directory"
        )
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ResumeMismatchError(f"cannot resume: {path} is not valid JSON ({error})") from None
    changed = differences(saved, manifest)
    if changed:
        raise ResumeMismatchError(
            f"refusing to resume the run in {directory}: it was made with other settings ("
            + "; ".join(changed)
            + "). Rerun with the saved settings, or start a new output directory"
        )


# ------------------------------------------------------------------------------------------------ finished records


def read_record(path: Path) -> dict[str, Any] | None:
    """The finished-job record ``path`` (a JSON object), or None when it is missing or damaged.

    A damaged record (truncated, not JSON, not an object) is treated like a damaged checkpoint: a warning names it
    and the caller redoes the job, whose atomic write then replaces the file.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        warnings.warn(f"finished-job record {path} is unreadable ({error}); running that job again", stacklevel=2)
        return None
    if not isinstance(record, dict):
        warnings.warn(f"finished-job record {path} holds a {type(record).__name__}, expected a JSON object; running "
                      "that job again", stacklevel=2)
        return None
    return record


# ------------------------------------------------------------------------------------------------ command-line values


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of a count that may be 0 (``--max-train 0``: no training facts); refuses negative numbers,
    which Python slicing would otherwise read as "all but the last N"."""
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (``--seeds``, ``--max-test``, ``--batch-size``)."""
    return _whole_number(text, 1)


#: a Hub model id: a name, or namespace/name (what huggingface_hub accepts as repo_id)
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def check_model_source(option: str, value: str) -> None:
    """Refuse a model argument that can be neither a local folder nor a Hub model id, before transformers reads it.

    A path that does not exist (``/data/bert``, ``./runs/model``, ``runs/a/model``) would otherwise end in
    transformers' "Repo id must be in the form ..." error; a name of the Hub's form that is no folder here cannot be
    loaded while the Hub is off (``HF_HUB_OFFLINE``) unless the Hub cache holds it.
    """
    path = Path(value).expanduser()
    if path.is_dir():
        return
    expected = "a model folder (config.json, weights and tokenizer files) or a Hub model id (name or namespace/name)"
    if path.exists():
        raise SystemExit(f"{option} {value} is a file; expected {expected}")
    if not _HUB_ID.match(value):
        raise SystemExit(f"{option} {value}: the folder does not exist; expected {expected}")
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return
    try:
        cached = isinstance(try_to_load_from_cache(value, "config.json"), str)
    except ValueError:  # a name huggingface_hub refuses as a repo id ("a..b", "a--b")
        cached = False
    if not cached:
        raise SystemExit(f"{option} {value}: no such folder here, and the Hub is off (HF_HUB_OFFLINE=1), so it cannot "
                         f"be a Hub model id either (the Hub cache does not hold it); expected {expected}")
