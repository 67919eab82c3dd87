"""Paired comparisons of LAMA runs (prompt_adapters.metrics.lama_comparison) on hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prompt_adapters.metrics.lama import LamaRanking
from prompt_adapters.metrics.lama_comparison import compare_lama_runs, lama_comparison_markdown, load_lama_run

MANUAL = {"P1": [1, 5, 2, 9], "P2": [3, 1, 1, 20, 4, 2]}


def _run(folder: Path, ranks: dict[str, list[list[int]]], manual: dict[str, list[int]] | None = None) -> Path:
    """A run folder as benchmarks/lama.py leaves it: one record per (relation, seed) in relations/."""
    (folder / "relations").mkdir(parents=True)
    for relation, per_seed in ranks.items():
        for seed, seed_ranks in enumerate(per_seed, start=1):
            record = {"relation": relation, "seed": seed, "ranks": seed_ranks,
                      "manual_ranks": (manual or MANUAL)[relation]}
            (folder / "relations" / f"{relation}-seed{seed}.json").write_text(json.dumps(record))
    return folder


def test_the_full_set_difference_is_the_macro_difference_the_tables_report(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {"P1": [[1, 1, 2, 1]], "P2": [[1, 1, 1, 3, 1, 1]]})
    b = _run(tmp_path / "b", {"P1": [[1, 5, 2, 9]], "P2": [[3, 1, 1, 20, 4, 2]]})
    intervals = compare_lama_runs(a, b)
    assert intervals["P1"].difference == pytest.approx(0.75 - 0.25)
    assert intervals["P2"].difference == pytest.approx(5 / 6 - 2 / 6)
    macro = {}
    for name, folder in (("a", a), ("b", b)):
        run = load_lama_run(folder)
        metric = LamaRanking(keep_in_memory=True)
        for relation, (ranks,) in run.ranks.items():
            metric.add_batch(ranks=ranks, relations=[relation] * len(ranks))
        macro[name] = metric.compute()["macro"]["P@1"]
    assert intervals["macro"].difference == pytest.approx(macro["a"] - macro["b"])
    assert intervals["macro"].units == 10
    mrr = compare_lama_runs(a, b, measure="MRR", mrr_cap=4)  # ranks above the cap count 0
    assert mrr["P1"].difference == pytest.approx((1 + 1 + 0.5 + 1) / 4 - (1 + 0 + 0.5 + 0) / 4)


def test_identical_runs_differ_by_exactly_zero_and_a_clear_gain_is_resolved(tmp_path: Path) -> None:
    same = {"P1": [[1, 5, 2, 9]], "P2": [[3, 1, 1, 20, 4, 2]]}
    zero = compare_lama_runs(_run(tmp_path / "a", same), _run(tmp_path / "b", same))["macro"]
    assert (zero.difference, zero.low, zero.high, zero.excludes_zero) == (0.0, 0.0, 0.0, False)
    better = {"P1": [[1] * 4], "P2": [[1] * 6]}
    gain = compare_lama_runs(_run(tmp_path / "c", better), _run(tmp_path / "d", same))["macro"]
    assert gain.excludes_zero and gain.low > 0


def test_several_seeds_count_with_their_mean(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {"P1": [[1, 1, 1, 1], [9, 9, 9, 9]]})  # P@1 1.0 and 0.0: mean 0.5
    b = _run(tmp_path / "b", {"P1": [[1, 9, 9, 9]]}, manual={"P1": MANUAL["P1"]})
    assert compare_lama_runs(a, b)["macro"].difference == pytest.approx(0.5 - 0.25)


def test_runs_on_different_facts_are_refused_naming_the_relation(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {"P1": [[1, 1, 2, 1]]})
    b = _run(tmp_path / "b", {"P1": [[1, 1, 2, 1]]}, manual={"P1": [2, 5, 2, 9]})
    with pytest.raises(SystemExit, match=r"P1: .* were scored on different test facts"):
        compare_lama_runs(a, b)
    with pytest.raises(SystemExit, match="share no relation"):
        compare_lama_runs(a, _run(tmp_path / "c", {"P2": [[1] * 6]}))
    with pytest.raises(SystemExit, match="has no finished relations"):
        compare_lama_runs(a, tmp_path)
    with pytest.raises(ValueError, match="measure must be one of"):
        compare_lama_runs(a, a, measure="P@3")


def test_the_markdown_names_every_relation_and_the_verdict(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {"P1": [[1] * 4], "P2": [[1] * 6]})
    b = _run(tmp_path / "b", {"P1": [[1, 5, 2, 9]], "P2": [[3, 1, 1, 20, 4, 2]]})
    text = lama_comparison_markdown(a, b, "P@1", compare_lama_runs(a, b))
    assert "| P1 | 4 | +75.0 [" in text and "| macro | 10 |" in text and "A > B" in text


def test_the_none_subject_diagnostic_is_compared_on_its_own_ranks(tmp_path: Path) -> None:
    """``subject="none"`` pairs the ranks with the subject replaced by None (the leak diagnostic), not the test ranks;
    a run without them is refused with the file's name."""
    test = {"P1": [[1, 1, 1, 1]], "P2": [[1, 1, 1, 1, 1, 1]]}
    runs = [_run(tmp_path / name, test) for name in ("leaky", "clean")]
    none_ranks = {"leaky": [1, 1, 1, 1], "clean": [9, 9, 9, 9]}
    for name, folder in zip(("leaky", "clean"), runs, strict=True):
        for path in (folder / "relations").glob("*.json"):
            record = json.loads(path.read_text())
            record["none_ranks"] = none_ranks[name] + [9] * (len(record["ranks"]) - 4)
            path.write_text(json.dumps(record))
    assert compare_lama_runs(*runs)["macro"].difference == 0.0
    leak = compare_lama_runs(*runs, subject="none")
    assert leak["P1"].difference == pytest.approx(1.0) and leak["P2"].difference == pytest.approx(4 / 6)
    assert leak["macro"].excludes_zero
    assert 'with the subject replaced by "None"' in lama_comparison_markdown(*runs, "P@1", leak, "none")
    old = _run(tmp_path / "old", test)
    with pytest.raises(SystemExit, match="none_ranks"):
        compare_lama_runs(old, runs[0], subject="none")
    with pytest.raises(ValueError, match="'nobody'"):
        load_lama_run(old, "nobody")
