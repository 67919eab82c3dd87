"""Paired comparisons of two finished SuperGLUE runs: bootstrap intervals of A - B per task and on the average.

Both runs must have scored the same evaluation examples (the same ``--max-eval`` sample); the bootstrap resamples
examples (MultiRC: questions with all their answer options) with the same draws for both runs.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prompt_adapters.metrics.bootstrap import PairedInterval, paired_bootstrap
from prompt_adapters.metrics.superglue import task_score


@dataclass
class TaskRuns:
    """One run's seeds on one task: predictions per seed over the same references (MultiRC: grouped by question)."""

    task: str
    predictions: list[list[Any]]
    references: list[Any]
    question_idx: list[int] | None

    @property
    def units(self) -> list[list[int]]:
        """The bootstrap's resampling units as row lists: one example each, or one MultiRC question's options."""
        if self.question_idx is None:
            return [[i] for i in range(len(self.references))]
        rows: dict[int, list[int]] = {}
        for i, question in enumerate(self.question_idx):
            rows.setdefault(question, []).append(i)
        return list(rows.values())

    def score(self, units: np.ndarray) -> float:
        """Mean over seeds of the task score on the resampled units (a unit drawn twice counts twice)."""
        groups = self.units
        rows = [(draw, row) for draw, unit in enumerate(units.tolist()) for row in groups[unit]]
        references = [self.references[row] for _, row in rows]
        ids = [draw for draw, _ in rows] if self.question_idx is not None else None
        return statistics.fmean(task_score(self.task, [seed[row] for _, row in rows], references, ids)
                                for seed in self.predictions)


def load_runs(out: Path) -> dict[str, TaskRuns]:
    """The per-task predictions of the finished jobs of an output directory (its jobs/; a run still going or
    stopped early contributes the tasks it finished)."""
    paths = sorted((out / "jobs").glob("*.json"))
    if not paths:
        raise SystemExit(f"{out} has no finished jobs (jobs/*.json); pass the --output folder of a run")
    runs: dict[str, TaskRuns] = {}
    for path in paths:
        record = json.loads(path.read_text())
        if "predictions" not in record:
            raise SystemExit(f"{path} has no predictions (written by an older version); rerun that job")
        task = runs.setdefault(record["task"], TaskRuns(record["task"], [], record["references"],
                                                        record.get("question_idx")))
        if record["references"] != task.references:
            raise SystemExit(f"{path} was scored on other examples than the other seeds of {record['task']}")
        task.predictions.append(record["predictions"])
    return runs


def compare(run_a: Path, run_b: Path, resamples: int = 1000, seed: int = 0) -> dict[str, PairedInterval]:
    """Paired bootstrap intervals of A - B for every task both runs scored and, over all of them, for the average
    of the task scores (each task's examples resampled within the task)."""
    a, b = load_runs(run_a), load_runs(run_b)
    shared = [task for task in a if task in b]
    if not shared:
        raise SystemExit(f"{run_a} ({sorted(a)}) and {run_b} ({sorted(b)}) share no task")
    for task in shared:
        if a[task].references != b[task].references or a[task].question_idx != b[task].question_idx:
            raise SystemExit(f"{task}: {run_a} and {run_b} were scored on different examples (same --max-eval?)")
    intervals = {task: paired_bootstrap(a[task].score, b[task].score, len(a[task].units), resamples, seed)
                 for task in shared}
    if len(shared) > 1:
        sizes = [len(a[task].units) for task in shared]
        starts = np.cumsum([0, *sizes[:-1]])

        def average(runs: dict[str, TaskRuns]) -> Any:
            return lambda index: statistics.fmean(
                runs[task].score(index[(index >= start) & (index < start + size)] - start)
                for task, start, size in zip(shared, starts, sizes, strict=True))

        intervals["average"] = paired_bootstrap(average(a), average(b), sizes, resamples, seed)
    return intervals


def comparison_markdown(run_a: Path, run_b: Path, intervals: dict[str, PairedInterval]) -> str:
    lines = [f"A = `{run_a}`, B = `{run_b}`: task score difference A - B (percentage points) with its paired "
             f"bootstrap 95% interval ({next(iter(intervals.values())).resamples} resamples of the evaluation "
             "examples, MultiRC questions, the same draws for both runs).", "",
             "| task | units | A - B [95% interval] | resolved |", "| --- | --- | --- | --- |"]
    for task, interval in intervals.items():
        verdict = ("A > B" if interval.low > 0 else "B > A") if interval.excludes_zero else "no"
        lines.append(f"| {task} | {interval.units} | {interval.describe(100)} | {verdict} |")
    return "\n".join(lines) + "\n"
