"""The job runner of the command-line harnesses: a run directory of finished-job records, resumable and shared out
over the accelerate processes.

A harness run is a list of jobs (a LAMA relation and seed, a SuperGLUE task and seed). Each finished job is one JSON
record ``OUTPUT/<records>/<name>.json``, written atomically, so a killed run loses at most the jobs in progress and
``--resume`` skips what is finished (a damaged record counts as unfinished). ``JobRunner`` holds what both harnesses
share around their own job functions:

- ``start``: a new run refuses a used output folder and records the run's manifest (settings, library version, base
  model, data); a resumed one must match it (``run_dir.check_manifest``); temporaries of a killed write are removed;
- ``run``: job ``i`` goes to process ``i mod n`` (each job seeds itself, so results do not depend on the number of
  processes), or every process runs every job together (data parallel) and the main process writes the records;
  every record names the process that wrote it (``"process": [index, count]``);
- ``collect``: the main process reads every record back, in the order asked, once all processes are done;
- checkpoints: a job's training checkpoints (``Job.checkpoints``) are removed once all its records are written, since
  nothing reads them again (with the LM trained each holds the whole model and its optimiser state); a crash between
  the two leaves them behind, and the resumed run removes them when it skips the finished job. ``keep_checkpoints``
  keeps them.

``precision_report`` says which mixed precision was requested and used, warning once when they differ, and
``run_locked`` (from ``run_dir``) makes the output folder exclusive to one run.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm

from prompt_adapters.run_dir import (
    ResumeMismatchError,
    atomic_write_text,
    check_manifest,
    read_record,
    refuse_used_output,
    remove_stale_temporaries,
)
from prompt_adapters.run_dir import run_locked as run_locked
from prompt_adapters.training import mixed_precision_used

#: the records of the jobs an unfinished ``Job`` is given (on resume, only those without a readable record)
JobFunction = Callable[[list[str]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Job:
    """One unit of work of a run: the records it writes (``names``) and the function that computes them.

    ``compute`` receives the names still to do and returns one record per name, in that order. With
    ``all_or_none`` a job that finished only some of its records (e.g. one model trained on every relation,
    evaluated per relation) computes all of them again; otherwise it is given only the unfinished ones.
    """

    names: tuple[str, ...]
    compute: JobFunction
    all_or_none: bool = False
    label: dict[str, Any] | None = None  # shown beside the progress bar while the job runs
    checkpoints: tuple[Path, ...] = ()  # the job's training checkpoint folders, obsolete once its records exist


def precision_report(accelerator: Accelerator) -> dict[str, str]:
    """The mixed precision requested and used (``training.mixed_precision_used``); the main process warns on stderr
    when they differ (e.g. fp16 asked for on a CPU, which runs fp32)."""
    report = mixed_precision_used(accelerator)
    if report["note"] and accelerator.is_main_process:
        print(f"warning: {report['note']}", file=sys.stderr)
    return report


class JobRunner:
    """Runs the jobs of one run directory over the accelerate processes, skipping finished ones on resume."""

    def __init__(self, output: Path, records: str, resume: bool, accelerator: Accelerator,
                 keep_checkpoints: bool = False) -> None:
        """``records`` is the folder of the finished-job records inside ``output`` (``relations``, ``jobs``);
        ``keep_checkpoints`` keeps each finished job's training checkpoints instead of removing them."""
        self.output = Path(output)
        self.folder = self.output / records
        self.resume = resume
        self.accelerator = accelerator
        self.keep_checkpoints = keep_checkpoints

    def start(self, manifest: Callable[[], Mapping[str, Any]]) -> None:
        """Open the run directory: refuse a used one for a new run, clear interrupted writes, and record (or, on
        resume, check) the manifest. Only the main process computes ``manifest``; every process waits for it."""
        accelerator = self.accelerator
        refuse_used_output(self.output, self.resume, accelerator.is_main_process)
        if accelerator.is_main_process:
            remove_stale_temporaries(self.output)
            remove_stale_temporaries(self.folder)
            try:
                check_manifest(self.output, manifest(), self.resume)
            except ResumeMismatchError as error:
                raise SystemExit(str(error)) from None
        accelerator.wait_for_everyone()

    def path(self, name: str) -> Path:
        """The record file of job ``name``."""
        return self.folder / f"{name}.json"

    def finished(self, name: str) -> bool:
        """Whether a resumed run has a readable record of ``name`` (a new run has none)."""
        return self.resume and read_record(self.path(name)) is not None

    def run(self, jobs: Sequence[Job], together: bool = False, progress: str | None = None) -> None:
        """Run ``jobs``: job ``i`` on process ``i mod n``, or with ``together`` every job on every process (each
        process holds part of the batch or of the model), the main process writing the records and every process
        waiting for them after each job. ``progress`` names a bar over this process's jobs (None: no bar)."""
        accelerator = self.accelerator
        mine = list(jobs) if together else list(jobs)[accelerator.process_index :: accelerator.num_processes]
        bar = tqdm(mine, disable=progress is None or not accelerator.is_local_main_process or not mine, desc=progress)
        for job in bar:
            if job.label is not None:
                bar.set_postfix(**job.label)
            left = [name for name in job.names if not self.finished(name)]
            if job.all_or_none and left:
                left = list(job.names)
            if left:
                with accelerator.autocast():
                    records = job.compute(left)
                if not together or accelerator.is_main_process:
                    self.write(left, records)
            if together:
                accelerator.wait_for_everyone()
            if not together or accelerator.is_main_process:
                self.remove_checkpoints(job)

    def remove_checkpoints(self, job: Job) -> None:
        """Delete the training checkpoints of a job whose records are all written (unless ``keep_checkpoints``).
        Only records make a job finished, so a removal cut short by a crash is simply done again on resume."""
        if self.keep_checkpoints:
            return
        for folder in job.checkpoints:
            if Path(folder).exists():
                shutil.rmtree(folder)

    def write(self, names: Sequence[str], records: Sequence[dict[str, Any]]) -> None:
        """Write each record atomically, naming the process that wrote it."""
        if len(records) != len(names):
            raise ValueError(f"a job returns one record per name it is given: got {len(records)} records for the "
                             f"names {list(names)}")
        process = [self.accelerator.process_index, self.accelerator.num_processes]
        for name, record in zip(names, records, strict=True):
            atomic_write_text(self.path(name), json.dumps({**record, "process": process}))

    def collect(self, names: Sequence[str]) -> list[dict[str, Any]] | None:
        """Every record of ``names`` in that order, on the main process once all processes are done (None on the
        others)."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        return [json.loads(self.path(name).read_text()) for name in names]
