"""Causal and seq2seq SuperGLUE scoring checked against direct computations with the bare model: COPA's choices by
their continuation log-probabilities, WSC's referent by greedy decoding (transformers' own ``generate``) and its
training loss by the referent's log-probability; peft's own prompt methods at their shifted positions."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import get_peft_model

from prompt_adapters.data import superglue as sg
from prompt_adapters.scoring import greedy_continuation
from prompt_adapters.testing import build_tiny_model, widen_weights

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import superglue
import superglue_scoring


def _args(method: str = "manual") -> Any:
    return superglue.parse_args(["--method", method])


def _scorer(family: str, task_name: str, method: str = "manual") -> tuple[Any, Any, Any, str]:
    """A tiny model with widened weights (answers that differ), the harness's scorer on it, and the bare model."""
    bare, tokenizer = build_tiny_model(family, seed=1)
    torch.manual_seed(0)
    widen_weights(bare)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm_kind = "seq2seq" if family == "t5" else "causal"
    task = sg.TASKS[task_name]
    model = get_peft_model(bare, superglue.adapter_config(_args(method), task, tokenizer, lm_kind))
    scorer = superglue.Scorer(task, model, tokenizer, 120, lm_kind)
    return scorer, model, tokenizer, lm_kind


def _examples(fixture_data: Path, task_name: str, split: str = "val") -> list[dict[str, Any]]:
    task = sg.TASKS[task_name]
    records = sg.load_task(fixture_data / "superglue", task, split).to_list()
    return superglue.make_examples(task, records, False, random.Random(0))


def _direct_log_prob(bare: torch.nn.Module, context: list[int], answer: list[int], lm_kind: str,
                     decoder_start: list[int] | None = None) -> float:
    """log p(answer | context) from one plain forward of the bare model, summed over the answer's tokens."""
    with torch.no_grad():
        if lm_kind == "causal":
            ids = torch.tensor([context + answer])
            log_probs = torch.log_softmax(bare(input_ids=ids).logits[0].float(), -1)
            return sum(float(log_probs[len(context) - 1 + j, token]) for j, token in enumerate(answer))
        decoder = torch.tensor([(decoder_start or []) + answer])
        log_probs = torch.log_softmax(bare(input_ids=torch.tensor([context]), decoder_input_ids=decoder).logits[0], -1)
        start = len(decoder_start or [])
        return sum(float(log_probs[start - 1 + j, token]) for j, token in enumerate(answer))


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_copa_choices_are_scored_by_their_continuation_log_probs(family: str, fixture_data: Path) -> None:
    scorer, model, tokenizer, lm_kind = _scorer(family, "COPA")
    bare = model.base_model.model
    examples = _examples(fixture_data, "COPA")
    with torch.no_grad():
        out = model(**scorer.batch(examples))
    predictions = scorer.predict(examples)
    for index, example in enumerate(examples):
        batch = scorer.batch([{**example, "choices": [example["choices"][0]], "label": 0}])
        start = int(batch["score_positions"][0, 0]) + 1
        if lm_kind == "causal":
            context, decoder_start = batch["input_ids"][0, :start].tolist(), None
        else:
            context, decoder_start = batch["input_ids"][0].tolist(), batch["decoder_input_ids"][0, :start].tolist()
        if lm_kind == "causal":  # the context is the causal pattern read left to right, ending before [Y]
            fields = {key: example[key] for key in ("choice1", "choice2", "premise", "connective")}
            text = sg.render_text(superglue.manual_template(sg.TASKS["COPA"], "causal"), fields, answer="")
            assert tokenizer.decode(context, skip_special_tokens=True).split() == text.split()
        direct = [_direct_log_prob(bare, context, tokenizer(" " + choice if family != "t5" else choice,
                                                            add_special_tokens=False)["input_ids"], lm_kind,
                                   decoder_start)
                  for choice in example["choices"]]
        torch.testing.assert_close(out.sequence_log_probs[index].tolist(), direct, atol=1e-4, rtol=1e-4)
        assert predictions[index] == max(range(2), key=direct.__getitem__)
    assert len(set(predictions)) == 2 or len(examples) < 2  # widened weights: both choices get picked somewhere


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_wsc_decodes_greedily_and_trains_on_the_referent_log_prob(family: str, fixture_data: Path) -> None:
    scorer, model, tokenizer, lm_kind = _scorer(family, "WSC")
    bare = model.base_model.model
    examples = _examples(fixture_data, "WSC")
    for example in examples:
        referent = scorer.collate.answer_tokens(example["Y"])
        batch = scorer.batch([example])
        start = int(batch["score_positions"][0, 0]) + 1
        steps = len(referent) + example["extra_masks"]
        with torch.no_grad():
            if lm_kind == "causal":
                context = batch["input_ids"][:1, :start]
                expected = bare.generate(context, attention_mask=torch.ones_like(context), max_new_tokens=steps,
                                         min_new_tokens=steps, do_sample=False, pad_token_id=tokenizer.pad_token_id)
                expected = expected[0, start:].tolist()
            else:
                decoder = batch["decoder_input_ids"][:1, :start]
                expected = bare.generate(batch["input_ids"][:1], decoder_input_ids=decoder, max_new_tokens=steps,
                                         min_new_tokens=steps, do_sample=False)[0, start:].tolist()
        assert scorer.decode_referent(example) == expected
        # training: the true referent, teacher-forced, with no extra slots; loss = -log p(referent | pattern)
        train = {**example, "extra_masks": 3}
        batch = scorer.batch([train])
        assert (batch["score_targets"][0] != -100).sum() == len(referent)
        with torch.no_grad():
            loss = float(model(**batch).loss)
        if lm_kind == "causal":
            direct = _direct_log_prob(bare, batch["input_ids"][0, :start].tolist(), referent, lm_kind)
        else:
            direct = _direct_log_prob(bare, batch["input_ids"][0].tolist(), referent, lm_kind,
                                      batch["decoder_input_ids"][0, :start].tolist())
        assert loss == pytest.approx(-direct, rel=1e-4)


@pytest.mark.parametrize("method", ["mixture", "deep"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_wsc_decoding_through_the_cache_matches_rereading_the_row(family: str, method: str,
                                                                 fixture_data: Path) -> None:
    """WSC decodes with the key/value cache (the row, soft rows and deep deltas included, read once): the same
    tokens and log-probability as re-reading the whole row at every step, for trained-looking adapters."""
    scorer, model, _, lm_kind = _scorer(family, "WSC", method)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    for example in _examples(fixture_data, "WSC"):
        batch = scorer.batch([example])
        start = int(batch["score_positions"][0, 0]) + 1
        steps = len(scorer.collate.answer_tokens(example["Y"])) + example["extra_masks"]
        if lm_kind == "causal":
            rows = (batch["input_ids"][:1, :start], steps)
        else:
            rows = (batch["input_ids"][:1], steps, batch["decoder_input_ids"][:1, :start])
        assert bool((rows[0] >= model.get_input_embeddings().num_embeddings).any())  # the row holds soft rows
        cached_tokens, cached_total = greedy_continuation(model, *rows)
        reread_tokens, reread_total = greedy_continuation(model, *rows, use_cache=False)
        assert cached_tokens == reread_tokens
        assert cached_total == pytest.approx(reread_total, abs=1e-4)
        assert scorer.decode_referent(example) == cached_tokens


def test_peft_prompt_tuning_reads_the_answer_after_its_virtual_tokens(fixture_data: Path) -> None:
    """peft's PROMPT_TUNING row scores COPA's choices at positions shifted by its virtual tokens: the same numbers as
    reading log p(choice | virtual tokens + pattern) off the peft model's own logits."""
    scorer, model, tokenizer, lm_kind = _scorer("gpt2", "COPA", "peft_prompt_tuning")
    config = superglue.native_peft_config(_args("peft_prompt_tuning"), sg.TASKS["COPA"], lm_kind, 32)
    peft_model = get_peft_model(model.unload(), config)
    scorer.model = superglue.PeftRows(peft_model, lm_kind)
    examples = _examples(fixture_data, "COPA")
    with torch.no_grad():
        out = scorer.model(**scorer.batch(examples))
    virtual = config.num_virtual_tokens
    assert virtual == 1  # COPA's P-tuning pattern has one prompt token
    for index, example in enumerate(examples):
        direct = []
        for choice in example["choices"]:
            batch = scorer.batch([{**example, "choices": [choice], "label": 0}])
            width = int(batch["attention_mask"][0].sum())
            ids = batch["input_ids"][:1, :width]
            answer = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            start = width - len(answer) + 1  # the row holds the context and the answer but its last token
            full = torch.cat([ids[:, :start], torch.tensor([answer])], dim=1)
            with torch.no_grad():
                log_probs = torch.log_softmax(peft_model(input_ids=full).logits[0].float(), -1)
            direct.append(sum(float(log_probs[virtual + start - 1 + j, t]) for j, t in enumerate(answer)))
        torch.testing.assert_close(out.sequence_log_probs[index].tolist(), direct, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("family", "task_name"), [("llama", "CB"), ("llama", "COPA"), ("t5", "COPA")])
def test_length_sorted_batches_predict_what_one_example_at_a_time_predicts(family: str, task_name: str,
                                                                         fixture_data: Path) -> None:
    """Scoring groups examples of similar length into batches; each prediction stays with its own example."""
    scorer, _, _, _ = _scorer(family, task_name)
    examples = _examples(fixture_data, task_name)
    examples = examples + examples[::-1][: len(examples) // 2]  # lengths out of order, repeats included
    alone = [scorer.predict([example], batch_size=1)[0] for example in examples]
    assert scorer.predict(examples, batch_size=3) == alone
    assert len(set(alone)) > 1  # a prediction put at another example's place would show
    order = sorted(range(len(examples)), key=lambda i: superglue_scoring.text_length(examples[i]))
    assert order != list(range(len(examples)))  # the batches really are reordered
