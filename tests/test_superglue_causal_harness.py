"""benchmarks/superglue.py on tiny causal (GPT-2, Llama) and seq2seq (T5) LMs: every task with every method end to
end (one optimiser step), the fixed evaluation sample, and the paired bootstrap comparison of two runs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from prompt_adapters.data import superglue as sg
from prompt_adapters.metrics.superglue import AVERAGE_OF, task_score
from prompt_adapters.testing import save_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import superglue

FAMILIES = {"gpt2": "causal", "llama": "causal", "t5": "seq2seq"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny_model(family, root / family) for family in FAMILIES}


def run(model: Path, data: Path, out: Path, method: str, *extra: str) -> dict[str, Any]:
    return superglue.main(["--model", str(model), "--method", method, "--data-dir", str(data / "superglue"),
                           "--max-steps", "1", "--seeds", "1", "--dev-scoring", "fast", "--output", str(out), *extra])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_task_with_every_method(family: str, tiny_models: dict[str, Path], fixture_data: Path,
                                      tmp_path: Path) -> None:
    for method in superglue.METHODS:
        out = tmp_path / method
        summary = run(tiny_models[family], fixture_data, out, method, "--task", "all")
        assert summary["protocol"]["lm_kind"] == FAMILIES[family]
        assert list(summary["tasks"]) == list(sg.TASKS)
        assert 0 <= summary["average"] <= 100
        assert f"# SuperGLUE fewshot: {method} on" in (out / "results.md").read_text()
        assert list((out / "checkpoints").glob("*")) == []  # a finished job's checkpoint is removed
        for task in sg.TASKS:
            job = json.loads((out / "jobs" / f"{task}-seed42.json").read_text())
            assert len(job["predictions"]) == job["sizes"]["test"] == len(job["references"]) > 0
            assert isinstance(job["seconds"], float) and job["seconds"] >= 0  # recorded (a tiny job rounds to 0.0)
            # the stored predictions give back the reported metrics (what --compare resamples)
            score = task_score(task, job["predictions"], job["references"], job["question_idx"])
            expected = sum(job["metrics"][key] for key in AVERAGE_OF[task]) / len(AVERAGE_OF[task])
            assert score == pytest.approx(expected), (method, task)
            if method == "manual":
                assert job["history"] == []
            else:  # trained one step, selected on dev32
                assert len(job["history"]) == 1 and math.isfinite(job["history"][0]["train_loss"]), (method, task)


def test_keep_checkpoints_keeps_them_and_a_resume_without_it_removes_those_of_finished_jobs(
    tiny_models: dict[str, Path], fixture_data: Path, tmp_path: Path
) -> None:
    run(tiny_models["llama"], fixture_data, tmp_path, "ptuning", "--task", "cb,rte", "--keep-checkpoints")
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["CB-seed42", "RTE-seed42"] and (tmp_path / "checkpoints" / "CB-seed42" / "LATEST").exists()
    jobs = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jobs").iterdir()}
    # the flag changes no result, so the resumed run's settings still match; its finished jobs' checkpoints go
    run(tiny_models["llama"], fixture_data, tmp_path, "ptuning", "--task", "cb,rte", "--resume")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "jobs").iterdir()} == jobs  # nothing ran again
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_eval_sample_is_fixed_and_keeps_whole_multirc_questions(fixture_data: Path) -> None:
    data = fixture_data / "superglue"
    rte = sg.load_task(data, "RTE", "val").to_list()
    first = superglue.eval_sample(sg.TASKS["RTE"], rte, 5)
    assert first == superglue.eval_sample(sg.TASKS["RTE"], rte, 5) and len(first) == 5
    assert [r["idx"] for r in first] == sorted(r["idx"] for r in first)  # file order
    assert superglue.eval_sample(sg.TASKS["RTE"], rte, 100) == rte
    multirc = sg.load_task(data, "MultiRC", "val").to_list()
    questions = {r["question_idx"] for r in multirc}
    sample = superglue.eval_sample(sg.TASKS["MultiRC"], multirc, 2)
    kept = {r["question_idx"] for r in sample}
    assert len(kept) == 2 < len(questions)
    assert sample == [r for r in multirc if r["question_idx"] in kept]
    args = superglue.parse_args(["--max-eval", "MultiRC=2,rte=5"])
    assert args.max_eval == {"MultiRC": 2, "RTE": 5}
    with pytest.raises(SystemExit):
        superglue.parse_args(["--max-eval", "RTE=0"])


def test_bad_method_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        superglue.parse_args(["--method", "mixture", "--frozen"])
    assert "--frozen applies to --method ptuning only, not 'mixture'" in capsys.readouterr().err


def test_compare_gives_paired_intervals_per_task_and_on_the_average(tiny_models: dict[str, Path],
                                                                     fixture_data: Path, tmp_path: Path) -> None:
    model = tiny_models["gpt2"]
    run(model, fixture_data, tmp_path / "manual", "manual", "--task", "rte,copa")
    run(model, fixture_data, tmp_path / "ptuning", "ptuning", "--task", "rte,copa", "--lr", "0.3")
    intervals = superglue.main(["--compare", str(tmp_path / "ptuning"), str(tmp_path / "manual")])
    assert set(intervals) == {"RTE", "COPA", "average"}
    a = superglue.load_runs(tmp_path / "ptuning")
    b = superglue.load_runs(tmp_path / "manual")
    for task in ("RTE", "COPA"):
        interval = intervals[task]
        assert interval["units"] == 8
        everything = list(range(8))
        import numpy as np

        expected = a[task].score(np.array(everything)) - b[task].score(np.array(everything))
        assert interval["difference"] == pytest.approx(expected)
        assert interval["low"] <= interval["difference"] <= interval["high"]
    average = intervals["average"]
    assert average["units"] == 16
    both = (intervals["RTE"]["difference"] + intervals["COPA"]["difference"]) / 2
    assert average["difference"] == pytest.approx(both)
    # runs scored on other examples cannot be paired
    run(model, fixture_data, tmp_path / "fewer", "manual", "--task", "rte", "--max-eval", "4")
    with pytest.raises(SystemExit, match="scored on different examples"):
        superglue.main(["--compare", str(tmp_path / "fewer"), str(tmp_path / "manual")])
    with pytest.raises(SystemExit, match="has no finished jobs"):
        superglue.main(["--compare", str(tmp_path / "nothing"), str(tmp_path / "manual")])


def test_peft_rows_match_the_p_tuning_prompt_budget_and_refuse_masked_lms() -> None:
    args = superglue.parse_args(["--method", "peft_p_tuning"])
    budgets = {name: superglue.native_peft_config(args, task, "causal", 64).num_virtual_tokens
               for name, task in sg.TASKS.items()}
    assert budgets == {"BoolQ": 1, "CB": 1, "COPA": 1, "MultiRC": 1, "RTE": 1, "WiC": 1, "WSC": 2}
    with pytest.raises(SystemExit, match="needs a causal or seq2seq LM; this model is a masked LM"):
        superglue.native_peft_config(args, sg.TASKS["RTE"], "masked", 64)
