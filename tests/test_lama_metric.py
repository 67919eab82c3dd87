"""LAMA ranking metric: hand-computed ranks, ties, the MRR cap, exclusion, macro vs micro, per-type means."""

from __future__ import annotations

import re

import pytest
import torch
from datasets import Dataset

from prompt_adapters.data.lama import valid_objects
from prompt_adapters.metrics.lama import LamaRanking, aggregate_runs, gold_rank, other_valid_mask


@pytest.fixture
def metric() -> LamaRanking:
    return LamaRanking(keep_in_memory=True)


# ---------------------------------------------------------------------------------------------- gold_rank


def test_gold_rank_counts_strictly_greater_scores() -> None:
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.5, 0.2],
            [0.1, 0.5, 0.5, 0.2],
            [0.1, 0.5, 0.5, 0.2],
            [0.9, 0.8, 0.7, 0.6],
        ]
    )
    ranks = gold_rank(scores, torch.tensor([2, 1, 3, 0]))
    # A tie with the gold does not push it down: both 0.5 columns get rank 1.
    assert ranks.tolist() == [1, 1, 3, 1]
    assert ranks.dtype == torch.long


def test_gold_rank_excludes_other_valid_objects() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    exclude = torch.tensor([[True, False, True, True], [False, False, False, False]])
    # Row 0: gold is column 3; columns 0 and 2 are other valid objects, only column 1 still outranks it.
    # The True at the gold column itself is ignored.
    assert gold_rank(scores, torch.tensor([3, 3]), exclude).tolist() == [2, 4]
    assert gold_rank(scores, torch.tensor([3, 3])).tolist() == [4, 4]


def test_gold_rank_validates_inputs() -> None:
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        gold_rank(scores, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        gold_rank(scores, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        gold_rank(scores, torch.tensor([0, 1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        gold_rank(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))


def test_other_valid_mask_from_valid_objects() -> None:
    facts = Dataset.from_dict({"sub": ["X", "X", "Y"], "obj": ["a", "b", "a"], "relation": ["P1", "P1", "P1"]})
    valid = valid_objects(facts)
    columns = {"a": 0, "b": 1, "c": 2}
    mask = other_valid_mask(facts["relation"], facts["sub"], valid, columns)
    assert mask.tolist() == [[True, True, False], [True, True, False], [True, False, False]]
    # Fact X -> b, gold column 1: "a" scores higher but is another valid object of X.
    scores = torch.tensor([[0.9, 0.5, 0.7]] * 3)
    assert gold_rank(scores, torch.tensor([0, 1, 0]), mask).tolist() == [1, 2, 1]
    assert gold_rank(scores, torch.tensor([0, 1, 0])).tolist() == [1, 3, 1]


# ---------------------------------------------------------------------------------------------- LamaRanking


def test_macro_micro_and_per_relation(metric: LamaRanking) -> None:
    metric.add_batch(ranks=[1, 1, 2], relations=["P1", "P1", "P1"])
    metric.add_batch(ranks=torch.tensor([5]), relations=["P2"])
    result = metric.compute()
    assert result["per_relation"]["P1"] == pytest.approx({"P@1": 2 / 3, "P@10": 1.0, "MRR": 5 / 6, "n": 3})
    assert result["per_relation"]["P2"] == pytest.approx({"P@1": 0.0, "P@10": 1.0, "MRR": 0.2, "n": 1})
    assert result["macro"] == pytest.approx({"P@1": 1 / 3, "P@10": 1.0, "MRR": (5 / 6 + 0.2) / 2})
    assert result["micro"] == pytest.approx({"P@1": 0.5, "P@10": 1.0, "MRR": (1 + 1 + 0.5 + 0.2) / 4})
    assert result["P@1"] == result["macro"]["P@1"]  # the headline is the macro average
    assert (result["n_facts"], result["n_relations"], result["per_type"]) == (4, 2, {})


def test_mrr_cap(metric: LamaRanking) -> None:
    metric.add_batch(ranks=[1, 1000, 1001], relations=["P1"] * 3)
    capped = metric.compute(mrr_cap=1000)
    assert capped["MRR"] == pytest.approx((1 + 1 / 1000) / 3)
    metric.add_batch(ranks=[1, 1000, 1001], relations=["P1"] * 3)
    full = metric.compute()
    assert full["MRR"] == pytest.approx((1 + 1 / 1000 + 1 / 1001) / 3)


def test_custom_k(metric: LamaRanking) -> None:
    metric.add_batch(ranks=[1, 3, 100], relations=["P1"] * 3)
    result = metric.compute(k=(1, 3, 100))
    assert [result[f"P@{k}"] for k in (1, 3, 100)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert "P@10" not in result
    metric.add_batch(ranks=[2], relations=["P1"])
    assert metric.compute(k=1)["P@1"] == 0.0


def test_per_type_is_mean_over_relations(metric: LamaRanking) -> None:
    metric.add_batch(
        ranks=[1, 2, 1, 1, 1, 7],
        relations=["P1", "P1", "P2", "P3", "P3", "P3"],
        relation_types=["N-1", "N-1", "N-1", "N-M", "N-M", "N-M"],
    )
    metric.add_batch(ranks=[1], relations=["G"])  # a relation without a type (e.g. Google-RE)
    result = metric.compute()
    assert result["per_type"]["N-1"]["P@1"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["per_type"]["N-1"]["n_relations"] == 2
    assert result["per_type"]["N-M"]["P@1"] == pytest.approx(2 / 3)
    assert set(result["per_type"]) == {"N-1", "N-M"}
    assert result["P@1"] == pytest.approx((0.5 + 1.0 + 2 / 3 + 1.0) / 4)


def test_add_single_facts_and_compute_inputs() -> None:
    metric = LamaRanking(keep_in_memory=True)
    for rank in (1, 4):
        metric.add(rank=rank, relation="P1", relation_type="1-1")
    assert metric.compute(k=1) == (
        {
            "P@1": 0.5,
            "MRR": 0.625,
            "macro": {"P@1": 0.5, "MRR": 0.625},
            "micro": {"P@1": 0.5, "MRR": 0.625},
            "per_relation": {"P1": {"P@1": 0.5, "MRR": 0.625, "n": 2}},
            "per_type": {"1-1": {"P@1": 0.5, "MRR": 0.625, "n_relations": 1}},
            "n_facts": 2,
            "n_relations": 1,
        }
    )
    assert LamaRanking(keep_in_memory=True).compute(ranks=[2], relations=["P1"])["MRR"] == 0.5


def test_end_to_end_from_scores(metric: LamaRanking) -> None:
    scores = torch.tensor([[3.0, 1.0, 2.0], [3.0, 3.0, 0.0], [0.0, 1.0, 2.0]])
    ranks = gold_rank(scores, torch.tensor([2, 1, 0]))
    assert ranks.tolist() == [2, 1, 3]
    metric.add_batch(ranks=ranks, relations=["P1", "P1", "P2"], relation_types=["N-1", "N-1", "N-M"])
    result = metric.compute(k=(1,))
    assert result["P@1"] == pytest.approx(0.25)
    assert result["micro"]["P@1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("batch", "kwargs", "message"),
    [
        ({"ranks": [0], "relations": ["P1"]}, {}, "1-based.*got 0"),
        (
            {"ranks": [1, 1], "relations": ["P1", "P1"], "relation_types": ["N-1", "N-M"]},
            {},
            "two types: 'N-1' and 'N-M'",
        ),
        ({"ranks": [1], "relations": ["P1"]}, {"k": (0,)}, "k must be positive"),
        ({"ranks": [1], "relations": ["P1"]}, {"mrr_cap": 0}, "mrr_cap must be a positive integer"),
    ],
)
def test_rejects_bad_inputs(metric: LamaRanking, batch: dict, kwargs: dict, message: str) -> None:
    metric.add_batch(**batch)
    with pytest.raises(ValueError, match=message):
        metric.compute(**kwargs)


def test_compute_without_facts(metric: LamaRanking) -> None:
    with pytest.raises(ValueError, match="no facts were added"):
        metric.compute()
    with pytest.raises(ValueError, match="needs ranks= and relations="):
        metric.add_batch(ranks=[1])


# ---------------------------------------------------------------------------------------------- runs of relations


def _record(relation: str, seed: int, ranks: list[int], dropped: int, **extra: object) -> dict:
    return {"relation": relation, "type": "N-1", "seed": seed, "ranks": ranks, "init_ranks": [2] * len(ranks),
            "manual_ranks": [1] * len(ranks), "none_ranks": [5] * len(ranks),
            "dropped": {"test": {"not_in_candidates": dropped}}, **extra}


def test_aggregate_runs_gives_per_seed_macro_tables_and_their_mean_and_std() -> None:
    records = [
        _record("P19", 1, [1, 1, 2, 3], dropped=2, train_seconds=1.5, kept={"epoch": 2}),  # P@1 0.50
        _record("P36", 1, [1, 4], dropped=1, train_seconds=0.5, kept={"epoch": 0}),  # P@1 0.50
        _record("P19", 2, [1, 1, 1, 3], dropped=2, train_seconds=2.0, kept={"epoch": 1}),  # P@1 0.75
        _record("P36", 2, [2, 4], dropped=1, train_seconds=1.0, kept={"epoch": 1}),  # P@1 0
        {"relation": "P40", "seed": 1, "type": "N-M", "skipped": "no test fact left", "dropped": {"test": {"x": 4}}},
    ]
    tables = aggregate_runs(records, mrr_cap=3)
    assert tables["seeds"] == [1, 2]
    # macro P@1: seed 1 (0.5 + 0.5) / 2 = 50, seed 2 (0.75 + 0) / 2 = 37.5; micro pools the 6 facts of a seed
    assert tables["headline"]["method.macro.P@1"] == pytest.approx({"mean": 43.75, "std": 8.838834764831844})
    assert tables["headline"]["method.micro.P@1"] == pytest.approx({"mean": 50.0, "std": 0.0})
    assert tables["headline"]["manual.macro.P@1"] == {"mean": 100.0, "std": 0.0}
    assert tables["headline"]["init.macro.P@10"] == {"mean": 100.0, "std": 0.0}
    assert tables["headline"]["none.macro.MRR"] == {"mean": 0.0, "std": 0.0}  # rank 5 is beyond the cap of 3
    # seed 1, P36 MRR capped at 3: (1 + 0) / 2; uncapped: (1 + 1/4) / 2
    assert tables["per_seed"]["1"]["ranks"]["per_relation"]["P36"]["MRR"] == pytest.approx(0.5)
    assert tables["headline"]["method.macro.MRR_uncapped"]["mean"] == pytest.approx(
        100 * ((1 + 1 + 1 / 2 + 1 / 3) / 4 + 1.25 / 2 + (3 + 1 / 3) / 4 + 0.75 / 2) / 4)
    assert tables["dropped_facts"] == {"test": {"not_in_candidates": 3, "x": 4}}  # first seed, skipped relations too
    assert tables["skipped_relations"] == {"P40": "no test fact left"}
    assert tables["train_seconds"] == pytest.approx({"mean": 2.5, "std": 0.7071067811865476})
    assert tables["kept_epochs"]["fits"] == 4 and tables["kept_epochs"]["kept_start_fits"] == ["P36-seed1"]


def test_aggregate_runs_refuses_a_run_whose_every_relation_was_skipped() -> None:
    message = "every relation was skipped, nothing to report: {'P40': 'none left'}"
    with pytest.raises(ValueError, match=re.escape(message)):
        aggregate_runs([{"relation": "P40", "seed": 1, "skipped": "none left", "dropped": {}}], mrr_cap=None)

