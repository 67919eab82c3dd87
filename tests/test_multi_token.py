"""Multi-token answers, multiple choice and most-confident-first decoding on masked, causal and seq2seq LMs."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from prompt_adapters import MixturePromptConfig, PromptCollator
from prompt_adapters.scoring import fill_most_confident_first
from prompt_adapters.testing import build_tiny_model

TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y] ."]


def _setup(family: str, **collator_kwargs):  # type: ignore[no-untyped-def]
    model, tok = build_tiny_model(family)
    base, _ = build_tiny_model(family)
    peft_model = get_peft_model(model, MixturePromptConfig(templates=TEMPLATES, tokenizer=tok))
    return peft_model, base, tok, PromptCollator(tok, peft_model, answers="many", **collator_kwargs)


def _hard(batch: dict[str, torch.Tensor], peft_model, vocab: int) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    state = peft_model.base_model.state
    out = {}
    for key in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"):
        if key in batch:
            value = batch[key]
            if "ids" in key:
                value = torch.where(value >= vocab, state.hard_ids((value - vocab).clamp(min=0)), value)
            out[key] = value
    return out


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama", "bart", "t5"])
def test_sequence_log_prob_equals_base_model(family: str) -> None:
    peft_model, base, _tok, collate = _setup(family)
    batch = collate([{"X": "Dante", "Y": "New York"}, {"X": "Obama", "Y": "Paris", "answer_length": 2}])
    out = peft_model(**batch)
    with torch.no_grad():
        logits = base(**_hard(batch, peft_model, collate.layout.vocab_size)).logits.float()
    log_probs = torch.log_softmax(logits, -1)
    targets, positions = batch["score_targets"], batch["score_positions"]
    rows = torch.arange(targets.shape[0]).unsqueeze(1)
    picked = log_probs[rows, positions, targets.clamp(min=0)].masked_fill(targets == -100, 0).sum(1)
    expected = torch.logsumexp(torch.log(torch.tensor(0.5)) + picked.view(2, 2), dim=1)
    torch.testing.assert_close(out.sequence_log_probs[:, 0], expected, rtol=1e-4, atol=1e-4)
    assert (targets[2:, 1] == -100).all()  # "Paris" is one token in a 2-token slot: padded with IGNORE
    out.loss.backward()


def test_multiple_choice_loss_and_wsc_style_padding() -> None:
    peft_model, _, tok, collate = _setup("bert")
    example = {"X": "Dante", "choices": ["Paris", "New York"], "label": 1}
    batch = collate([example, {**example, "label": 0}])
    assert batch["input_ids"].shape[0] == 2 * 2 * 2 and int(batch["num_choices"]) == 2
    out = peft_model(**batch)
    assert out.choice_log_probs.shape == (2, 2)
    torch.testing.assert_close(out.choice_log_probs.exp().sum(1), torch.ones(2))
    expected = -(out.choice_log_probs[0, 1] + out.choice_log_probs[1, 0]) / 2
    torch.testing.assert_close(out.loss, expected)
    padded = PromptCollator(tok, peft_model, answers="many", pad_answer="pad")([{"X": "Dante", "Y": "Paris",
                                                                              "answer_length": 3}])
    assert padded["score_targets"][0, 1:].tolist() == [tok.pad_token_id] * 2
    with pytest.raises(ValueError, match="same number of choices"):
        collate([example, {"X": "Obama", "choices": ["Paris", "Rome", "Oslo"], "label": 0}])
    with pytest.raises(ValueError, match="slot holds 1"):
        collate([{"X": "Dante", "Y": "New York", "answer_length": 1}])


def test_most_confident_first_filling() -> None:
    peft_model, _base, _tok, collate = _setup("bert")
    batch = collate([{"X": "Dante", "Y": "New York"}])
    row = batch["input_ids"][:1]
    positions = batch["score_positions"][0].tolist()
    targets = batch["score_targets"][0].tolist()
    filled, guided = fill_most_confident_first(peft_model, row, positions, targets)
    assert filled == targets and guided < 0
    greedy, score = fill_most_confident_first(peft_model, row, positions)
    assert len(greedy) == len(positions) and score >= guided - 1e-6
    with torch.no_grad():
        logits = peft_model(input_ids=row).logits[0]
    first = torch.log_softmax(logits[positions].float(), -1)
    assert greedy[int(first.max(-1).values.argmax())] == int(first.max(-1).indices[first.max(-1).values.argmax()])
