"""SuperGLUE metrics on hand-computed cases, and the "Avg." column of P-tuning Tables 3 and 4."""

from __future__ import annotations

import pytest

from prompt_adapters.data.superglue import TASKS
from prompt_adapters.metrics.superglue import (
    CbMetric,
    MultiRcMetric,
    SuperGlueAccuracy,
    macro_f1,
    superglue_average,
    superglue_metric,
)


def test_accuracy_takes_int_bool_and_string_labels() -> None:
    assert SuperGlueAccuracy().compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]) == {"accuracy": 0.75}
    assert SuperGlueAccuracy().compute(predictions=[True, False], references=[True, True]) == {"accuracy": 0.5}
    metric = SuperGlueAccuracy(keep_in_memory=True)
    metric.add_batch(predictions=["T", "F"], references=["T", "T"])
    metric.add_batch(predictions=["F"], references=["F"])
    assert metric.compute() == {"accuracy": pytest.approx(2 / 3)}


def test_cb_macro_f1_with_a_class_never_gold() -> None:
    """neutral is predicted once but never gold: it enters the macro mean with F1 0 (scikit-learn's behaviour).

    entailment: TP 2, FP 1, FN 0 -> F1 4/5; contradiction: TP 1, FP 0, FN 2 -> F1 1/2; neutral: F1 0.
    """
    preds = ["entailment", "entailment", "entailment", "contradiction", "neutral"]
    refs = ["entailment", "entailment", "contradiction", "contradiction", "contradiction"]
    result = CbMetric().compute(predictions=preds, references=refs)
    assert result == pytest.approx({"accuracy": 3 / 5, "f1_macro": (4 / 5 + 1 / 2 + 0) / 3})


def test_cb_macro_f1_leaves_out_a_class_absent_from_both() -> None:
    """No neutral anywhere: the mean runs over the two classes seen, as scikit-learn's average="macro" does."""
    preds = ["entailment", "contradiction", "contradiction", "contradiction"]
    refs = ["entailment", "entailment", "contradiction", "contradiction"]
    # entailment: TP 1, FP 0, FN 1 -> 2/3; contradiction: TP 2, FP 1, FN 0 -> 4/5
    assert macro_f1(preds, refs) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert CbMetric().compute(predictions=[0, 1, 2], references=[0, 1, 2]) == {"accuracy": 1.0, "f1_macro": 1.0}


def test_multirc_em_groups_answer_options_by_question() -> None:
    """Question 10 has all three options right, question 11 gets one of two wrong, question 12 (added in a later
    batch, interleaved with 10) is right: EM 2/3. F1a over options: TP 3, FP 1, FN 0 -> 6/7."""
    metric = MultiRcMetric(keep_in_memory=True)
    metric.add_batch(predictions=["1", "0", "1"], references=["1", "0", "0"], question_idx=[10, 10, 11])
    metric.add_batch(predictions=["1", "0", "1"], references=["1", "0", "1"], question_idx=[11, 12, 10])
    result = metric.compute()
    assert result == pytest.approx({"accuracy": 5 / 6, "f1a": 6 / 7, "em": 2 / 3})

    ints = MultiRcMetric().compute(predictions=[1, 1, 0, 0], references=[1, 1, 0, 1], question_idx=[10, 10, 11, 12])
    assert ints == pytest.approx({"accuracy": 3 / 4, "f1a": 4 / 5, "em": 2 / 3})


def test_multirc_em_counts_a_question_wrong_once() -> None:
    result = MultiRcMetric().compute(predictions=[0, 0, 0, 1], references=[1, 1, 0, 1], question_idx=[1, 1, 1, 2])
    assert result == pytest.approx({"accuracy": 2 / 4, "f1a": 2 / 4, "em": 1 / 2})


def test_multirc_rejects_non_binary_labels() -> None:
    with pytest.raises(ValueError, match="MultiRC labels must be 0/1"):
        MultiRcMetric().compute(predictions=[2], references=[1], question_idx=[0])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_metric_returns_the_task_metric_names(name: str) -> None:
    metric = superglue_metric(name.lower(), keep_in_memory=True)
    if name == "MultiRC":
        result = metric.compute(predictions=[1, 0], references=[1, 1], question_idx=[0, 0])
    else:
        result = metric.compute(predictions=[1, 0], references=[1, 1])
    assert set(result) == set(TASKS[name].metrics)


# P-tuning Tables 3 and 4 (methods-spec Appendix A.3): BoolQ, CB acc, CB F1, WiC, RTE, MultiRC EM, MultiRC F1a, WSC,
# COPA, and the published Avg.
PUBLISHED_ROWS = {
    "BERT-base fine-tuning": (72.9, 85.1, 73.9, 71.1, 68.4, 16.2, 66.3, 63.5, 67.0, 66.2),
    "BERT-base P-tuning": (73.9, 89.2, 92.1, 68.8, 71.1, 14.8, 63.3, 63.5, 72.0, 68.4),
    "GPT2-base P-tuning": (75.0, 91.1, 93.2, 68.3, 70.8, 23.5, 69.8, 63.5, 76.0, 70.4),
    "BERT-large MP zero-shot": (49.7, 50.0, 34.2, 50.0, 49.9, 0.6, 6.5, 61.5, 58.0, 45.0),
    "GPT2-medium P-tuning": (78.9, 98.2, 98.7, 69.4, 75.5, 29.3, 74.2, 74.0, 81.0, 75.6),
}


@pytest.mark.parametrize("row", sorted(PUBLISHED_ROWS))
def test_average_reproduces_the_published_avg_column(row: str) -> None:
    boolq, cb_acc, cb_f1, wic, rte, em, f1a, wsc, copa, avg = PUBLISHED_ROWS[row]
    results = {
        "BoolQ": {"accuracy": boolq},
        "CB": {"accuracy": cb_acc, "f1_macro": cb_f1},
        "WiC": {"accuracy": wic},
        "RTE": {"accuracy": rte},
        "MultiRC": {"em": em, "f1a": f1a, "accuracy": 99.0},  # MultiRC accuracy is not part of the average
        "WSC": {"accuracy": wsc},
        "COPA": {"accuracy": copa},
    }
    # the inputs are rounded to 0.1 and so is the published average: they agree to within 0.1
    assert superglue_average(results) == pytest.approx(avg, abs=0.1)


def test_average_errors() -> None:
    with pytest.raises(ValueError, match=r"results for 'cb' lack \['f1_macro'\]"):
        superglue_average({"cb": {"accuracy": 0.9}})
    with pytest.raises(ValueError, match="unknown SuperGLUE task 'ReCoRD'"):
        superglue_average({"ReCoRD": {"accuracy": 0.9}})
    with pytest.raises(ValueError, match="results is empty"):
        superglue_average({})
    assert superglue_average({"rte": {"accuracy": 0.5}, "MultiRC": {"em": 0.2, "f1a": 0.6}}) == pytest.approx(0.45)
