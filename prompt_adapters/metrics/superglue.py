"""SuperGLUE metrics as P-tuning / PET report them (methods-spec §3.2, "Metrics").

Accuracy for every task; CB adds macro-F1 (scikit-learn's ``average="macro"``: the mean F1 over the classes that
occur in the references or the predictions); MultiRC adds F1a (binary F1 over all answer options, positive label 1)
and EM (the share of questions whose answer options are all labelled correctly). ``superglue_average`` gives the
"Avg." column of P-tuning Tables 3 and 4. Every metric works offline: construct it directly, no Hub lookup.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import datasets
import evaluate

_CITATION = """\
@article{wang2019superglue,
  title={SuperGLUE: A Stickier Benchmark for General-Purpose Language Understanding Systems},
  author={Wang, Alex and Pruksachatkun, Yada and Nangia, Nikita and Singh, Amanpreet and Michael, Julian
          and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  journal={arXiv preprint arXiv:1905.00537},
  year={2019}
}
"""

_REFERENCE_URLS = ["https://super.gluebenchmark.com/", "https://github.com/THUDM/P-tuning"]


def _label_features(**extra: datasets.Value) -> list[datasets.Features]:
    """Integer labels (COPA choices, MultiRC 0/1, bools) or string labels (verbalizer keys such as "entailment")."""
    return [
        datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype), **extra})
        for dtype in ("int64", "string")
    ]


def _accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    if not references:
        raise ValueError("no predictions were added; call add_batch(predictions=..., references=...) first")
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def _f1(predictions: Sequence[Hashable], references: Sequence[Hashable], positive: Hashable) -> float:
    """F1 of class ``positive``: 2TP / (2TP + FP + FN), 0 when it is never predicted correctly."""
    tp = sum(p == positive and r == positive for p, r in zip(predictions, references, strict=True))
    fp = sum(p == positive and r != positive for p, r in zip(predictions, references, strict=True))
    fn = sum(p != positive and r == positive for p, r in zip(predictions, references, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """Mean per-class F1 over the classes seen in ``references`` or ``predictions`` (scikit-learn's macro F1).

    A class that is predicted but never gold, or gold but never predicted, counts 0; a class absent from both is
    left out, as scikit-learn does without ``labels=``.
    """
    classes = sorted(set(references) | set(predictions), key=str)
    if not classes:
        raise ValueError("no predictions were added; call add_batch(predictions=..., references=...) first")
    return sum(_f1(predictions, references, c) for c in classes) / len(classes)


class SuperGlueAccuracy(evaluate.Metric):
    """Accuracy over whole examples (BoolQ, COPA, RTE, WiC, WSC). Labels may be ints, bools or strings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy: the share of examples whose predicted label equals the gold label.",
            citation=_CITATION,
            inputs_description="predictions, references: one label per example (int, bool or str).",
            features=_label_features(),
            reference_urls=_REFERENCE_URLS,
        )

    def _compute(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"accuracy": _accuracy(predictions, references)}


class CbMetric(evaluate.Metric):
    """CB: accuracy and macro-F1 over the three classes (entailment, contradiction, neutral)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy and scikit-learn-equivalent macro-F1 (the CB metrics of SuperGLUE and PET).",
            citation=_CITATION,
            inputs_description="predictions, references: one label per example (int or str).",
            features=_label_features(),
            reference_urls=_REFERENCE_URLS,
        )

    def _compute(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"accuracy": _accuracy(predictions, references), "f1_macro": macro_f1(predictions, references)}


def _binary(value: Any) -> int:
    if value in (0, 1) or value in ("0", "1"):
        return int(value)
    raise ValueError(f"MultiRC labels must be 0/1 (or '0'/'1'), got {value!r}")


class MultiRcMetric(evaluate.Metric):
    """MultiRC: accuracy and F1a over answer options, EM over questions (grouped by ``question_idx``)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=(
                "MultiRC metrics over answer options: accuracy, F1a (binary F1 with positive label 1) and EM "
                "(the share of questions, grouped by question_idx, whose options are all labelled correctly)."
            ),
            citation=_CITATION,
            inputs_description=(
                "predictions, references: 0/1 (or '0'/'1') per answer option; question_idx: the question each "
                "option belongs to (unique over the split, as in the SuperGLUE files)."
            ),
            features=_label_features(question_idx=datasets.Value("int64")),
            reference_urls=_REFERENCE_URLS,
        )

    def _compute(self, predictions: list[Any], references: list[Any], question_idx: list[int]) -> dict[str, float]:
        preds = [_binary(p) for p in predictions]
        refs = [_binary(r) for r in references]
        all_right: dict[int, bool] = {}
        for p, r, q in zip(preds, refs, question_idx, strict=True):
            all_right[q] = all_right.get(q, True) and p == r
        return {
            "accuracy": _accuracy(preds, refs),
            "f1a": _f1(preds, refs, 1),
            "em": sum(all_right.values()) / len(all_right),
        }


METRICS: dict[str, type[evaluate.Metric]] = {
    "BoolQ": SuperGlueAccuracy,
    "CB": CbMetric,
    "COPA": SuperGlueAccuracy,
    "MultiRC": MultiRcMetric,
    "RTE": SuperGlueAccuracy,
    "WiC": SuperGlueAccuracy,
    "WSC": SuperGlueAccuracy,
}
"""The metric class of each task."""

AVERAGE_OF: dict[str, tuple[str, ...]] = {
    "BoolQ": ("accuracy",),
    "CB": ("accuracy", "f1_macro"),
    "COPA": ("accuracy",),
    "MultiRC": ("em", "f1a"),
    "RTE": ("accuracy",),
    "WiC": ("accuracy",),
    "WSC": ("accuracy",),
}
"""The metrics each task contributes to the SuperGLUE average (their mean is the task's score)."""


def _task_name(task: str) -> str:
    by_lower = {name.lower(): name for name in METRICS}
    if not isinstance(task, str) or task.lower() not in by_lower:
        raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {sorted(METRICS)}")
    return by_lower[task.lower()]


def superglue_metric(task: str, **kwargs: Any) -> evaluate.Metric:
    """A new metric for ``task`` (case-insensitive name); ``kwargs`` go to the ``evaluate.Metric`` constructor."""
    return METRICS[_task_name(task)](**kwargs)


def superglue_average(results: Mapping[str, Mapping[str, float]]) -> float:
    """The mean task score over ``results`` ({task: metric dict}), as P-tuning Tables 3 and 4 "Avg.".

    A task's score is the mean of its ``AVERAGE_OF`` metrics: CB = mean(accuracy, f1_macro), MultiRC =
    mean(em, f1a), accuracy otherwise. Pass all seven tasks for the published column; the scale (fractions or
    percent) is that of the inputs.
    """
    if not results:
        raise ValueError("results is empty; pass {task: {metric: value}} for the SuperGLUE tasks to average")
    scores = []
    for task, metrics in results.items():
        keys = AVERAGE_OF[_task_name(task)]
        missing = [key for key in keys if key not in metrics]
        if missing:
            raise ValueError(
                f"results for {task!r} lack {missing} (the average uses {list(keys)}); got {sorted(metrics)}"
            )
        scores.append(sum(metrics[key] for key in keys) / len(keys))
    return sum(scores) / len(scores)


def task_score(
    task: str,
    predictions: Sequence[Hashable],
    references: Sequence[Hashable],
    groups: Sequence[Hashable] | None = None,
) -> float:
    """The task's score in the SuperGLUE average (mean of its ``AVERAGE_OF`` metrics) as a fraction, computed in
    plain Python: the same numbers as the metric classes, cheap enough to call once per bootstrap resample.

    ``groups`` (MultiRC only) names the question of every answer option; EM counts a question right when all its
    options are, so a question drawn twice by a resample needs a distinct group id for each draw.
    """
    name = _task_name(task)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if name == "CB":
        return (_accuracy(predictions, references) + macro_f1(predictions, references)) / 2
    if name == "MultiRC":
        if groups is None or len(groups) != len(references):
            raise ValueError("MultiRC's score needs groups: the question of every answer option")
        preds, refs = [_binary(p) for p in predictions], [_binary(r) for r in references]
        all_right: dict[Hashable, bool] = {}
        for p, r, q in zip(preds, refs, groups, strict=True):
            all_right[q] = all_right.get(q, True) and p == r
        return (sum(all_right.values()) / len(all_right) + _f1(preds, refs, 1)) / 2
    return _accuracy(predictions, references)
