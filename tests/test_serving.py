"""Serving through input embeddings: ``prompt_embeds`` fed to the bare base model gives the adapter model's logits
and greedy tokens, for every method whose effect is all at the input; the others are refused with the reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from prompt_adapters import (
    DeepPerturbConfig,
    MixturePromptConfig,
    PromptCollator,
    PromptGenCollator,
    PromptGenConfig,
    PTuningEncoderConfig,
    prompt_embeds,
)
from prompt_adapters.serving import input_embeds
from prompt_adapters.testing import build_tiny_model, perturb_trainable, save_tiny_model, widen_weights

SUBJECTS = ["Dante", "Barack Obama Senior"]
PROMPTGEN_EXAMPLES = [
    {"X": "Dante", "template": "[X] was born in [Y] ."},
    {"X": "Barack Obama Senior", "template": "[X] died in [Y] ."},
]
TEMPLATES = ["[P*2] [X] was born in [Y]", "[X] [P*3] lived in [Y]"]


@pytest.fixture(scope="module")
def bart_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("bart", tmp_path_factory.mktemp("generator") / "bart", seed=1)


def _adapted(family: str, method: str, generator: Path | None = None) -> tuple[PeftModel, nn.Module, Any, Any]:
    """A tiny model with a perturbed (trained-looking) adapter of ``method``, an untouched copy of the base model,
    the tokenizer, and the collator that builds the adapter's inputs."""
    base, tok = build_tiny_model(family)
    widen_weights(base)  # answers that depend on the prompt
    bare = copy.deepcopy(base)
    if method == "mixture":
        config: Any = MixturePromptConfig(templates=TEMPLATES, tokenizer=tok)
    elif method == "ptuning":
        config = PTuningEncoderConfig(templates=TEMPLATES, tokenizer=tok, encoder="mlp")
    else:
        config = PromptGenConfig(generator_name_or_path=str(generator), tokenizer=tok, num_before=4, num_after=0,
                                 stopping="mask")
    model = get_peft_model(base, config)
    perturb_trainable(model, 0.5)
    collate = PromptGenCollator(tok, model) if method == "promptgen" else PromptCollator(tok, model)
    return model.eval(), bare.eval(), tok, collate


@pytest.mark.parametrize(
    ("family", "method", "template"),
    [("llama", "mixture", 0), ("gpt2", "mixture", 1), ("llama", "ptuning", 1), ("llama", "promptgen", 0)],
)
def test_served_embeddings_give_the_adapter_models_logits_and_greedy_tokens(
    family: str, method: str, template: int, bart_generator: Path
) -> None:
    model, bare, tok, collate = _adapted(family, method, bart_generator)
    examples = PROMPTGEN_EXAMPLES if method == "promptgen" else SUBJECTS
    served = prompt_embeds(model, collate, examples, template=template)
    assert len(served) == len(examples)
    hidden = bare.get_input_embeddings().weight.shape[1]
    for example, embeds in zip(examples, served, strict=True):
        inputs = collate.inputs([example], template=template)
        assert embeds.shape[1] == hidden and embeds.dtype == bare.get_input_embeddings().weight.dtype
        with torch.no_grad():
            adapted = model(**inputs).logits[0]
            served_logits = bare(inputs_embeds=embeds[None]).logits[0]
            with model.disable_adapter():  # the template's own words at the prompt positions
                plain = model(**inputs).logits[0]
        assert served_logits.shape == adapted.shape  # PromptGen's stopped segments are dropped in both
        torch.testing.assert_close(served_logits, adapted, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain[-1], adapted[-1], atol=1e-3)  # the adapter changed the answer scores

        generated = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        mask = torch.ones(1, embeds.shape[0], dtype=torch.long)
        from_embeds = bare.generate(inputs_embeds=embeds[None], attention_mask=mask, max_new_tokens=6,
                                    do_sample=False, pad_token_id=tok.pad_token_id)
        assert from_embeds.tolist() == generated[:, inputs["input_ids"].shape[1]:].tolist()


def test_padding_is_removed_whatever_the_padding_side() -> None:
    model, _, tok, collate = _adapted("llama", "mixture")
    one_by_one = [prompt_embeds(model, collate, subject)[0] for subject in SUBJECTS]
    for side in ("left", "right"):
        tok.padding_side = side
        batched = prompt_embeds(model, collate, SUBJECTS)
        assert [e.shape[0] for e in batched] == [e.shape[0] for e in one_by_one]
        assert batched[0].shape[0] < batched[1].shape[0]
        for together, alone in zip(batched, one_by_one, strict=True):
            torch.testing.assert_close(together, alone)


def test_examples_naming_their_adapter_get_that_adapters_prompt() -> None:
    """Dict examples with an "adapter" key (peft's per-row adapters) are rendered and embedded with their own
    adapter, as if each adapter were active alone."""
    model, _, tok, collate = _adapted("llama", "mixture")
    model.add_adapter("other", MixturePromptConfig(templates=["[X] [P*4] lived in [Y]"], tokenizer=tok))
    perturb_trainable(model, 0.5)
    mixed = prompt_embeds(model, collate, [{"X": "Dante", "adapter": "other"}, {"X": "Dante", "adapter": "default"}])
    alone = {}
    for name in ("other", "default"):
        model.set_adapter(name)
        alone[name] = prompt_embeds(model, PromptCollator(tok, model), "Dante")[0]
    model.set_adapter("default")
    torch.testing.assert_close(mixed[0], alone["other"])
    torch.testing.assert_close(mixed[1], alone["default"])
    assert mixed[0].shape != mixed[1].shape


def test_masked_lm_embeddings_give_the_adapter_models_logits() -> None:
    model, bare, _, collate = _adapted("bert", "mixture")
    embeds = prompt_embeds(model, collate, SUBJECTS[0])[0]
    with torch.no_grad():
        adapted = model(**collate.inputs(SUBJECTS[0])).logits[0]
        served = bare(inputs_embeds=embeds[None]).logits[0]
    torch.testing.assert_close(served, adapted, rtol=1e-5, atol=1e-5)


def test_ptuning_serves_the_same_embeddings_as_its_static_export(tmp_path: Path) -> None:
    model, bare, tok, collate = _adapted("llama", "ptuning")
    from_encoder = prompt_embeds(model, collate, SUBJECTS, template=1)
    static = PeftModel.from_pretrained(bare, model.base_model.export_static(tmp_path / "static"))
    from_table = prompt_embeds(static, PromptCollator(tok, static), SUBJECTS, template=1)
    for encoder_rows, table_rows in zip(from_encoder, from_table, strict=True):
        torch.testing.assert_close(encoder_rows, table_rows)


def test_deep_perturbation_is_refused_with_the_reason() -> None:
    base, tok = build_tiny_model("llama")
    model = get_peft_model(base, DeepPerturbConfig(templates=TEMPLATES[:1], tokenizer=tok))
    with pytest.raises(ValueError, match="deltas to the hidden states after every transformer block"):
        prompt_embeds(model, PromptCollator(tok, model), SUBJECTS)


def test_seq2seq_adapters_and_trained_base_modules_are_refused() -> None:
    base, tok = build_tiny_model("bart")
    model = get_peft_model(base, MixturePromptConfig(templates=["[X] was born in [Y] ."], tokenizer=tok))
    with pytest.raises(ValueError, match=r"seq2seq LM; input embeddings are exported for \('causal', 'masked'\)"):
        prompt_embeds(model, PromptCollator(tok, model), SUBJECTS)

    base, tok = build_tiny_model("gpt2")
    config = MixturePromptConfig(templates=TEMPLATES[:1], tokenizer=tok, modules_to_save=["lm_head"])
    model = get_peft_model(base, config)
    with pytest.raises(ValueError, match=r"also trains base-model modules \['lm_head'\]"):
        prompt_embeds(model, PromptCollator(tok, model), SUBJECTS)


def test_a_collator_of_another_model_and_malformed_inputs_are_refused() -> None:
    model = _adapted("llama", "mixture")[0]
    other_collate = _adapted("llama", "mixture")[3]
    with pytest.raises(ValueError, match="collator was made for another model"):
        prompt_embeds(model, other_collate, SUBJECTS)
    with pytest.raises(ValueError, match=r"input_ids as a \(rows, length\) tensor of token ids, got shape \(5,\)"):
        input_embeds(model, {"input_ids": torch.arange(5)})
    with pytest.raises(ValueError, match="got list"):
        input_embeds(model, {"input_ids": [[1, 2]]})
