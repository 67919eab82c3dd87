"""benchmarks/lama.py end to end on a tiny model over the LAMA excerpts in tests/fixtures: outputs, switches,
2 processes, resume."""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest
from lama_runs import finish, kill_once_written, launch, records

from prompt_adapters.testing import save_tiny_model
from prompt_adapters.training import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lama  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("bert", tmp_path_factory.mktemp("models") / "bert")


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(model), "--data-dir", str(data / "lama"), "--relations", "P19,P1376",
        "--max-train", "24", "--max-test", "40", "--epochs", "2", "--output", str(out), *extra,
    ]


def test_outputs_and_protocol_header(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    summary = lama.main(_args(tiny_bert, fixture_data, tmp_path, "--method", "deep", "--seeds", "2"))
    assert summary is not None
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        ".lock", "per_relation.csv", "per_relation.png", "results.json", "results.md", "run.json",
    ]
    protocol = json.loads((tmp_path / "results.json").read_text())["protocol"]
    assert protocol["candidates"] == "common_vocab_cased" and protocol["dedupe"] and protocol["mrr_cap"] == 1000
    assert protocol["seeds"] == [42, 43]
    table = (tmp_path / "results.md").read_text()
    assert "| deep (ours) |" in table and " ± " in table and "Dropped facts" in table
    rows = (tmp_path / "per_relation.csv").read_text().splitlines()
    assert rows[0].startswith("relation,type,n_test") and [r.split(",")[0] for r in rows[1:]] == ["P19", "P1376"]
    assert (tmp_path / "per_relation.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary["headline"]) >= {"method.macro.P@1", "method.micro.P@1", "manual.macro.P@1"}
    kept = summary["kept_epochs"]
    assert kept["fits"] == 4 and sorted(kept["per_fit"]) == ["P1376-seed42", "P1376-seed43", "P19-seed42", "P19-seed43"]
    for name, record in records(tmp_path).items():
        fit = kept["per_fit"][name.removesuffix(".json")]
        assert fit == record["kept"]
        devs = [fit["start_dev_p1"]] + [epoch["dev_p1"] for epoch in record["history"]]
        assert fit["dev_p1"] == max(devs) and fit["epoch"] == devs.index(max(devs))  # the first best is kept
    median = statistics.median(fit["epoch"] for fit in kept["per_fit"].values())
    assert f"Kept epochs over 4 fits: median {median:g}" in table


def test_a_run_whose_training_never_beat_its_start_says_so() -> None:
    """The evaluated parameters are the untrained ones when no epoch beat them on dev: the report says it aloud."""
    records = [
        {"relation": relation, "seed": 1, "pooled": {}, "kept": {"epoch": 0, "dev_p1": 0.103, "start_dev_p1": 0.103}}
        for relation in ("P19", "P36")
    ]
    kept = lama.kept_epochs(records)
    assert kept == {"fits": 1, "kept_start": 1, "kept_start_fits": ["pooled-seed1"],
                    "per_fit": {"pooled-seed1": {"epoch": 0, "dev_p1": 0.103, "start_dev_p1": 0.103}}}
    line = lama.describe_kept(kept)
    assert line.startswith("Kept epoch (pooled-seed1): 0, dev P@1 10.3 (before training 10.3).")
    assert "**1 of 1 fits kept their starting parameters**" in line
    separate = [{"relation": "P19", "seed": 1, "kept": {"epoch": 3, "dev_p1": 0.5, "start_dev_p1": None}},
                {"relation": "P36", "seed": 1, "kept": {"epoch": 0, "dev_p1": 0.2, "start_dev_p1": 0.2}},
                {"relation": "P36", "seed": 2, "kept": None}]
    line = lama.describe_kept(lama.kept_epochs(separate))
    assert line.startswith("Kept epochs over 2 fits: median 1.5, range 0–3.") and "(P36-seed1)" in line
    assert lama.describe_kept(lama.kept_epochs([separate[2]])) == "Kept epochs: no training."


def test_protocol_switches_change_what_they_should(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    base = lama.main(_args(tiny_bert, fixture_data, tmp_path / "a", "--method", "manual"))
    full = lama.main(_args(tiny_bert, fixture_data, tmp_path / "b", "--method", "manual", "--candidates", "full"))
    uncapped = lama.main(_args(tiny_bert, fixture_data, tmp_path / "c", "--method", "manual", "--mrr-cap", "0"))
    excluded = lama.main(_args(tiny_bert, fixture_data, tmp_path / "d", "--method", "manual", "--exclude-other-valid"))
    kept = lama.main(_args(tiny_bert, fixture_data, tmp_path / "e", "--method", "manual", "--no-dedupe"))
    assert base["dropped_facts"]["test"]["not_in_candidates"] >= 0
    assert full["dropped_facts"]["test"]["not_in_candidates"] == 0
    assert full["protocol"]["candidates"] == "full" and uncapped["protocol"]["mrr_cap"] is None
    assert excluded["protocol"]["exclude_other_valid"] and not kept["protocol"]["dedupe"]
    assert kept["dropped_facts"]["train"]["duplicate"] == 0
    for summary in (base, full, uncapped, excluded, kept):
        assert 0 <= summary["headline"]["manual.macro.P@1"]["mean"] <= 100


def test_bad_input_is_reported_clearly(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown relation"):
        lama.main(_args(tiny_bert, fixture_data, tmp_path, "--relations", "P99999"))
    with pytest.raises(SystemExit, match="does not exist"):
        lama.main(["--model", str(tiny_bert), "--data-dir", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="no 'lpaqa_top1' prompts for relation 'place_of_birth'"):
        lama.main(_args(tiny_bert, fixture_data, tmp_path, "--method", "mixture", "--init", "lpaqa_top1",
                        "--split", "google_re_qin_eisner", "--relations", "place_of_birth"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "trex").symlink_to(fixture_data / "lama" / "trex")
    (broken / "vocab").symlink_to(fixture_data / "lama" / "vocab")
    (broken / "relations.jsonl").write_text(json.dumps(
        {"relation": "P19", "template": "[X] was born somewhere .", "label": "x", "type": "N-1", "description": ""}
    ) + "\n")
    with pytest.raises(ValueError, match=r"\[X\] was born somewhere"):
        lama.main(["--model", str(tiny_bert), "--data-dir", str(broken), "--relations", "P19", "--output",
                   str(tmp_path / "out"), "--max-test", "5"])


def test_two_processes_equal_one_process(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    args = ["--method", "mixture", "--relations", "P19,P20,P1376"]
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        finish(launch(_args(tiny_bert, fixture_data, out, *args), processes))
        runs[processes] = records(out)
    assert {tuple(r["process"]) for r in runs[2].values()} == {(0, 2), (1, 2)}
    for name, record in runs[1].items():
        other = runs[2][name]
        assert record["ranks"] == other["ranks"] and record["history"] == other["history"], name
    single = json.loads((tmp_path / "p1" / "results.json").read_text())["headline"]
    double = json.loads((tmp_path / "p2" / "results.json").read_text())["headline"]
    assert single == double


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    args = ["--method", "deep", "--relations", "P19,P20", "--epochs", "6", "--patience", "10"]
    finish(launch(_args(tiny_bert, fixture_data, tmp_path / "whole", *args)))
    out = tmp_path / "cut"
    checkpoint = out / "checkpoints" / "P20-seed42" / "LATEST"
    kill_once_written(launch(_args(tiny_bert, fixture_data, out, *args)), checkpoint)
    assert (out / "relations" / "P19-seed42.json").exists() and not (out / "relations" / "P20-seed42.json").exists()
    latest = latest_checkpoint(checkpoint.parent)
    assert latest is not None
    epochs_done = json.loads((latest / "meta.json").read_text())["loop"]["epoch"]
    assert 1 <= epochs_done < 6
    finish(launch(_args(tiny_bert, fixture_data, out, *args, "--resume")))
    cut, full = records(out), records(tmp_path / "whole")
    for name in full:
        assert cut[name]["ranks"] == full[name]["ranks"] and cut[name]["history"] == full[name]["history"], name
    assert list((out / "checkpoints").iterdir()) == []  # kept for the resume, removed once P20's record was written


def test_data_parallel_training_does_not_depend_on_the_number_of_processes(
    tiny_bert: Path, fixture_data: Path, tmp_path: Path
) -> None:
    args = ["--method", "deep", "--relations", "P1376", "--batch-size", "8", "--epochs", "3", "--data-parallel"]
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"dp{processes}"
        finish(launch(_args(tiny_bert, fixture_data, out, *args), processes))
        runs[processes] = records(out)["P1376-seed42.json"]
    assert runs[2]["process"] == [0, 2]
    assert runs[1]["ranks"] == runs[2]["ranks"]
    for one, two in zip(runs[1]["history"], runs[2]["history"], strict=True):
        assert one["dev_p1"] == two["dev_p1"]
        assert one["train_loss"] == pytest.approx(two["train_loss"], abs=1e-5)


def test_bf16_mixed_precision_run(tiny_bert: Path, fixture_data: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    summary = lama.main(_args(tiny_bert, fixture_data, tmp_path, "--method", "mixture", "--relations", "P1376"))
    assert 0 <= summary["headline"]["method.macro.P@1"]["mean"] <= 100
    history = json.loads((tmp_path / "relations" / "P1376-seed42.json").read_text())["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)


def test_relation_whose_objects_all_split_is_skipped_and_counted(
    tiny_bert: Path, fixture_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "lama"
    facts = data / "trex" / "autoprompt_original_subobj"
    (facts / "P19").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = [json.dumps({"sub": f"Person{i}", "obj": f"Qzxv{i}wq"}) for i in range(5)]
        (facts / "P19" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (facts / "P1376").symlink_to(fixture_data / "lama" / "trex" / "autoprompt_original_subobj" / "P1376")
    (data / "vocab").symlink_to(fixture_data / "lama" / "vocab")
    (data / "relations.jsonl").symlink_to(fixture_data / "lama" / "relations.jsonl")
    summary = lama.main(["--model", str(tiny_bert), "--data-dir", str(data), "--candidates", "full",
                         "--output", str(tmp_path / "out"), "--max-test", "20", "--max-train", "8", "--epochs", "1",
                         "--method", "mixture"])
    assert set(summary["skipped_relations"]) == {"P19"}
    assert "not_single_token': 5" in summary["skipped_relations"]["P19"]
    assert summary["dropped_facts"]["test"]["not_single_token"] >= 5
    assert "Skipped relations (not in the averages): {\"P19\"" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(SystemExit, match="every relation was skipped"):
        lama.main(["--model", str(tiny_bert), "--data-dir", str(data), "--candidates", "full", "--relations", "P19",
                   "--output", str(tmp_path / "out2")])


def test_promptgen_pooled_job_and_none_diagnostic(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    bart = save_tiny_model("bart", tmp_path / "bart")
    summary = lama.main(_args(tiny_bert, fixture_data, tmp_path / "pg", "--method", "promptgen", "--generator",
                              str(bart), "--epochs", "1"))
    pooled = records(tmp_path / "pg")
    assert set(pooled) == {"P19-seed42.json", "P1376-seed42.json"}
    assert all(len(r["none_ranks"]) == len(r["ranks"]) for r in pooled.values())
    assert pooled["P19-seed42.json"]["history"] == pooled["P1376-seed42.json"]["history"]  # one adapter, one run
    # the pooled records are built as every other method's: the training time shared evenly, prompts counted
    assert len({r["pooled"]["train_seconds"] for r in pooled.values()}) == 1
    assert sum(r["train_seconds"] for r in pooled.values()) == pytest.approx(
        pooled["P19-seed42.json"]["pooled"]["train_seconds"], abs=2e-3)
    assert summary["train_seconds"]["mean"] == pytest.approx(sum(r["train_seconds"] for r in pooled.values()))
    assert all(r["prompts_left_out"] == 0 and r["templates"] == ["[X] [P*10] [Y] [P*5]"] for r in pooled.values())
    assert "promptgen, subject replaced by None" in (tmp_path / "pg" / "results.md").read_text()
    assert list((tmp_path / "pg" / "checkpoints").iterdir()) == []  # the pooled joint-seed42 folder is removed
    assert list(summary["kept_epochs"]["per_fit"]) == ["pooled-seed42"]  # one generator for both relations
    assert "Kept epoch (pooled-seed42): " in (tmp_path / "pg" / "results.md").read_text()
    assert 0 <= summary["headline"]["none.macro.P@1"]["mean"] <= 100
    # the kept generator's prompts for the first test facts, as text, in the record, the summary and the report
    report = (tmp_path / "pg" / "results.md").read_text()
    for record in pooled.values():
        shown = record["written_prompts"]
        assert 1 <= len(shown) <= lama.PROMPTS_SHOWN and all(fact["prompt"].count("[MASK]") == 1 for fact in shown)
        assert summary["written_prompts"][record["relation"]] == shown
        assert all(f"{record['relation']}, {fact['sub']} (answer {fact['obj']}): `[X] {fact['prompt']}`" in report
                   for fact in shown)


def test_a_run_shows_one_progress_display(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    """Only the bar over relations: no bar of transformers' weight loading or of datasets' filtering."""
    log = finish(launch(_args(tiny_bert, fixture_data, tmp_path, "--method", "mixture", "--epochs", "1")))
    bars = {re.sub(r"[:|].*", "", line).strip() for line in re.split(r"[\r\n]", log) if re.search(r"\d+%\|", line)}
    assert bars == {"relations"}, bars


def test_plot_shows_the_manual_prompt_once_for_the_manual_method(tiny_bert: Path, fixture_data: Path,
                                                                   tmp_path: Path) -> None:
    """The manual method's row is the manual row: one set of bars, not the same bars twice."""
    for method, labels in (("manual", ["manual prompt"]), ("mixture", ["manual prompt", "mixture"])):
        summary = lama.main(_args(tiny_bert, fixture_data, tmp_path / method, "--method", method, "--epochs", "1"))
        per_rel = summary["per_seed"][str(summary["protocol"]["seeds"][0])]
        (ax,) = lama.per_relation_figure(summary, per_rel).axes
        assert [text.get_text() for text in ax.get_legend().get_texts()] == labels
        assert [len(bars) for bars in ax.containers] == [2] * len(labels)  # P19 and P1376


def test_a_used_output_directory_needs_resume(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    lama.main(_args(tiny_bert, fixture_data, tmp_path, "--method", "manual", "--relations", "P1376"))
    with pytest.raises(SystemExit, match="pass --resume"):
        lama.main(_args(tiny_bert, fixture_data, tmp_path, "--method", "manual", "--relations", "P1376"))
    assert lama.main(_args(tiny_bert, fixture_data, tmp_path, "--method", "manual", "--relations", "P1376",
                           "--resume")) is not None


def test_promptgen_segment_maxima_reach_the_config(tiny_bert: Path, fixture_data: Path, tmp_path: Path) -> None:
    """--num-before / --num-after set PromptGen's m and n (the paper's 10 and 5 by default)."""
    bart = save_tiny_model("bart", tmp_path / "bart")
    lama.main(_args(tiny_bert, fixture_data, tmp_path / "pg", "--method", "promptgen", "--generator", str(bart),
                    "--epochs", "1", "--num-before", "3", "--num-after", "0", "--stopping", "fixed"))
    assert all(r["templates"] == ["[X] [P*3] [Y]"] for r in records(tmp_path / "pg").values())
    with pytest.raises(ValueError, match="stopping='fixed' always writes num_before tokens"):
        lama.main(_args(tiny_bert, fixture_data, tmp_path / "pg2", "--method", "promptgen", "--generator", str(bart),
                        "--epochs", "1", "--stopping", "fixed", "--stop-at-answers"))
    lama.main(_args(tiny_bert, fixture_data, tmp_path / "pg3", "--method", "promptgen", "--generator", str(bart),
                    "--epochs", "1", "--stop-at-answers"))
    assert json.loads((tmp_path / "pg3" / "run.json").read_text())["settings"]["stop_at_answers"] is True
    straight = lama.parse_args(["--method", "promptgen", "--generator", str(bart), "--token-form", "straight_through"])
    assert lama.METHODS["promptgen"].build([], straight).token_form == "straight_through"


def test_compare_pairs_two_runs_on_their_test_facts(tiny_bert: Path, fixture_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """--compare reads two finished runs and gives the macro difference their tables show, with an interval."""
    manual = lama.main(_args(tiny_bert, fixture_data, tmp_path / "manual", "--method", "manual"))
    tuned = lama.main(_args(tiny_bert, fixture_data, tmp_path / "tuned", "--method", "mixture", "--lr", "0.3"))
    assert manual is not None and tuned is not None
    capsys.readouterr()
    intervals = lama.main(["--compare", str(tmp_path / "tuned"), str(tmp_path / "manual")])
    assert intervals is not None and list(intervals) == ["P19", "P1376", "macro"]
    expected = tuned["headline"]["method.macro.P@1"]["mean"] - manual["headline"]["method.macro.P@1"]["mean"]
    macro = intervals["macro"]
    assert 100 * macro["difference"] == pytest.approx(expected, abs=1e-9)
    facts = sum(record["facts"]["test"] for record in records(tmp_path / "manual").values())
    assert macro["low"] <= macro["difference"] <= macro["high"] and macro["units"] == facts
    assert f"| macro | {facts} |" in capsys.readouterr().out


def test_the_method_table_holds_every_library_method_and_runs_one_built_from_templates_alone(
        tiny_bert: Path, fixture_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--method choices come from prompt_adapters.METHODS; a library method without a builder of its own (here the
    mixture, as a fifth method would be) runs with its config built from the templates."""
    import lama_methods

    import prompt_adapters

    library = [name for name in lama_methods.METHODS if name not in ("manual", "peft_prompt_tuning", "peft_p_tuning")]
    assert library == [method.name for method in prompt_adapters.METHODS]
    build = lama_methods.templates_only(prompt_adapters.MixturePromptConfig)
    built: list[Any] = []
    plain = lama_methods.Method(lambda templates, args: built.append(build(templates, args)) or built[-1],
                                train=True, defaults=lama_methods.QIN_EISNER)
    monkeypatch.setitem(lama_methods.METHODS, "mixture", plain)
    summary = lama.main(_args(tiny_bert, fixture_data, tmp_path, "--method", "mixture", "--lr", "0.3"))
    assert summary is not None
    assert {tuple(config.templates) for config in built} == {
        (record["templates"][0],) for record in records(tmp_path).values()}
    assert {config.learn_weights for config in built} == {True}  # the config's own defaults, nothing else set
