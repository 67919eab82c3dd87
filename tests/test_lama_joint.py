"""benchmarks/lama.py --joint: every relation's adapter trained in one batched loop gives the records of a run of one
relation at a time, resumes after a kill, and does not depend on the number of processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lama_runs import finish, kill_once_written, launch, records
from transformers import AutoConfig

from prompt_adapters.testing import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lama  # noqa: E402

RELATIONS = "P19,P20,P1376"


@pytest.fixture(scope="module")
def tiny_bert_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """P-tuning's protocol runs the frozen LM with dropout on; without dropout probabilities a joint run must match
    separate runs to float tolerance (with them, the masks are drawn over another batch: see docs/lama-harness.md)."""
    directory = save_tiny_model("bert", tmp_path_factory.mktemp("models") / "bert")
    config = AutoConfig.from_pretrained(directory)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(directory)
    return directory


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data-dir", str(data / "lama"), "--relations", RELATIONS, "--max-train", "12",
            "--max-dev", "6", "--max-test", "20", "--epochs", "3", "--batch-size", "4", "--output", str(out), *extra]


def _assert_samerecords(joint: dict[str, dict], separate: dict[str, dict]) -> None:
    assert joint.keys() == separate.keys() and len(joint) == len(RELATIONS.split(","))
    for name, alone in separate.items():
        together = joint[name]
        for key in ("ranks", "none_ranks", "init_ranks", "manual_ranks", "templates", "facts", "dropped"):
            assert together[key] == alone[key], (name, key)
        assert [h["dev_p1"] for h in together["history"]] == [h["dev_p1"] for h in alone["history"]], name
        for mine, theirs in zip(together["history"], alone["history"], strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4), name
        assert together["joint"]["relations"] == 3 and "joint" not in alone


@pytest.mark.parametrize("method", [["--method", "mixture", "--lr", "0.5"],
                                    ["--method", "deep", "--lr", "0.5"],
                                    ["--method", "ptuning", "--lr", "0.05"]], ids=["mixture", "deep", "ptuning"])
def test_joint_run_equals_one_relation_at_a_time(method: list[str], tiny_bert_without_dropout: Path,
                                                 fixture_data: Path, tmp_path: Path) -> None:
    separate = lama.main(_args(tiny_bert_without_dropout, fixture_data, tmp_path / "separate", *method))
    joint = lama.main(_args(tiny_bert_without_dropout, fixture_data, tmp_path / "joint", *method, "--joint"))
    _assert_samerecords(records(tmp_path / "joint"), records(tmp_path / "separate"))
    assert joint["headline"] == separate["headline"]
    for record in records(tmp_path / "joint").values():  # every adapter trained: its loss moved epoch to epoch
        losses = [h["train_loss"] for h in record["history"]]
        assert len(losses) == 3 and losses[-1] < losses[0], record["relation"]
    assert joint["train_seconds"]["mean"] == pytest.approx(
        next(iter(records(tmp_path / "joint").values()))["joint"]["train_seconds"], abs=0.01)


@pytest.mark.parametrize("extra, reason", [
    (["--method", "manual"], "trains nothing"),
    (["--method", "promptgen"], "already trains one adapter on every relation"),
    (["--method", "peft_prompt_tuning"], "cannot mix adapters in one batch"),
    (["--method", "mixture", "--em"], "EM schedule"),
    (["--method", "mixture", "--data-parallel"], "splits the relations"),
])
def test_joint_refuses_what_it_cannot_honour(extra: list[str], reason: str, tiny_bert_without_dropout: Path,
                                             fixture_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"--joint cannot be used here: .*{reason}"):
        lama.main(_args(tiny_bert_without_dropout, fixture_data, tmp_path, *extra, "--joint"))
    assert not (tmp_path / "relations").exists()


def test_killed_joint_run_resumes_to_the_uninterrupted_result(tiny_bert_without_dropout: Path, fixture_data: Path,
                                                               tmp_path: Path) -> None:
    args = ["--method", "deep", "--lr", "0.05", "--epochs", "6", "--patience", "10", "--joint"]
    finish(launch(_args(tiny_bert_without_dropout, fixture_data, tmp_path / "whole", *args)))
    out = tmp_path / "cut"
    kill_once_written(launch(_args(tiny_bert_without_dropout, fixture_data, out, *args)),
                      out / "checkpoints" / "P20-seed42" / "LATEST")
    assert not (out / "relations").exists() or not list((out / "relations").glob("*.json"))
    finish(launch(_args(tiny_bert_without_dropout, fixture_data, out, *args, "--resume")))
    cut, whole = records(out), records(tmp_path / "whole")
    assert cut.keys() == whole.keys()
    assert list((out / "checkpoints").iterdir()) == []  # each adapter's folder removed with its job finished
    for name in whole:
        assert cut[name]["ranks"] == whole[name]["ranks"], name
        assert [h["dev_p1"] for h in cut[name]["history"]] == [h["dev_p1"] for h in whole[name]["history"]], name


def test_joint_run_does_not_depend_on_the_number_of_processes(tiny_bert_without_dropout: Path, fixture_data: Path,
                                                               tmp_path: Path) -> None:
    args = ["--method", "mixture", "--joint"]
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        finish(launch(_args(tiny_bert_without_dropout, fixture_data, out, *args), processes))
        runs[processes] = records(out)
    assert {tuple(r["process"]) for r in runs[2].values()} == {(0, 2), (1, 2)}
    assert {r["joint"]["relations"] for r in runs[2].values()} == {1, 2}  # P19, P1376 on one process; P20 alone
    for name, record in runs[1].items():
        other = runs[2][name]
        assert record["ranks"] == other["ranks"], name
        assert [h["dev_p1"] for h in record["history"]] == [h["dev_p1"] for h in other["history"]], name
