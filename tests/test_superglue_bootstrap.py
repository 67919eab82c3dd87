"""The paired bootstrap of prompt_adapters.metrics.bootstrap and the plain task scores it resamples."""

from __future__ import annotations

import random

import numpy as np
import pytest

from prompt_adapters.metrics.bootstrap import mean_statistic, paired_bootstrap
from prompt_adapters.metrics.superglue import superglue_metric, task_score


def test_identical_systems_have_a_zero_interval() -> None:
    values = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    interval = paired_bootstrap(mean_statistic(values), mean_statistic(values), len(values))
    assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_interval_width_matches_the_normal_approximation() -> None:
    # A right everywhere, B right on every other example: paired differences are 0/1 with mean 0.5, so the
    # bootstrap standard error is sqrt(0.25 / 400) = 0.025 and the 95% interval about 0.5 +- 0.049
    a, b = [1] * 400, [i % 2 for i in range(400)]
    interval = paired_bootstrap(mean_statistic(a), mean_statistic(b), 400, resamples=2000, seed=3)
    assert interval.difference == 0.5
    assert interval.low == pytest.approx(0.451, abs=0.012) and interval.high == pytest.approx(0.549, abs=0.012)
    assert interval.excludes_zero and interval.describe(100) == f"+50.0 [{100 * interval.low:+.1f}, " \
                                                                 f"{100 * interval.high:+.1f}]"


def test_pairing_resolves_a_small_difference_that_separate_intervals_would_not() -> None:
    # B is right on 55 of 100 examples; A on the same 55 and 5 more. Unpaired, 60% vs 55% on 100 examples is well
    # within noise; paired, A never loses an example, so the interval lies above 0.
    b = [1] * 55 + [0] * 45
    a = [1] * 60 + [0] * 40
    interval = paired_bootstrap(mean_statistic(a), mean_statistic(b), 100, seed=0)
    assert interval.difference == pytest.approx(0.05)
    assert interval.low > 0 and interval.excludes_zero
    rng = np.random.default_rng(0)
    separate = [np.mean(rng.choice(a, 100)) - np.mean(rng.choice(b, 100)) for _ in range(1000)]
    assert np.quantile(separate, 0.025) < 0  # resampled independently, the same data cannot tell them apart


def test_strata_are_resampled_within_themselves() -> None:
    seen: list[tuple[int, int]] = []

    def statistic(index: np.ndarray) -> float:
        seen.append((int((index < 3).sum()), int((index >= 3).sum())))
        return float(index.sum())

    paired_bootstrap(statistic, lambda index: 0.0, [3, 5], resamples=50)
    assert set(seen) == {(3, 5)}


@pytest.mark.parametrize("bad", [0, [4, 0], []])
def test_bad_units_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="units must be >= 1"):
        paired_bootstrap(lambda i: 0.0, lambda i: 0.0, bad)  # type: ignore[arg-type]


def test_task_score_equals_the_metric_classes() -> None:
    rng = random.Random(0)
    labels = ["entailment", "contradiction", "neutral"]
    refs = [rng.choice(labels) for _ in range(40)]
    preds = [rng.choice(labels) for _ in range(40)]
    cb = superglue_metric("CB").compute(predictions=preds, references=refs)
    assert task_score("CB", preds, refs) == pytest.approx((cb["accuracy"] + cb["f1_macro"]) / 2)
    questions = [i // 4 for i in range(40)]
    refs01 = [rng.choice("01") for _ in range(40)]
    preds01 = [rng.choice("01") for _ in range(40)]
    mrc = superglue_metric("MultiRC").compute(predictions=preds01, references=refs01, question_idx=questions)
    assert task_score("MultiRC", preds01, refs01, questions) == pytest.approx((mrc["em"] + mrc["f1a"]) / 2)
    assert task_score("rte", [True, False], [True, True]) == 0.5
    with pytest.raises(ValueError, match="needs groups"):
        task_score("MultiRC", preds01, refs01)
