"""Per-row adapters (peft's ``adapter_names``): one batch mixes adapters with different templates and soft-row
counts, and every row gives what it gives alone with its adapter active; ``"__base__"`` rows give the bare model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from method_matrix import MIXING_METHODS
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from prompt_adapters import (
    METHODS,
    MixturePromptConfig,
    PromptCollator,
    PromptGenConfig,
)
from prompt_adapters.testing import build_tiny_model, save_tiny_model

#: adapter "a": two templates; adapter "b": one template with more soft tokens (different rows, different K)
DEFAULT_TEMPLATES = (["[X] was born in [Y] .", "[P*2] [X] is a native of [Y] ."], ["[P*3] [X] died in [Y] ."])
#: methods whose words are hard (P-tuning) need pseudo tokens in every template
TEMPLATES_FOR = {"ptuning": (["[P*2] [X] [P] born in [Y] .", "[P] [X] native [Y] ."], ["[P*6] [X] died in [Y] ."])}
TEMPLATES = {name: TEMPLATES_FOR.get(name, DEFAULT_TEMPLATES) for name in MIXING_METHODS}
CONFIGS = {method.name: method.config_cls for method in METHODS if method.name in MIXING_METHODS}
FAMILIES = ("bert", "gpt2", "t5")
CASES = [(method, family) for method in TEMPLATES for family in FAMILIES]
EXAMPLES = [
    {"X": "Dante", "Y": "Paris", "adapter": "a"},
    {"X": "Barack Obama", "Y": "London", "adapter": "b"},
    {"X": "Obama", "Y": "Rome", "adapter": "a"},
]
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(method: str, family: str) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """A tiny model with adapters "a" and "b" of ``method``, their weights moved off their initial values."""
    base, tokenizer = build_tiny_model(family)
    first, second = TEMPLATES[method]
    model = get_peft_model(base, CONFIGS[method](templates=first, tokenizer=tokenizer), adapter_name="a")
    model.add_adapter("b", CONFIGS[method](templates=second, tokenizer=tokenizer))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.base_model.state.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval(), tokenizer


def without_adapter_key(example: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in example.items() if key != "adapter"}


def alone(model: PeftModel, tokenizer: PreTrainedTokenizerBase, name: str, examples: list[dict]) -> Any:
    """The scoring output of ``examples`` run with adapter ``name`` active, in a batch of their own."""
    model.set_adapter(name)
    batch = PromptCollator(tokenizer, model, adapter_name=name)([without_adapter_key(e) for e in examples])
    with torch.no_grad():
        return model(**batch)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_scoring_rows_equal_each_adapter_alone(method: str, family: str) -> None:
    model, tokenizer = make_model(method, family)
    batch = PromptCollator(tokenizer, model)(EXAMPLES)
    assert batch["adapter_names"] == ["a", "a", "b", "a", "a"]  # K = 2 rows per example of "a", 1 of "b"
    with torch.no_grad():
        mixed = model(**batch)
    for index, example in enumerate(EXAMPLES):
        single = alone(model, tokenizer, example["adapter"], [example])
        torch.testing.assert_close(mixed.answer_log_probs[index], single.answer_log_probs[0], **TOLERANCE)
        templates = single.template_log_probs.shape[1]
        torch.testing.assert_close(mixed.template_log_probs[index, :templates], single.template_log_probs[0],
                                   **TOLERANCE)
        torch.testing.assert_close(mixed.mixture_log_weights[index, :templates], single.mixture_log_weights[0],
                                   **TOLERANCE)
        assert torch.isneginf(mixed.template_log_probs[index, templates:]).all()  # padding of the smaller K
    for name in ("a", "b"):
        own = [example for example in EXAMPLES if example["adapter"] == name]
        torch.testing.assert_close(mixed.adapter_losses[name], alone(model, tokenizer, name, own).loss, **TOLERANCE)
    torch.testing.assert_close(mixed.loss, mixed.adapter_losses["a"] + mixed.adapter_losses["b"])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_data_dependent_and_multiple_choice_rows_equal_each_adapter_alone(family: str) -> None:
    """Query rows of a data-dependent adapter (after every answer row) and C choices per example split per adapter."""
    base, tokenizer = build_tiny_model(family)
    first, second = TEMPLATES["mixture"]
    model = get_peft_model(base, MixturePromptConfig(templates=first, data_dependent=True, tokenizer=tokenizer),
                           adapter_name="a")
    model.add_adapter("b", MixturePromptConfig(templates=[*second, "[X] lived in [Y] ."], tokenizer=tokenizer))
    with torch.no_grad():
        for param in model.base_model.state.parameters():
            param.add_(torch.randn(param.shape) * 0.1)
    model.eval()
    examples = [{"X": "Dante", "choices": ["Paris", "London"], "label": 1, "adapter": "a"},
                {"X": "Obama", "choices": ["Rome", "London"], "label": 0, "adapter": "b"},
                {"X": "Barack Obama", "choices": ["Berlin", "Paris"], "label": 1, "adapter": "a"}]
    for answers, chosen in (("one", [{**e, "Y": e["choices"][e["label"]]} for e in examples]), ("many", examples)):
        batch = PromptCollator(tokenizer, model, answers=answers)(chosen)
        with torch.no_grad():
            mixed = model(**batch)
        field = "answer_log_probs" if answers == "one" else "choice_log_probs"
        for index, example in enumerate(chosen):
            model.set_adapter(example["adapter"])
            collate = PromptCollator(tokenizer, model, adapter_name=example["adapter"], answers=answers)
            with torch.no_grad():
                single = model(**collate([without_adapter_key(example)]))
            torch.testing.assert_close(mixed[field][index], single[field][0], **TOLERANCE)
            torch.testing.assert_close(mixed.mixture_log_weights[index, :2], single.mixture_log_weights[0],
                                       **TOLERANCE)
        model.set_adapter("a")


@pytest.mark.parametrize("method", list(TEMPLATES))
def test_mixed_loss_gives_each_adapter_its_own_gradient(method: str) -> None:
    """The mixed batch's loss is the sum of the adapters' losses: each adapter gets the gradient it gets alone."""
    model, tokenizer = make_model(method, "bert")  # eval mode: no dropout, so both runs see the same model
    model.base_model.set_requires_grad(["a", "b"], True)
    state = model.base_model.state
    model(**PromptCollator(tokenizer, model)(EXAMPLES)).loss.backward()
    mixed = {name: param.grad.clone() for name, param in state.named_parameters() if param.grad is not None}
    assert any(".a" in name for name in mixed) and any(".b" in name for name in mixed)
    state.zero_grad()
    for name in ("a", "b"):
        model.set_adapter(name)
        own = [without_adapter_key(e) for e in EXAMPLES if e["adapter"] == name]
        model(**PromptCollator(tokenizer, model, adapter_name=name)(own)).loss.backward()
    for name, grad in mixed.items():
        torch.testing.assert_close(grad, dict(state.named_parameters())[name].grad, **TOLERANCE)


def _plain(ids: torch.Tensor, vocab_size: int, replacement: int) -> torch.Tensor:
    """The same row with every prompt position replaced by a real token: an input of the bare model."""
    return torch.where(ids >= vocab_size, torch.full_like(ids, replacement), ids)


def _rows(model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> tuple[list[dict[str, torch.Tensor]], list[str]]:
    """One row per adapter ("a" with its second template, "b") and a "__base__" row of plain token ids."""
    collate = PromptCollator(tokenizer, model)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    rows = [dict(collate.inputs({"X": "Dante", "adapter": "a"}, template=1)),
            dict(collate.inputs({"X": "Barack Obama", "adapter": "b"}))]
    for row in rows:
        del row["adapter_names"]
    word = tokenizer.encode("Paris", add_special_tokens=False)[0]  # a plain word, neither pad nor eos
    base = {key: _plain(value, vocab_size, word) if "ids" in key else value
            for key, value in rows[1].items()}
    return [*rows, base], ["a", "b", "__base__"]


def _stack(rows: list[dict[str, torch.Tensor]], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """Pad single rows into one batch (ids with ``pad_id``, masks with 0) on the left or the right."""
    batch = {}
    for key in rows[0]:
        width = max(row[key].shape[1] for row in rows)
        value = 0 if "mask" in key else pad_id
        padded = []
        for row in rows:
            fill = torch.full((1, width - row[key].shape[1]), value, dtype=row[key].dtype)
            padded.append(torch.cat([fill, row[key]] if left else [row[key], fill], dim=1))
        batch[key] = torch.cat(padded)
    return batch


def _single(model: PeftModel, name: str, run: Any) -> Any:
    if name == "__base__":
        with model.disable_adapter():
            return run()
    model.set_adapter(name)
    return run()


@pytest.mark.parametrize(("method", "family"), CASES)
def test_forward_rows_equal_each_adapter_alone_and_base_rows_the_base_model(method: str, family: str) -> None:
    model, tokenizer = make_model(method, family)
    rows, names = _rows(model, tokenizer)
    batch = _stack(rows, tokenizer.pad_token_id, left=False)
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
        for index, (row, name) in enumerate(zip(rows, names, strict=True)):
            single = _single(model, name, lambda row=row: model(**row).logits)
            torch.testing.assert_close(mixed[index, : single.shape[1]], single[0], **TOLERANCE)
    assert not torch.allclose(mixed[0], mixed[1][: mixed.shape[1]], atol=1e-3)


@pytest.mark.parametrize(("method", "family"), [(m, f) for m in TEMPLATES for f in ("gpt2", "t5")])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_rows_equal_each_adapter_alone(method: str, family: str, use_cache: bool) -> None:
    model, tokenizer = make_model(method, family)
    tokenizer.padding_side = "left"
    rows, names = _rows(model, tokenizer)
    if family == "t5":  # one decoder prompt length (the sentinel) for every row: no decoder padding needed
        assert len({row["decoder_input_ids"].shape[1] for row in rows}) == 1

    def generate(inputs: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                  output_scores=True, return_dict_in_generate=True, use_cache=use_cache, **kwargs)

    mixed = generate(_stack(rows, tokenizer.pad_token_id, left=True), adapter_names=names)
    for index, (row, name) in enumerate(zip(rows, names, strict=True)):
        single = _single(model, name, lambda row=row: generate(row))
        assert torch.equal(mixed.sequences[index, -4:], single.sequences[0, -4:]), name
        for step, scores in enumerate(single.scores):
            torch.testing.assert_close(mixed.scores[step][index], scores[0], rtol=1e-4, atol=1e-4)


def test_inputs_embeds_with_prompt_ids_mix_adapters_too() -> None:
    model, tokenizer = make_model("deep", "gpt2")
    rows, names = _rows(model, tokenizer)
    batch = _stack(rows, tokenizer.pad_token_id, left=False)
    ids = batch["input_ids"]
    vocab_size = model.get_input_embeddings().weight.shape[0]
    with torch.no_grad():
        expected = model(**batch, adapter_names=names).logits
        embeds = model.get_input_embeddings()(torch.where(ids >= vocab_size, 0, ids))
        got = model(inputs_embeds=embeds, prompt_ids=ids, attention_mask=batch["attention_mask"],
                    adapter_names=names).logits
    torch.testing.assert_close(got, expected, **TOLERANCE)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_disabled_adapters_give_each_row_its_own_template_words(family: str) -> None:
    """Under disable_adapter() a row's prompt positions hold its own adapter's words (the hard-prompt baseline)."""
    model, tokenizer = make_model("mixture", family)
    rows, names = _rows(model, tokenizer)
    batch = _stack(rows, tokenizer.pad_token_id, left=False)
    with torch.no_grad(), model.disable_adapter():
        mixed = model(**batch, adapter_names=names).logits
    for index, (row, name) in enumerate(zip(rows, names, strict=True)):
        if name != "__base__":
            model.set_adapter(name)
        with torch.no_grad(), model.disable_adapter():
            single = model(**row).logits
        torch.testing.assert_close(mixed[index, : single.shape[1]], single[0], **TOLERANCE)


def test_beam_search_repeats_each_rows_adapter() -> None:
    model, tokenizer = make_model("deep", "gpt2")
    tokenizer.padding_side = "left"
    rows, names = _rows(model, tokenizer)
    settings = {"max_new_tokens": 3, "num_beams": 2, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        mixed = model.generate(**_stack(rows, tokenizer.pad_token_id, left=True), adapter_names=names, **settings)
        for index, (row, name) in enumerate(zip(rows, names, strict=True)):
            single = _single(model, name, lambda row=row: model.generate(**row, **settings))
            assert torch.equal(mixed[index, -3:], single[0, -3:]), name


# ----------------------------------------------------------------------------------------------------- bad input


def test_unknown_adapter_name_is_named_with_the_available_ones() -> None:
    model, tokenizer = make_model("mixture", "bert")
    rows, _ = _rows(model, tokenizer)
    batch = _stack(rows, tokenizer.pad_token_id, left=False)
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['typo'\]; available: \['a', 'b'\]"):
        model(**batch, adapter_names=["a", "typo", "__base__"])
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['typo'\]"):
        model.generate(**batch, adapter_names=["a", "typo", "__base__"], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"example names adapter 'typo'.*available: \['a', 'b'\]"):
        PromptCollator(tokenizer, model)([{"X": "Dante", "Y": "Paris", "adapter": "typo"}])


def test_adapter_names_of_the_wrong_length_is_refused() -> None:
    model, tokenizer = make_model("mixture", "bert")
    rows, _ = _rows(model, tokenizer)
    batch = _stack(rows, tokenizer.pad_token_id, left=False)
    with pytest.raises(ValueError, match="adapter_names has 2 names but the input has 3 rows"):
        model(**batch, adapter_names=["a", "b"])
    scoring = PromptCollator(tokenizer, model)(EXAMPLES)
    with pytest.raises(ValueError, match="adapter_names has 4 names but the input has 5 rows"):
        model(**{**scoring, "adapter_names": scoring["adapter_names"][:4]})
    with pytest.raises(TypeError, match="one per input row"):
        model(**batch, adapter_names="a")


def test_rows_must_match_their_adapter() -> None:
    """A row built by adapter "b" (6 soft rows) named "a" (4) reads soft rows "a" lacks; a base row has none."""
    model, tokenizer = make_model("ptuning", "bert")
    rows, _ = _rows(model, tokenizer)
    batch = _stack(rows, tokenizer.pad_token_id, left=False)
    with pytest.raises(IndexError, match="row 1 has soft row 5 but its adapter 'a' has only 4 soft rows"):
        model(**batch, adapter_names=["a", "a", "__base__"])
    with pytest.raises(ValueError, match=r"row 0 is '__base__' .* but has prompt positions"):
        model(**batch, adapter_names=["__base__", "b", "__base__"])


def test_promptgen_refuses_adapter_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    generator = str(save_tiny_model("bart", tmp_path / "generator"))
    base, tokenizer = build_tiny_model("bert")
    config: PeftConfig = PromptGenConfig(generator_name_or_path=generator, num_before=2, num_after=1,
                                         tokenizer=tokenizer)
    model = get_peft_model(base, config)
    ids = torch.tensor([[tokenizer.cls_token_id, tokenizer.sep_token_id]])
    with pytest.raises(ValueError, match="adapter_names is not supported: its prompt table is generated"):
        model(input_ids=ids, adapter_names=["default"])
