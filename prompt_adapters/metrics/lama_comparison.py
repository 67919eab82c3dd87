"""Paired comparisons of two LAMA runs: macro P@1, P@10 and MRR differences with paired bootstrap intervals.

Two prompts scored on the same test facts are paired: the facts one finds hard the other usually finds hard too.
The interval resamples each relation's test facts with replacement (the relations stay, each keeps its size), so
it speaks of the macro average the LAMA tables report. A run with several seeds contributes the mean over its seeds
on every resample, as its table row does.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prompt_adapters.data.lama import natural_key
from prompt_adapters.metrics.bootstrap import PairedInterval, Statistic, paired_bootstrap

LAMA_MEASURES = ("P@1", "P@10", "MRR")
#: which ranks a comparison reads: the test facts as asked, or the same facts with the subject replaced by "None"
#: (the label-leak diagnostic: lower is better there)
RANK_KINDS = {"test": "ranks", "none": "none_ranks"}


@dataclass(frozen=True)
class LamaRun:
    """One finished LAMA run's test ranks: per relation, one rank list per seed over the same facts."""

    path: Path
    ranks: dict[str, list[list[int]]]
    manual_ranks: dict[str, list[int]]

    def relation_scores(self, relation: str, measure: str, mrr_cap: int | None) -> np.ndarray:
        """``(seeds, facts)`` per-fact values of ``measure``: hits for P@k, capped reciprocal ranks for MRR."""
        ranks = np.asarray(self.ranks[relation], dtype=float)
        if measure == "MRR":
            return np.where(ranks <= (mrr_cap or np.inf), 1.0 / ranks, 0.0)
        return (ranks <= int(measure.removeprefix("P@"))).astype(float)


def load_lama_run(out: Path, subject: str = "test") -> LamaRun:
    """The test ranks (``subject="none"``: the ranks with the subject replaced by "None") of every (relation, seed)
    record in ``out/relations`` (a run stopped early contributes the relations it finished)."""
    if subject not in RANK_KINDS:
        raise ValueError(f"subject must be one of {tuple(RANK_KINDS)}, got {subject!r}")
    paths = sorted((out / "relations").glob("*.json"))
    if not paths:
        raise SystemExit(f"{out} has no finished relations (relations/*.json); pass the --output folder of a run")
    ranks: dict[str, list[list[int]]] = {}
    manual: dict[str, list[int]] = {}
    for path in paths:
        record = json.loads(path.read_text())
        if "skipped" in record:
            continue
        relation = record["relation"]
        if relation in manual and record["manual_ranks"] != manual[relation]:
            raise SystemExit(f"{path} was scored on other facts than the other seeds of {relation}")
        manual[relation] = record["manual_ranks"]
        if RANK_KINDS[subject] not in record:
            raise SystemExit(f"{path} has no {RANK_KINDS[subject]!r} (written by an older version); rerun it")
        ranks.setdefault(relation, []).append(record[RANK_KINDS[subject]])
    return LamaRun(out, ranks, manual)


def compare_lama_runs(
    run_a: Path, run_b: Path, measure: str = "P@1", mrr_cap: int | None = 1000, resamples: int = 1000, seed: int = 0,
    subject: str = "test",
) -> dict[str, PairedInterval]:
    """Paired bootstrap intervals of A - B in ``measure`` per shared relation and on their macro average
    (``subject="none"``: of the label-leak diagnostic, the same facts with the subject replaced by "None").

    The runs must have scored the same test facts in the same order: their manual-prompt ranks, which every run
    records, must agree relation by relation (same data options, candidates and model).
    """
    if measure not in LAMA_MEASURES:
        raise ValueError(f"measure must be one of {LAMA_MEASURES}, got {measure!r}")
    a, b = load_lama_run(run_a, subject), load_lama_run(run_b, subject)
    shared = sorted(set(a.ranks) & set(b.ranks), key=natural_key)
    if not shared:
        raise SystemExit(f"{run_a} ({sorted(a.ranks)}) and {run_b} ({sorted(b.ranks)}) share no relation")
    for relation in shared:
        if a.manual_ranks[relation] != b.manual_ranks[relation]:
            raise SystemExit(
                f"{relation}: {run_a} and {run_b} were scored on different test facts (their manual-prompt ranks "
                "differ); run both with the same model, data options and candidates"
            )
    values_a = {r: a.relation_scores(r, measure, mrr_cap) for r in shared}
    values_b = {r: b.relation_scores(r, measure, mrr_cap) for r in shared}
    sizes = [values_a[r].shape[1] for r in shared]
    starts = np.cumsum([0, *sizes[:-1]])

    def relation_statistic(values: np.ndarray) -> Statistic:
        return lambda index: float(values[:, index].mean())

    def macro(values: dict[str, np.ndarray]) -> Statistic:
        return lambda index: statistics.fmean(
            float(values[r][:, index[(index >= start) & (index < start + size)] - start].mean())
            for r, start, size in zip(shared, starts, sizes, strict=True)
        )

    intervals = {
        r: paired_bootstrap(relation_statistic(values_a[r]), relation_statistic(values_b[r]), size, resamples, seed)
        for r, size in zip(shared, sizes, strict=True)
    }
    intervals["macro"] = paired_bootstrap(macro(values_a), macro(values_b), sizes, resamples, seed)
    return intervals


def lama_comparison_markdown(run_a: Path, run_b: Path, measure: str, intervals: dict[str, PairedInterval],
                             subject: str = "test") -> str:
    """The intervals as a table: one row per relation and the macro average, in percentage points."""
    resamples = intervals["macro"].resamples
    what = measure if subject == "test" else f'{measure} with the subject replaced by "None"'
    lines = [
        f"A = `{run_a}`, B = `{run_b}`: {what} difference A - B (percentage points) with its paired bootstrap 95% "
        f"interval ({resamples} resamples of each relation's test facts, the same draws for both runs; a run with "
        "several seeds counts with its mean over seeds).",
        "",
        "| relation | facts | A - B [95% interval] | resolved |",
        "| --- | --- | --- | --- |",
    ]
    for name, interval in intervals.items():
        verdict = ("A > B" if interval.low > 0 else "B > A") if interval.excludes_zero else "no"
        lines.append(f"| {name} | {interval.units} | {interval.describe(100)} | {verdict} |")
    return "\n".join(lines) + "\n"
