"""prompt_adapters.job_runner on its own, with tiny job functions: records, resume, all-or-none jobs, the manifest
check, and jobs shared out over two accelerate processes (job i on process i mod n, or every job on every process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from accelerate import Accelerator

from prompt_adapters.job_runner import Job, JobRunner

ROOT = Path(__file__).resolve().parents[1]


def _square(calls: list[str]) -> Any:
    """A job function recording which names it was asked for; each record is its name's number squared."""
    def compute(names: list[str]) -> list[dict[str, Any]]:
        calls.extend(names)
        return [{"name": name, "square": int(name.removeprefix("n")) ** 2} for name in names]

    return compute


def _runner(out: Path, resume: bool) -> JobRunner:
    runner = JobRunner(out, "jobs", resume, Accelerator())
    runner.start(lambda: {"settings": {"n": 4}})
    return runner


def test_records_are_written_collected_in_order_and_skipped_on_resume(tmp_path: Path) -> None:
    calls: list[str] = []
    runner = _runner(tmp_path, resume=False)
    runner.run([Job((f"n{i}",), _square(calls)) for i in range(4)])
    assert calls == ["n0", "n1", "n2", "n3"]
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["n0.json", "n1.json", "n2.json", "n3.json"]
    records = runner.collect(["n3", "n1"])
    assert records == [{"name": "n3", "square": 9, "process": [0, 1]}, {"name": "n1", "square": 1, "process": [0, 1]}]
    assert json.loads((tmp_path / "run.json").read_text()) == {"settings": {"n": 4}}

    (tmp_path / "jobs" / "n2.json").write_text('{"name": ')  # a record torn by a crash counts as unfinished
    (tmp_path / "jobs" / "n3.json").unlink()
    calls.clear()
    resumed = _runner(tmp_path, resume=True)
    with pytest.warns(UserWarning, match="n2.json is unreadable"):
        resumed.run([Job((f"n{i}",), _square(calls)) for i in range(4)])
    assert calls == ["n2", "n3"]
    assert [r["square"] for r in resumed.collect(["n0", "n1", "n2", "n3"]) or []] == [0, 1, 4, 9]


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path: Path) -> None:
    _runner(tmp_path, resume=False).run([Job(("n1",), _square([]))])
    with pytest.raises(SystemExit, match="already holds a run; pass --resume"):
        _runner(tmp_path, resume=False)


def test_a_job_of_several_records_gets_only_its_unfinished_ones_unless_all_or_none(tmp_path: Path) -> None:
    runner = _runner(tmp_path, resume=False)
    shared: list[str] = []
    whole: list[str] = []
    runner.run([Job(("n1", "n2", "n3"), _square(shared)), Job(("n4", "n5"), _square(whole), all_or_none=True)])
    for name in ("n2", "n5"):
        (tmp_path / "jobs" / f"{name}.json").unlink()
    shared.clear()
    whole.clear()
    resumed = _runner(tmp_path, resume=True)
    resumed.run([Job(("n1", "n2", "n3"), _square(shared)), Job(("n4", "n5"), _square(whole), all_or_none=True)])
    assert shared == ["n2"] and whole == ["n4", "n5"]
    assert [r["square"] for r in resumed.collect(["n1", "n2", "n3", "n4", "n5"]) or []] == [1, 4, 9, 16, 25]


def test_resume_with_another_manifest_is_refused_naming_the_difference(tmp_path: Path) -> None:
    _runner(tmp_path, resume=False).run([Job(("n1",), _square([]))])
    runner = JobRunner(tmp_path, "jobs", True, Accelerator())
    with pytest.raises(SystemExit, match=r"settings\.n: 4 in the saved run, 5 now"):
        runner.start(lambda: {"settings": {"n": 5}})


def test_a_job_must_return_one_record_per_name(tmp_path: Path) -> None:
    runner = _runner(tmp_path, resume=False)
    with pytest.raises(ValueError, match=r"one record per name it is given: got 1 records for the names \['n1', 'n2"):
        runner.run([Job(("n1", "n2"), lambda names: [{"name": names[0]}])])


def _trains(calls: list[str], checkpoints: Path) -> Any:
    """A job function that, like a training job, saves a checkpoint folder of two files for each name first."""
    square = _square(calls)

    def compute(names: list[str]) -> list[dict[str, Any]]:
        for name in names:
            (checkpoints / name).mkdir(parents=True, exist_ok=True)
            for part in ("meta.json", "state.safetensors"):
                (checkpoints / name / part).write_text(name)
        return square(names)

    return compute


def test_a_finished_jobs_checkpoints_are_removed_even_after_a_crash_before_the_removal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "checkpoints"
    calls: list[str] = []

    def jobs() -> list[Job]:
        return [Job((f"n{i}",), _trains(calls, checkpoints), checkpoints=(checkpoints / f"n{i}",)) for i in (1, 2)]

    removed: list[str] = []

    def crash_after_one_file(path: Path, *args: Any, **kwargs: Any) -> None:  # killed midway through the removal
        removed.append(Path(path).name)
        os.unlink(Path(path) / "meta.json")
        raise KeyboardInterrupt

    monkeypatch.setattr("prompt_adapters.job_runner.shutil.rmtree", crash_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path, resume=False).run(jobs())
    assert calls == ["n1"] and removed == ["n1"]
    assert (tmp_path / "jobs" / "n1.json").exists()  # the record was written before the removal began
    assert [p.name for p in (checkpoints / "n1").iterdir()] == ["state.safetensors"]
    monkeypatch.undo()

    calls.clear()
    resumed = _runner(tmp_path, resume=True)
    resumed.run(jobs())
    assert calls == ["n2"]  # n1 is finished: skipped, and what its removal left is removed now
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []
    assert [r["square"] for r in resumed.collect(["n1", "n2"]) or []] == [1, 4]


def test_an_unfinished_jobs_checkpoints_stay_for_the_resume_and_keep_checkpoints_keeps_all(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    train = _trains([], checkpoints)

    def fails_after_saving(names: list[str]) -> list[dict[str, Any]]:
        train(names)
        raise RuntimeError("killed during training")

    runner = _runner(tmp_path, resume=False)
    with pytest.raises(RuntimeError, match="killed during training"):
        runner.run([Job(("n1",), fails_after_saving, checkpoints=(checkpoints / "n1",))])
    assert (checkpoints / "n1" / "state.safetensors").exists()

    kept = JobRunner(tmp_path / "kept", "jobs", False, Accelerator(), keep_checkpoints=True)
    kept.start(lambda: {"settings": {"n": 4}})
    kept.run([Job(("n1", "n2"), _trains([], tmp_path / "kept" / "checkpoints"),
                  checkpoints=(tmp_path / "kept" / "checkpoints" / "n1", tmp_path / "kept" / "checkpoints" / "n2"))])
    assert sorted(p.name for p in (tmp_path / "kept" / "checkpoints").iterdir()) == ["n1", "n2"]


#: run by two accelerate processes: six jobs shared out, then two jobs every process runs together, each job saving
#: a checkpoint folder (every process of a job run together saves into it)
TWO_PROCESSES = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from accelerate import Accelerator
    from prompt_adapters.job_runner import Job, JobRunner

    out = Path(sys.argv[1])
    accelerator = Accelerator()
    runner = JobRunner(out, "jobs", False, accelerator)
    runner.start(lambda: {"jobs": 8})
    ran = out / f"ran-by-{accelerator.process_index}.txt"

    def compute(names):
        with ran.open("a") as log:
            log.write(" ".join(names) + "\\n")
        for name in names:
            (out / "checkpoints" / name).mkdir(parents=True, exist_ok=True)
            (out / "checkpoints" / name / f"rank{accelerator.process_index}").write_text(name)
        return [{"name": name} for name in names]

    def job(name):
        return Job((name,), compute, checkpoints=(out / "checkpoints" / name,))

    runner.run([job(f"shared{i}") for i in range(6)])
    runner.run([job(f"together{i}") for i in range(2)], together=True)
    records = runner.collect([f"shared{i}" for i in range(6)] + ["together0", "together1"])
    if records is not None:
        (out / "collected.json").write_text(json.dumps(records))
    """
)


def test_jobs_are_shared_out_over_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "two_processes.py"
    script.write_text(TWO_PROCESSES)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               str(script), str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ran = {rank: (out / f"ran-by-{rank}.txt").read_text().split() for rank in (0, 1)}
    assert ran[0] == ["shared0", "shared2", "shared4", "together0", "together1"]
    assert ran[1] == ["shared1", "shared3", "shared5", "together0", "together1"]
    collected = json.loads((out / "collected.json").read_text())
    processes = {record["name"]: record["process"] for record in collected}
    assert processes == {"shared0": [0, 2], "shared1": [1, 2], "shared2": [0, 2], "shared3": [1, 2],
                         "shared4": [0, 2], "shared5": [1, 2], "together0": [0, 2], "together1": [0, 2]}
    assert list((out / "checkpoints").iterdir()) == []  # each removed once its job's record was written
