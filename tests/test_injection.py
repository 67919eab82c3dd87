"""Injection and scoring on every model family: alignment, exactness against the base model, generate, dtypes."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptCollator
from prompt_adapters.testing import build_tiny_model

FAMILIES = ["bert", "roberta", "distilbert", "albert", "gpt2", "llama", "bart", "t5"]
DEEP_FAMILIES = [f for f in FAMILIES if f != "albert"]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y]."]
FACTS = [("Dante", "Paris"), ("Obama", "London")]


def _hard_batch(collator: PromptCollator, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch with every pseudo id replaced by its template word (the hard prompt)."""
    hard = dict(batch)
    layer = collator_state(collator)
    for key in ("input_ids", "decoder_input_ids"):
        if key in hard:
            ids = hard[key]
            pseudo = ids >= collator.layout.vocab_size
            hard[key] = torch.where(pseudo, layer.hard_ids((ids - collator.layout.vocab_size).clamp(min=0)), ids)
    return hard


def collator_state(collator: PromptCollator):  # type: ignore[no-untyped-def]
    return collator._state


def _setup(family: str, config_cls=MixturePromptConfig, **kwargs):  # type: ignore[no-untyped-def]
    model, tok = build_tiny_model(family)
    base, _ = build_tiny_model(family)
    config = config_cls(templates=TEMPLATES, tokenizer=tok, **kwargs)
    peft_model = get_peft_model(model, config)
    collator = PromptCollator(tok, peft_model)
    collator._state = peft_model.base_model.state
    return peft_model, base, tok, collator


def _plain_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keep = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    return {k: v for k, v in batch.items() if k in keep}


@pytest.mark.parametrize("family", FAMILIES)
def test_untrained_word_prompt_equals_hard_prompt_on_base_model(family: str) -> None:
    """Soft words initialised from their pieces reproduce the base model's logits on the hard prompt exactly."""
    peft_model, base, _tok, collator = _setup(family)
    batch = collator(FACTS)
    hard = _hard_batch(collator, batch)
    with torch.no_grad():
        ours = peft_model(**batch)
        reference = base(**_plain_kwargs(hard)).logits
    assert ours.logits.shape[:2] == (len(FACTS) * 2, 1)
    positions = batch["score_positions"][:, 0]
    expected = reference[torch.arange(reference.shape[0]), positions]
    torch.testing.assert_close(ours.logits[:, 0], expected, rtol=1e-5, atol=1e-5)
    full = peft_model(**_plain_kwargs(batch)).logits
    assert full.shape[:2] == batch.get("decoder_input_ids", batch["input_ids"]).shape


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_adapter_gives_hard_prompt_and_trained_vectors_change_output(family: str) -> None:
    peft_model, base, _tok, collator = _setup(family)
    batch = collator(FACTS)
    with torch.no_grad():
        peft_model.base_model.state.table["default"].add_(torch.randn_like(peft_model.base_model.state.table["default"]))
        tuned = peft_model(**batch).logits
        with peft_model.disable_adapter():
            disabled = peft_model(**batch).logits
        reference = base(**_plain_kwargs(_hard_batch(collator, batch))).logits
    positions = batch["score_positions"][:, 0]
    expected = reference[torch.arange(reference.shape[0]), positions]
    torch.testing.assert_close(disabled[:, 0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tuned, disabled)


@pytest.mark.parametrize("family", DEEP_FAMILIES)
def test_deep_zero_deltas_equal_mixture_and_deltas_only_touch_prompt_positions(family: str) -> None:
    deep, _, _tok, collator = _setup(family, DeepPerturbConfig)
    mixture, _, _, mix_collator = _setup(family, MixturePromptConfig)
    batch = collator(FACTS)
    with torch.no_grad():
        torch.testing.assert_close(deep(**batch).answer_log_probs, mixture(**mix_collator(FACTS)).answer_log_probs)
        deltas = deep.base_model.state.deltas["default"]
        deltas.normal_()
        perturbed = deep(**batch).answer_log_probs
    assert not torch.allclose(perturbed, mixture(**mix_collator(FACTS)).answer_log_probs)
    # a batch with no prompt token is untouched by the deltas (pure subject input)
    plain = _plain_kwargs(batch)
    no_prompt = {k: torch.where(v >= collator.layout.vocab_size, torch.zeros_like(v), v) for k, v in plain.items()}
    with torch.no_grad():
        with_deltas = deep(**no_prompt).logits
        with deep.disable_adapter():
            without = deep(**no_prompt).logits
    torch.testing.assert_close(with_deltas, without)


def test_deep_layer_selection_and_gradients() -> None:
    deep, _, _tok, collator = _setup("bert", DeepPerturbConfig, layers=[0, 2])
    state = deep.base_model.state
    assert state.deltas["default"].shape[0] == 2
    assert state.delta("default", 0, 1) is None
    out = deep(**collator(FACTS))
    out.loss.backward()
    assert state.deltas["default"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="deepest block stack has 2"):
        _setup("bert", DeepPerturbConfig, layers=[5])


def test_bart_deep_uses_encoder_and_decoder_stacks() -> None:
    deep, _, _, collator = _setup("bart", DeepPerturbConfig)
    sites = deep.base_model.state.sites["default"]
    assert {stack for stack, _ in sites} == {0, 1}
    out = deep(**collator(FACTS))
    out.loss.backward()
    grads = deep.base_model.state.deltas["default"].grad.abs().sum(dim=(1, 2))
    assert (grads > 0).sum() >= 4


@pytest.mark.parametrize("family", FAMILIES)
def test_mixture_is_log_sum_of_weighted_template_probs(family: str) -> None:
    peft_model, _, _, collator = _setup(family)
    state = peft_model.base_model.state
    with torch.no_grad():
        state.mixture["default"].copy_(torch.tensor([0.3, -0.7]))
    out = peft_model(**collator(FACTS))
    per_template = torch.log_softmax(out.logits[:, 0].float(), -1).view(len(FACTS), 2, -1)
    weights = torch.log_softmax(torch.tensor([0.3, -0.7]), 0)
    expected = torch.logsumexp(weights.view(1, 2, 1) + per_template, dim=1)
    torch.testing.assert_close(out.answer_log_probs, expected)
    gold = collator(FACTS)["score_targets"][::2, 0]
    torch.testing.assert_close(out.loss, -expected.gather(1, gold.unsqueeze(1)).mean())


def test_single_template_loss_is_cross_entropy_and_candidates_renormalise() -> None:
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, MixturePromptConfig(templates=TEMPLATES[:1], tokenizer=tok))
    candidates = tok.convert_tokens_to_ids(["Paris", "London", "Rome"])
    collator = PromptCollator(tok, peft_model, candidate_ids=candidates)
    out = peft_model(**collator(FACTS))
    logits = out.logits[:, 0, candidates]
    gold = torch.tensor([0, 1])
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, gold))
    assert out.answer_log_probs.shape == (2, 3)
    with pytest.raises(ValueError, match="not in the candidate set"):
        peft_model(**PromptCollator(tok, peft_model, candidate_ids=candidates[2:])(FACTS))


def test_data_dependent_weights_add_query_rows() -> None:
    peft_model, _, tok, collator = _setup("bert", data_dependent=True)
    batch = collator(FACTS)
    assert batch["input_ids"].shape[0] == 2 * len(FACTS) * 2
    targets = batch["score_targets"][4:]
    masked = batch["input_ids"][4:].gather(1, batch["score_positions"][4:])
    assert (masked[targets != -100] == tok.mask_token_id).all()
    out = peft_model(**batch)
    query_rows = torch.log_softmax(out.logits[4:].float(), -1)
    picked = query_rows.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    query = picked.masked_fill(targets == -100, 0).sum(1).view(2, 2)
    expected = torch.log_softmax(torch.log_softmax(torch.zeros(2), 0) + query, dim=1)
    torch.testing.assert_close(out.mixture_log_weights, expected)
    out.loss.backward()


@pytest.mark.parametrize("family", ["gpt2", "llama", "bart", "t5"])
def test_generate_with_and_without_cache_agree_and_use_the_prompt(family: str) -> None:
    peft_model, _, tok, collator = _setup(family, DeepPerturbConfig)
    state = peft_model.base_model.state
    with torch.no_grad():
        state.table["default"].add_(torch.randn_like(state.table["default"]))
        state.deltas["default"].normal_(std=0.5)
    batch = collator([("Dante",)])
    row = {k: v[:1] for k, v in _plain_kwargs(batch).items() if not k.startswith("decoder")}
    kwargs = {
        "max_new_tokens": 5,
        "do_sample": False,
        "pad_token_id": tok.pad_token_id,
        "output_scores": True,
        "return_dict_in_generate": True,
    }
    with torch.no_grad():
        cached = peft_model.generate(**row, use_cache=True, **kwargs)
        uncached = peft_model.generate(**row, use_cache=False, **kwargs)
        with peft_model.disable_adapter():
            plain = peft_model.generate(**row, use_cache=True, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(torch.stack(cached.scores), torch.stack(plain.scores), atol=1e-3)


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_gradient_checkpointing_gives_the_same_gradients(family: str) -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        peft_model, _, _, collator = _setup(family, DeepPerturbConfig)
        if checkpointing:
            peft_model.base_model.model.gradient_checkpointing_enable()
        peft_model.train()
        for module in peft_model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        peft_model(**collator(FACTS)).loss.backward()
        state = peft_model.base_model.state
        grads.append((state.table["default"].grad.clone(), state.deltas["default"].grad.clone()))
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_fp32_adapter(dtype: torch.dtype) -> None:
    model, tok = build_tiny_model("bert")
    model = model.to(dtype)
    peft_model = get_peft_model(model, DeepPerturbConfig(templates=TEMPLATES, tokenizer=tok))
    state = peft_model.base_model.state
    assert state.table["default"].dtype == torch.float32
    assert state.deltas["default"].dtype == torch.float32
    out = peft_model(**PromptCollator(tok, peft_model)(FACTS))
    assert out.logits.dtype == dtype
    out.loss.backward()
    assert state.table["default"].grad.dtype == torch.float32


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_inputs_embeds_with_prompt_ids_matches_input_ids(family: str) -> None:
    peft_model, _, _tok, collator = _setup(family, DeepPerturbConfig)
    state = peft_model.base_model.state
    with torch.no_grad():
        state.deltas["default"].normal_()
    batch = collator(FACTS)
    hard = _hard_batch(collator, batch)
    embeds = peft_model.base_model.model.get_input_embeddings().weight[hard["input_ids"]].detach()
    by_embeds = dict(batch, inputs_embeds=embeds, prompt_ids=batch["input_ids"])
    del by_embeds["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**by_embeds).answer_log_probs, peft_model(**batch).answer_log_probs)


def test_random_and_vocab_initialisations() -> None:
    model, tok = build_tiny_model("bert")
    weight = model.get_input_embeddings().weight.detach()
    torch.manual_seed(1)
    config = MixturePromptConfig(templates=["[P*200] [X] [Y]"], tokenizer=tok, init="random")
    table = get_peft_model(model, config).base_model.state.table["default"].detach()
    assert torch.allclose(table.mean(0), weight.mean(0), atol=3 * float(weight.std()) / 200**0.5 + 1e-3)
    assert 0.7 < float(table.std() / weight.std()) < 1.3
    model, tok = build_tiny_model("bert")
    config = MixturePromptConfig(templates=["[P*5] [X] [Y]"], tokenizer=tok, init="vocab")
    table = get_peft_model(model, config).base_model.state.table["default"].detach()
    for row in table:
        assert (weight == row).all(-1).any()
