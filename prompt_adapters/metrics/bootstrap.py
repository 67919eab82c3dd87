"""Paired bootstrap intervals for "A beats B" on the same evaluation examples.

Two systems scored on the same examples differ by less than their separate confidence intervals suggest, because
the hard examples are hard for both. The paired bootstrap resamples the examples (or groups of them, such as
MultiRC's questions) with replacement, recomputes both systems' metric on every resample from the same indices and
reads the 2.5 and 97.5 percentiles of the difference (Koehn 2004; Berg-Kirkpatrick et al. 2012). A difference
whose interval excludes 0 is one the evaluation set can resolve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], float]
"""A metric over a resample: receives the resampled unit indices (with repeats) and returns one number."""


@dataclass(frozen=True)
class PairedInterval:
    """``difference`` = A - B on the full set; [``low``, ``high``] its ``confidence`` percentile interval."""

    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    units: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the evaluation set resolves the difference (the interval lies on one side of 0)."""
        return self.low > 0 or self.high < 0

    def describe(self, scale: float = 1.0, digits: int = 1) -> str:
        """``+2.3 [-0.4, +5.1]``, each number multiplied by ``scale`` (100 for percentages)."""
        d, lo, hi = (scale * v for v in (self.difference, self.low, self.high))
        return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def mean_statistic(values: Sequence[float]) -> Statistic:
    """The statistic "mean of per-unit values" (accuracy from 0/1 correctness, P@1 from hits, ...)."""
    array = np.asarray(values, dtype=float)
    return lambda index: float(array[index].mean())


def paired_bootstrap(
    statistic_a: Statistic,
    statistic_b: Statistic,
    units: int | Sequence[int],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedInterval:
    """Paired bootstrap interval of ``statistic_a - statistic_b`` over ``units`` evaluation units.

    Each resample draws ``units`` indices with replacement (one generator seeded by ``seed``, so a report is
    reproducible) and hands the *same* indices to both statistics. A statistic may average over seeds or group units
    however its metric needs (macro-F1, MultiRC EM over questions): it only sees unit indices.

    ``units`` given as a list of stratum sizes (e.g. the examples of each of seven tasks, for an average over tasks)
    resamples every stratum on its own, keeping its size; indices run over the strata laid end to end.
    """
    sizes = [units] if isinstance(units, int) else list(units)
    if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"units must be >= 1 (the number of evaluation examples or groups) per stratum, got {units}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    offsets = np.cumsum([0, *sizes[:-1]])
    everything = np.arange(sum(sizes))
    difference = statistic_a(everything) - statistic_b(everything)
    rng = np.random.default_rng(seed)
    deltas = np.empty(resamples)
    for r in range(resamples):
        index = np.concatenate([start + rng.integers(0, n, size=n) for start, n in zip(offsets, sizes, strict=True)])
        deltas[r] = statistic_a(index) - statistic_b(index)
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return PairedInterval(float(difference), float(low), float(high), confidence, resamples, sum(sizes))
