"""Saved state survives a crash at any filesystem operation; a run directory is held by one run at a time.

The fault injection wraps every ``os`` / ``shutil`` call a save makes and raises before the k-th one (for the k-th
``os.write`` after writing half of the buffer, as a kill inside a write would), for every k, starting from each
layout a run directory can be in: empty, one committed version, the flat layout of earlier versions of the library
and the ``<dir>.old`` leftover of their rename swap. After each crash the newest complete checkpoint must load (the
previous or the new state, never a mix, never nothing when something was saved before), and the next save must
leave a clean directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prompt_adapters.run_dir import (
    RunLock,
    RunLockedError,
    atomic_write_text,
    check_manifest,
    refuse_used_output,
    remove_stale_temporaries,
)
from prompt_adapters.training import latest_checkpoint, load_checkpoint, save_checkpoint

#: every os / shutil call that reads or changes the filesystem during a save
WRAPPED = (
    (os, "open"), (os, "write"), (os, "fsync"), (os, "close"), (os, "replace"), (os, "rename"), (os, "mkdir"),
    (os, "makedirs"), (os, "unlink"), (os, "remove"), (os, "rmdir"), (os, "listdir"), (os, "scandir"),
    (os, "stat"), (shutil, "rmtree"),
)


class Crash(BaseException):  # not an Exception: no `except Exception` swallows the kill
    """The injected kill."""


@contextlib.contextmanager
def crash_before(operation: int | None, log: list[str]) -> Iterator[None]:
    """Raise Crash before the ``operation``-th wrapped call (None: only count the calls, into ``log``)."""
    originals = {(module, name): getattr(module, name) for module, name in WRAPPED}

    def wrap(module: object, name: str, original: Callable) -> Callable:
        def wrapped(*args: object, **kwargs: object) -> object:
            log.append(name)
            if operation is not None and len(log) == operation:
                if name == "write":  # a torn write: half the bytes reach the file
                    handle, data = args[0], memoryview(args[1])  # type: ignore[arg-type]
                    original(handle, data[: len(data) // 2])
                raise Crash(f"crash before operation {operation} ({name})")
            return original(*args, **kwargs)

        return wrapped

    for (module, name), original in originals.items():
        setattr(module, name, wrap(module, name, original))
    try:
        yield
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)


class Toy(torch.nn.Module):
    """Two trainable tensors; state n has every entry equal to n."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(3, 4))
        self.b = torch.nn.Parameter(torch.zeros(5))

    def set(self, value: float) -> None:
        with torch.no_grad():
            for param in self.parameters():
                param.fill_(value)


def _optimizer(model: Toy) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model.a.grad, model.b.grad = torch.ones(3, 4), torch.ones(5)
    optimizer.step()  # creates exp_avg / exp_avg_sq / step so the optimiser state is saved too
    return optimizer


def _save(directory: Path, value: float) -> None:
    model = Toy()
    optimizer = _optimizer(model)
    model.set(value)
    save_checkpoint(directory, model, optimizer, {"epoch": int(value), "best_params": {}}, {"lr": 0.1})


def _load(directory: Path) -> float | None:
    """The state value of the checkpoint a resume would use (None: no checkpoint), checking it is not a mix."""
    model = Toy()
    loop = load_checkpoint(directory, model, _optimizer(model), {"lr": 0.1})
    if loop is None:
        return None
    values = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).unique().tolist()
    assert len(values) == 1 and values[0] == loop["epoch"], (values, loop)
    return values[0]


def _legacy(directory: Path, value: float) -> None:
    """A checkpoint in the flat layout earlier versions wrote (state.safetensors + meta.json in the directory)."""
    _save(directory.parent / "scratch", value)
    version = latest_checkpoint(directory.parent / "scratch")
    assert version is not None
    directory.mkdir(parents=True)
    for name in ("state.safetensors", "meta.json"):
        shutil.copy(version / name, directory / name)
    shutil.rmtree(directory.parent / "scratch")


def _empty(directory: Path) -> float | None:
    return None


def _committed(directory: Path) -> float | None:
    _save(directory, 1)
    return 1


def _flat(directory: Path) -> float | None:
    _legacy(directory, 1)
    return 1


def _old_leftover(directory: Path) -> float | None:
    """Killed inside the old swap: `dir` renamed to `dir.old`, the new temp dir never renamed into place."""
    _legacy(directory.with_name(directory.name + ".old"), 1)
    stray = directory.parent / ".tmp-abc123"
    stray.mkdir()
    (stray / "meta.json").write_text("{")
    return 1


def _old_and_new(directory: Path) -> float | None:
    """Killed after the old swap's second rename: both `dir` (new) and `dir.old` exist."""
    _legacy(directory.with_name(directory.name + ".old"), 1)
    _legacy(directory, 2)
    return 2


LAYOUTS = {"empty": _empty, "committed": _committed, "flat": _flat, "old_leftover": _old_leftover,
           "old_and_new": _old_and_new}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_crash_before_any_filesystem_operation_of_a_save_loses_nothing(layout: str, tmp_path: Path) -> None:
    setup = LAYOUTS[layout]
    counted: list[str] = []
    probe = tmp_path / "probe" / "ckpt"
    probe.parent.mkdir()
    setup(probe)
    with crash_before(None, counted):
        _save(probe, 7)
    assert _load(probe) == 7
    assert {"open", "write", "fsync", "rename", "replace"} <= set(counted)
    for operation in range(1, len(counted) + 1):
        directory = tmp_path / f"crash{operation}" / "ckpt"
        directory.parent.mkdir()
        before = setup(directory)
        log: list[str] = []
        with pytest.raises(Crash), crash_before(operation, log):
            _save(directory, 7)
        resumed = _load(directory)
        assert resumed in (before, 7), (operation, log[-1], resumed)
        if before is not None:
            assert resumed is not None, f"crash before {log[-1]} (operation {operation}) lost the saved state"
        _save(directory, 8)  # the next epoch's save repairs the directory
        assert _load(directory) == 8
        assert sorted(os.listdir(directory)) == ["LATEST", (directory / "LATEST").read_text().strip()]
        assert os.listdir(directory.parent) == ["ckpt"]


def test_the_newest_complete_version_wins_and_a_damaged_one_is_skipped_with_a_warning(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    _save(directory, 1)
    first = latest_checkpoint(directory)
    assert first is not None
    keep = tmp_path / "kept"
    shutil.copytree(first, keep)
    _save(directory, 2)
    shutil.copytree(keep, directory / "v000001")  # an older version left by a crash during cleaning
    assert _load(directory) == 2
    newest = latest_checkpoint(directory)
    assert newest is not None and newest.name == "v000002"
    (newest / "state.safetensors").write_bytes(b"\x00" * 10)  # disk damage
    with pytest.warns(UserWarning, match=r"v000002 is incomplete or unreadable; resuming from the older complete "
                                         r"checkpoint .*v000001"):
        assert _load(directory) == 1


def test_a_damaged_only_checkpoint_warns_that_training_starts_over(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    _save(directory, 1)
    (directory / "v000001" / "meta.json").write_text('{"loop": ')  # truncated
    with pytest.warns(UserWarning) as caught:
        assert _load(directory) is None
    assert [str(w.message) for w in caught] == [
        f"checkpoint {directory / 'v000001'} is incomplete or unreadable; no complete checkpoint is left, so training "
        "starts over from the first epoch"
    ]


def test_a_crash_inside_an_atomic_result_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "relations" / "P19-seed42.json"
    atomic_write_text(target, json.dumps({"ranks": [1, 2]}))
    counted: list[str] = []
    with crash_before(None, counted):
        atomic_write_text(tmp_path / "probe.json", "{}")
    for operation in range(1, len(counted) + 1):
        with pytest.raises(Crash), crash_before(operation, []):
            atomic_write_text(target, json.dumps({"ranks": [3, 4, 5]}))
        assert json.loads(target.read_text()) in ({"ranks": [1, 2]}, {"ranks": [3, 4, 5]})
        remove_stale_temporaries(target.parent)
        assert os.listdir(target.parent) == [target.name]


def test_a_truncated_checkpoint_file_names_itself_when_no_complete_version_is_left(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    directory.mkdir()
    save_file({"param.a": torch.zeros(2)}, str(directory / "state.safetensors"))
    (directory / "meta.json").write_text('{"loop": ')
    assert latest_checkpoint(directory) is None


# ------------------------------------------------------------------------------------------------ lock

#: loads prompt_adapters/run_dir.py alone (no torch, peft or transformers), so the processes start in a blink
RUN_DIR_SOURCE = str(Path(__file__).resolve().parents[1] / "prompt_adapters" / "run_dir.py")
LOAD_RUN_DIR = (
    "import importlib.util, sys\n"
    f"spec = importlib.util.spec_from_file_location('run_dir', {RUN_DIR_SOURCE!r})\n"
    "run_dir = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(run_dir)\n"
    "RunLock, RunLockedError = run_dir.RunLock, run_dir.RunLockedError\n"
)

HOLDER = LOAD_RUN_DIR + textwrap.dedent(
    """
    import sys
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    """
)

CONTENDER = LOAD_RUN_DIR + textwrap.dedent(
    """
    import sys
    try:
        RunLock(sys.argv[1]).acquire()
    except RunLockedError as error:
        print("refused:", error, flush=True)
        sys.exit(3)
    print("acquired", flush=True)
    """
)


def _holder(directory: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


def _contend(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CONTENDER, str(directory)], capture_output=True, text=True,
                          timeout=120)


def test_a_second_process_is_refused_naming_the_holder_until_it_ends(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        refused = _contend(tmp_path)
        assert refused.returncode == 3, refused.stderr
        assert f"pid {holder.pid} on host " in refused.stdout and "in use by another run" in refused.stdout
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.communicate("go\n", timeout=60)
    assert holder.returncode == 0
    assert _contend(tmp_path).stdout.strip() == "acquired"


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    holder.kill()
    holder.wait(timeout=60)
    assert _contend(tmp_path).stdout.strip() == "acquired"


def test_two_processes_started_together_one_wins(tmp_path: Path) -> None:
    contenders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [process.stdout.readline().strip() for process in contenders]  # type: ignore[union-attr]
    finally:
        results = [process.communicate("go\n", timeout=120) for process in contenders]
    assert sorted(outputs) == ["", "locked"], (outputs, results)
    loser = results[outputs.index("")]
    assert "RunLockedError" in loser[1] and "in use by another run (pid " in loser[1]


def test_a_run_that_loses_the_race_by_an_instant_still_names_the_holder(tmp_path: Path) -> None:
    """The holder writes its record just after taking the lock; a contender that finds the file still empty waits
    for it instead of saying the holder is unknown."""
    import fcntl
    import threading

    handle = os.open(RunLock(tmp_path).path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(handle, fcntl.LOCK_EX)  # taken, record not written yet
    record = json.dumps({"pid": 4242, "host": "gpu-3", "started": "2026-01-05 10:12:03", "command": "lama.py"})
    writer = threading.Timer(0.2, lambda: os.write(handle, record.encode()))
    writer.start()
    try:
        with pytest.raises(RunLockedError, match="pid 4242 on host gpu-3"):
            RunLock(tmp_path).acquire()
    finally:
        writer.join()
        os.close(handle)


# ------------------------------------------------------------------------------------------------ manifest


def test_resume_refuses_a_manifest_that_differs_naming_each_key(tmp_path: Path) -> None:
    saved = {"settings": {"lr": 0.01, "method": "mixture"}, "library": "0.1.0", "data": {"P19": "abc"}}
    check_manifest(tmp_path, saved, resume=False)
    check_manifest(tmp_path, saved, resume=True)
    changed = {"settings": {"lr": 0.1, "method": "deep"}, "library": "0.1.0", "data": {"P19": "abd"}}
    with pytest.raises(ValueError) as error:
        check_manifest(tmp_path, changed, resume=True)
    message = str(error.value)
    assert "settings.lr: 0.01 in the saved run, 0.1 now" in message
    assert "settings.method: 'mixture' in the saved run, 'deep' now" in message
    assert "data.P19: 'abc' in the saved run, 'abd' now" in message and "library" not in message
    with pytest.raises(ValueError, match=r"has no run\.json"):
        check_manifest(tmp_path / "other", saved, resume=True)


# ------------------------------------------------------------------------------------------------ the LAMA harness

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lama  # noqa: E402

GOOD = [("Dante", "Florence"), ("Newton", "London"), ("Goethe", "Frankfurt"), ("Kafka", "Cairo"),
        ("Einstein", "Ulm"), ("Galileo", "Athens")]
BAD = [("", "Florence"), ("   ", "London"), ("[MASK] Dante", "Florence"), ("Verdi", "Ωmega")]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prompt_adapters.testing import save_tiny_model

    return save_tiny_model("bert", tmp_path_factory.mktemp("models") / "bert")


def _lama_data(root: Path, extra: list[tuple[str, str]] = ()) -> Path:  # type: ignore[assignment]
    """A one-relation LAMA directory: good facts in every split, plus the bad ones in test."""
    facts = root / "trex" / "autoprompt_original_subobj" / "P19"
    facts.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        rows = GOOD + (BAD + list(extra) if split == "test" else [])
        (facts / f"{split}.jsonl").write_text("".join(json.dumps({"sub": s, "obj": o}) + "\n" for s, o in rows))
    (root / "relations.jsonl").write_text(json.dumps(
        {"relation": "P19", "template": "[X] was born in [Y] .", "label": "place of birth", "type": "N-1",
         "description": ""}) + "\n")
    return root


def _lama_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data-dir", str(data), "--candidates", "full", "--output", str(out),
            "--epochs", "1", *extra]


def test_lama_counts_dropped_facts_by_reason_and_reports_precision(tiny_bert: Path, tmp_path: Path) -> None:
    data = _lama_data(tmp_path / "lama")
    summary = lama.main(_lama_args(tiny_bert, data, tmp_path / "out", "--method", "manual"))
    assert summary is not None
    dropped = summary["dropped_facts"]["test"]
    assert dropped["blank_subject"] == 2 and dropped["special_token_in_subject"] == 1
    assert dropped["unknown_object"] + dropped["not_single_token"] == 1
    assert dropped["total"] == len(GOOD) + len(BAD)
    assert summary["precision"] == {"requested": "no", "used": "fp32", "device": "cpu", "note": ""}
    assert "Mixed precision: requested no, used fp32 on cpu." in (tmp_path / "out" / "results.md").read_text()


def test_lama_fp16_on_cpu_is_reported_as_fp32(tiny_bert: Path, tmp_path: Path) -> None:
    """In a fresh process: accelerate keeps its precision process-wide once set."""
    data = _lama_data(tmp_path / "lama")
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "fp16", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lama.py"),
                           *_lama_args(tiny_bert, data, tmp_path / "out", "--method", "manual")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: fp16 was requested but cpu has no fp16 autocast: ran in fp32" in done.stderr
    precision = json.loads((tmp_path / "out" / "results.json").read_text())["precision"]
    assert precision["requested"] == "fp16" and precision["used"] == "fp32" and "ran in fp32" in precision["note"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "requested fp16, used fp32 on cpu (fp16 was requested but cpu" in table


def test_lama_resume_refuses_other_settings_or_data_naming_them(tiny_bert: Path, tmp_path: Path) -> None:
    data = _lama_data(tmp_path / "lama")
    out = tmp_path / "out"
    lama.main(_lama_args(tiny_bert, data, out, "--method", "mixture", "--lr", "0.01"))
    with pytest.raises(SystemExit) as error:
        lama.main(_lama_args(tiny_bert, data, out, "--method", "deep", "--lr", "0.1", "--resume"))
    message = str(error.value)
    assert "settings.lr: 0.01 in the saved run, 0.1 now" in message
    assert "settings.method: 'mixture' in the saved run, 'deep' now" in message
    assert lama.main(_lama_args(tiny_bert, data, out, "--method", "mixture", "--lr", "0.01", "--resume"))
    test_file = data / "trex" / "autoprompt_original_subobj" / "P19" / "test.jsonl"
    test_file.write_text(test_file.read_text() + json.dumps({"sub": "Bach", "obj": "Leiden"}) + "\n")
    with pytest.raises(SystemExit, match=r"data\.P19: '[0-9a-f]+' in the saved run, '[0-9a-f]+' now"):
        lama.main(_lama_args(tiny_bert, data, out, "--method", "mixture", "--lr", "0.01", "--resume"))


def test_lama_output_held_by_another_process_is_refused_naming_it(tiny_bert: Path, tmp_path: Path) -> None:
    data = _lama_data(tmp_path / "lama")
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        with pytest.raises(SystemExit, match=f"in use by another run \\(pid {holder.pid} on host "):
            lama.main(_lama_args(tiny_bert, data, out, "--method", "manual"))
    finally:
        holder.communicate("go\n", timeout=60)
    assert not (out / "run.json").exists()  # the refused run wrote nothing
    assert lama.main(_lama_args(tiny_bert, data, out, "--method", "manual")) is not None


def test_superglue_resume_checks_settings_and_reports_precision(tiny_bert: Path, fixture_data: Path,
                                                                 tmp_path: Path) -> None:
    import superglue

    def args(*extra: str) -> list[str]:
        return ["--task", "rte", "--model", str(tiny_bert), "--data-dir", str(fixture_data / "superglue"),
                "--max-steps", "1", "--max-eval", "4", "--seeds", "1", "--dev-scoring", "fast", "--output",
                str(tmp_path), *extra]

    summary = superglue.main(args("--lr", "0.01"))
    assert summary is not None and summary["precision"]["used"] == "fp32"
    assert "Mixed precision: requested no, used fp32 on cpu." in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit, match=r"settings\.lr: 0\.01 in the saved run, 0\.02 now"):
        superglue.main(args("--lr", "0.02", "--resume"))
    assert superglue.main(args("--lr", "0.01", "--resume")) is not None


def test_superglue_resume_redoes_a_truncated_job_record(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    """A damaged ``jobs/<task>-seed<s>.json`` is named and its job run again, as a damaged checkpoint is."""
    import superglue

    args = ["--task", "rte", "--model", str(tiny_bert), "--data-dir", str(fixture_data / "superglue"),
            "--max-steps", "1", "--max-eval", "4", "--seeds", "1", "--dev-scoring", "fast", "--output", str(tmp_path)]
    first = superglue.main(args)
    record = tmp_path / "jobs" / "RTE-seed42.json"
    text = record.read_text()
    record.write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match=r"RTE-seed42\.json is unreadable .*running that job again"):
        resumed = superglue.main([*args, "--resume"])
    assert resumed is not None and first is not None
    assert json.loads(record.read_text())["predictions"] == json.loads(text)["predictions"]


def test_only_the_main_process_refuses_an_output_that_holds_a_run(tmp_path: Path) -> None:
    """A process of a multi-process run that reaches the check after the main process wrote the new run's run.json
    must not take it for an earlier run (it did, and the 2-process runs failed now and then)."""
    refuse_used_output(tmp_path, resume=False, is_main_process=True)  # empty: a new run may start
    (tmp_path / "run.json").write_text("{}")
    refuse_used_output(tmp_path, resume=False, is_main_process=False)
    refuse_used_output(tmp_path, resume=True, is_main_process=True)
    with pytest.raises(SystemExit, match="already holds a run; pass --resume"):
        refuse_used_output(tmp_path, resume=False, is_main_process=True)
