"""benchmarks/lama.py on a causal LM: peft's own PROMPT_TUNING / P_TUNING rows, the manual row scored once,
--max-dev and --max-prompts (tiny GPT-2 over the LAMA excerpts in tests/fixtures)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from prompt_adapters.testing import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lama  # noqa: E402
import peft_baselines  # noqa: E402

TEMPLATE = "[X] was born in [Y] ."


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("gpt2", tmp_path_factory.mktemp("models") / "gpt2")


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data-dir", str(data / "lama"), "--relations", "P19", "--max-train", "8",
            "--max-dev", "4", "--max-test", "12", "--epochs", "2", "--batch-size", "4", "--output", str(out), *extra]


def _record(out: Path, seed: int) -> dict:
    return json.loads((out / "relations" / f"P19-seed{seed}.json").read_text())


def test_prompt_tuning_scorer_reads_the_answer_after_the_virtual_tokens(tiny_gpt2: Path) -> None:
    """With TEXT init, peft's prompt equals the template words' embeddings: the scorer's log-probs must equal the
    bare model's on (word ids + manual prompt ids) at the last token, for rows of different lengths."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    config = peft_baselines.prompt_tuning_config(TEMPLATE, tokenizer, str(tiny_gpt2))
    words = tokenizer("was born in .", add_special_tokens=False)["input_ids"]
    assert config.num_virtual_tokens == len(words) and config.prompt_tuning_init_text == "was born in ."
    candidates = torch.tensor(sorted(set(range(50, 250)) | {tokenizer(" Paris")["input_ids"][0]}))
    model = get_peft_model(base, config)
    scorer, collate = peft_baselines.native_adapter(model, tokenizer, TEMPLATE, candidates)
    facts = [{"sub": "Dante", "obj": "Paris"}, {"sub": "Barack Obama the Second", "obj": "Paris"}]
    batch = collate(facts)
    with torch.no_grad():
        out = scorer(**batch)
        for row, fact in enumerate(facts):
            ids = tokenizer(f"{fact['sub']} was born in", add_special_tokens=False)["input_ids"]
            logits = base(input_ids=torch.tensor([words + ids])).logits[0, -1, candidates]
            torch.testing.assert_close(out.answer_log_probs[row], torch.log_softmax(logits, -1), atol=1e-5, rtol=0)
    gold = (candidates == tokenizer(" Paris")["input_ids"][0]).nonzero()[0, 0]
    torch.testing.assert_close(out.loss, -out.answer_log_probs[:, gold].mean())


@pytest.mark.parametrize("method", ["peft_prompt_tuning", "peft_p_tuning"])
def test_peft_rows_train_on_the_same_facts_and_report(method: str, tiny_gpt2: Path, fixture_data: Path,
                                                      tmp_path: Path) -> None:
    summary = lama.main(_args(tiny_gpt2, fixture_data, tmp_path, "--method", method, "--seed", "1"))
    record = _record(tmp_path, 1)
    assert record["templates"] == [TEMPLATE] and record["facts"] == {"train": 8, "dev": 4, "test": 12}
    assert [h["epoch"] for h in record["history"]] == [1, 2] and record["train_seconds"] >= 0
    assert len(record["ranks"]) == len(record["none_ranks"]) == len(record["manual_ranks"]) == 12
    assert f"| {method} (peft) |" in (tmp_path / "results.md").read_text()
    assert summary["train_seconds"]["mean"] == pytest.approx(record["train_seconds"], abs=1e-3)
    training = summary["protocol"]["training"]
    assert training["epochs"] == 2 and training["base_weight_decay"] == training["weight_decay"]


def test_manual_method_scores_the_manual_row_once(tiny_gpt2: Path, fixture_data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def separate_evaluation(*args: object) -> None:
        raise AssertionError("the manual row was scored a second time")

    monkeypatch.setattr(lama.Probe, "evaluate", separate_evaluation)
    lama.main(_args(tiny_gpt2, fixture_data, tmp_path, "--method", "manual"))
    record = _record(tmp_path, 42)
    assert record["manual_ranks"] == record["init_ranks"] == record["ranks"] and record["history"] == []
    dropped = json.loads((tmp_path / "results.json").read_text())["dropped_facts"]["dev"]
    others = sum(v for k, v in dropped.items() if k not in ("total", "over_limit"))
    assert dropped["over_limit"] == dropped["total"] - others - 4


def test_max_prompts_keeps_the_prompts_a_causal_lm_can_read(tiny_gpt2: Path, fixture_data: Path,
                                                            tmp_path: Path) -> None:
    mined = [json.loads(line)["template"] for line in
             (fixture_data / "lama" / "prompts" / "lpaqa_mined" / "P19.jsonl").read_text().splitlines()]
    readable = [t for t in mined if t.index("[X]") < t.index("[Y]")]
    lama.main(_args(tiny_gpt2, fixture_data, tmp_path, "--method", "manual", "--init", "lpaqa_mined",
                    "--max-prompts", "2"))
    record = _record(tmp_path, 42)
    assert record["templates"] == readable[:2] and record["prompts_left_out"] == len(mined) - 2


def test_prompts_that_put_the_subject_after_the_answer_are_left_out_for_a_causal_lm(
        tiny_gpt2: Path, fixture_data: Path, tmp_path: Path) -> None:
    """A causal LM reads only the text before [Y]: "The capital of [Y] is [X] ." never shows it the subject."""
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "lama", data / "lama")
    mined = data / "lama" / "prompts" / "lpaqa_mined" / "P19.jsonl"
    mined.write_text('{"template": "The birthplace of [Y] is [X] ."}\n{"template": "[X] was born in [Y] ."}\n'
                     '{"template": "[Y] is where [X] was born ."}\n{"template": "[X] is from [Y] ."}\n')
    lama.main(_args(tiny_gpt2, data, tmp_path / "out", "--method", "manual", "--init", "lpaqa_mined"))
    record = _record(tmp_path / "out", 42)
    assert record["templates"] == ["[X] was born in [Y] .", "[X] is from [Y] ."] and record["prompts_left_out"] == 2
    assert not lama.subject_before_answer("[Y] [X]") and not lama.subject_before_answer("no subject [Y]")


def test_peft_rows_refuse_a_masked_lm(fixture_data: Path, tmp_path: Path) -> None:
    bert = save_tiny_model("bert", tmp_path / "bert")
    with pytest.raises(SystemExit, match="needs a causal LM"):
        lama.main(_args(bert, fixture_data, tmp_path / "out", "--method", "peft_p_tuning"))


def test_prompts_a_causal_lm_cannot_read_stop_the_run_before_training(tiny_gpt2: Path, fixture_data: Path,
                                                                      tmp_path: Path) -> None:
    """Every mined prompt of a relation starts with [Y] (as for P1412): the run stops at once, naming the relation."""
    data = tmp_path / "data"
    shutil.copytree(fixture_data / "lama", data / "lama")
    mined = data / "lama" / "prompts" / "lpaqa_mined" / "P19.jsonl"
    mined.write_text('{"template": "[Y] native [X] ."}\n{"template": "[Y] mayor [X] ."}\n')
    with pytest.raises(SystemExit, match="none of the 2 'lpaqa_mined' prompts of P19 can be read by a causal LM"):
        lama.main(_args(tiny_gpt2, data, tmp_path / "out", "--method", "mixture", "--init", "lpaqa_mined"))
    assert not (tmp_path / "out" / "relations").exists()


def test_prefix_form_reads_what_peft_prompt_tuning_reads_before_training(tiny_gpt2: Path, fixture_data: Path,
                                                                         tmp_path: Path) -> None:
    """--prompt-form prefix keeps the manual words as real tokens and puts a soft copy of them in front: the input
    peft's PROMPT_TUNING (text init) reads. Same input, same loss, same loop: it must rank every test fact as peft
    does before training, follow the same training history and end with the same ranks."""
    assert lama.soft_prefix_template(TEMPLATE) == "[soft: was born in .][X] was born in [Y] ."
    lama.main(_args(tiny_gpt2, fixture_data, tmp_path / "ours", "--method", "mixture", "--prompt-form", "prefix",
                    "--seed", "1"))
    lama.main(_args(tiny_gpt2, fixture_data, tmp_path / "peft", "--method", "peft_prompt_tuning", "--seed", "1"))
    ours, theirs = _record(tmp_path / "ours", 1), _record(tmp_path / "peft", 1)
    assert ours["init_ranks"] == theirs["init_ranks"]
    assert ours["history"] == theirs["history"] and ours["ranks"] == theirs["ranks"]
    assert ours["init_ranks"] != ours["manual_ranks"]  # the copy in front changes what the LM reads
    protocol = json.loads((tmp_path / "ours" / "results.json").read_text())["protocol"]
    assert protocol["prompt_form"] == "prefix"


@pytest.mark.parametrize("method", ["ptuning", "deep"])
def test_prefix_form_trains_the_other_methods(method: str, tiny_gpt2: Path, fixture_data: Path,
                                              tmp_path: Path) -> None:
    lama.main(_args(tiny_gpt2, fixture_data, tmp_path, "--method", method, "--prompt-form", "prefix", "--seed", "1"))
    record = _record(tmp_path, 1)
    assert [h["epoch"] for h in record["history"]] == [1, 2] and len(record["ranks"]) == 12


def test_prefix_form_is_refused_where_it_does_not_apply(tiny_gpt2: Path, fixture_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--prompt-form prefix applies to --method mixture, deep, ptuning"):
        lama.main(_args(tiny_gpt2, fixture_data, tmp_path, "--method", "peft_prompt_tuning", "--prompt-form",
                        "prefix"))
