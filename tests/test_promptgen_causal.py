"""PromptGen on causal downstream LMs, with encoder-decoder and decoder-only generators, and generate()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from prompt_adapters import PromptGenCollator, PromptGenConfig
from prompt_adapters.testing import build_tiny_model, perturb_trainable, save_tiny_model

EXAMPLES = [
    {"X": "Dante", "Y": "Paris", "template": "[X] was born in [Y] ."},
    {"X": "Barack Obama Senior", "Y": "London", "template": "[X] died in [Y] ."},
]
#: a generator without a mask token cannot mark stops with it: the </s> rule
STOPPING = {"bart": "mask", "gpt2": "eos", "llama": "eos"}


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generators")
    return {family: save_tiny_model(family, root / family, seed=1) for family in ("bart", "gpt2", "llama")}


def _model(downstream: str, generator: Path, stopping: str, **kwargs):  # type: ignore[no-untyped-def]
    model, tok = build_tiny_model(downstream)
    tok.padding_side = "left"  # generate() continues every row at its right edge
    config = PromptGenConfig(generator_name_or_path=str(generator), tokenizer=tok, num_before=4, num_after=2,
                             stopping=stopping, **kwargs)
    return get_peft_model(model, config), tok


@pytest.mark.parametrize("generator_family", ["bart", "gpt2", "llama"])
@pytest.mark.parametrize("downstream", ["gpt2", "llama"])
def test_causal_downstream_scores_the_token_after_the_generated_prompt(
    downstream: str, generator_family: str, generators: dict[str, Path]
) -> None:
    """The loss is -log P(o | T(s)) + alpha log P(o | T(None)), P read at the last prompt token; the gradient reaches
    every generator parameter; nothing after the answer slot is generated for a causal LM."""
    model, tok = _model(downstream, generators[generator_family], "fixed", leak_penalty=0.3)
    perturb_trainable(model, 0.05)
    assert model.peft_config["default"].lm_kind == "causal"
    trainable = {name.split(".")[2] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"generator"}
    batch = PromptGenCollator(tok, model)(EXAMPLES)
    out = model(**batch)
    gold = torch.tensor([tok(" Paris", add_special_tokens=False).input_ids[0],
                         tok(" London", add_special_tokens=False).input_ids[0]])
    main = -out.answer_log_probs.gather(1, gold[:, None]).mean()
    leak = out.none_log_probs.gather(1, gold[:, None]).mean()
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, main + 0.3 * leak)

    state = model.base_model.state
    steps, lengths = state.last_generation
    assert lengths.tolist() == [[4, 0], [4, 0]]
    assert not steps[:, 4:].any()  # the 2 soft tokens after [Y] are never read by a causal LM, so never written
    # the same log-probabilities from the bare model fed the expected embeddings of the generated soft tokens
    base = build_tiny_model(downstream)[0]
    embeddings = base.get_input_embeddings().weight
    down_ids = state.options["default"]["down_ids"]
    soft = steps[:, :4] @ embeddings[down_ids]
    for row in range(2):
        ids = batch["input_ids"][row]
        pseudo = ids >= embeddings.shape[0]
        embeds = embeddings[ids.clamp(max=embeddings.shape[0] - 1)].clone()
        embeds[pseudo] = soft[row % 2].to(embeds.dtype)
        with torch.no_grad():
            logits = base(inputs_embeds=embeds[None], attention_mask=batch["attention_mask"][row : row + 1]).logits
        position = int(batch["score_positions"][row, 0])
        assert position == int(pseudo.nonzero().max())  # the answer is the token after the last soft token
        expected = torch.log_softmax(logits[0, position], -1)
        actual = out.answer_log_probs[row] if row < 2 else out.none_log_probs[row - 2]
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)

    out.loss.backward()
    generator_params = [p for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for p in generator_params)
    assert sum(float(p.grad.abs().sum()) > 0 for p in generator_params) > len(generator_params) // 2


@pytest.mark.parametrize("generator_family", ["bart", "gpt2"])
def test_causal_save_load_roundtrip_with_safetensors(
    generator_family: str, generators: dict[str, Path], tmp_path: Path
) -> None:
    model, tok = _model("gpt2", generators[generator_family], STOPPING[generator_family])
    perturb_trainable(model, 0.05)
    generator = model.base_model.state.generator["default"]
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == sum(p.numel() for p in generator.parameters())  # the generator, tied weights once
    assert total == trainable + sum(p.numel() for p in build_tiny_model("gpt2")[0].parameters())
    batch = PromptGenCollator(tok, model)(EXAMPLES)
    with torch.no_grad():
        expected = model(**batch).answer_log_probs
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    generator_size = sum(p.numel() for p in model.base_model.state.generator["default"].state_dict().values())
    assert all(".generator." in key for key in saved) and 0 < sum(t.numel() for t in saved.values()) <= generator_size
    weights = model.base_model.state.generator["default"].state_dict()
    for low_cpu_mem_usage in (False, True):
        again = PeftModel.from_pretrained(build_tiny_model("gpt2")[0], tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        loaded = again.base_model.state.generator["default"].state_dict()
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
        with torch.no_grad():  # the same weights; a new instance's attention kernels may differ in the last bits
            torch.testing.assert_close(again(**batch).answer_log_probs, expected, rtol=1e-6, atol=1e-6)
    with model.disable_adapter(), torch.no_grad():  # peft: the disabled adapter is the bare model (template words)
        disabled = model(**batch).answer_log_probs
    assert not torch.allclose(disabled, expected)


def test_decoder_only_generator_decodes_each_row_as_if_alone_and_as_a_full_rerun(generators: dict[str, Path]) -> None:
    """Left padding, position ids and the key/value cache of a decoder-only generator: a batched, cached run gives
    every row the soft tokens of an uncached rerun of ``text </s> subject D_1 .. D_t`` for that row alone."""
    model, tok = _model("llama", generators["llama"], "fixed")
    perturb_trainable(model, 0.05)  # larger noise makes the feedback loop amplify float rounding
    state = model.base_model.state
    generator = state.generator["default"]
    collate = PromptGenCollator(tok, model, leak_rows=False)
    batch = collate(EXAMPLES)
    keys = ("generator_input_ids", "generator_attention_mask", "generator_subject_ids")
    assert len(set((batch["generator_subject_ids"] >= 0).sum(1).tolist())) > 1  # subjects of different lengths
    embed = generator.get_input_embeddings()
    common = state.options["default"]["gen_ids"]
    separator = state.options["default"]["prefix_ids"].tolist()
    assert separator == [generator.config.eos_token_id]
    with torch.no_grad():
        steps, _ = state.generate("default", *(batch[k] for k in keys))
        for row, example in enumerate(EXAMPLES):
            alone = collate([example])
            text = alone["generator_input_ids"][0][alone["generator_attention_mask"][0].bool()].tolist()
            subject = [i for i in alone["generator_subject_ids"][0].tolist() if i >= 0]
            inputs = list(embed(torch.tensor([*text, *separator, *subject])))
            for slot in range(4):
                logits = generator(inputs_embeds=torch.stack(inputs)[None], use_cache=False).logits[0, -1]
                dist = torch.softmax(logits.float().index_select(-1, common), -1)
                torch.testing.assert_close(steps[row, slot], dist, rtol=1e-4, atol=1e-5)
                inputs.append(dist @ embed(common))


def test_decoder_only_generator_needs_a_mask_token_for_mask_stopping_and_a_second_segment(
    generators: dict[str, Path],
) -> None:
    with pytest.raises(ValueError, match=r"stopping='mask'.*has none; use stopping='eos' or stopping='fixed'"):
        _model("gpt2", generators["gpt2"], "mask")
    bert, tok = build_tiny_model("bert")
    config = PromptGenConfig(generator_name_or_path=str(generators["gpt2"]), tokenizer=tok, num_before=2,
                             num_after=1, stopping="eos")
    with pytest.raises(ValueError, match=r"num_after=1: the generator .* has no mask token to copy at the answer slot"):
        get_peft_model(bert, config)


@pytest.mark.parametrize("generator_family", ["bart", "gpt2"])
def test_generate_writes_the_prompt_once_and_cached_decoding_matches_uncached(
    generator_family: str, generators: dict[str, Path]
) -> None:
    """generate() on a causal LM: one generator run per call, greedy tokens identical with and without the key/value
    cache, rows of different lengths whose prompts stopped at different steps, and a first token that is the argmax
    of a plain forward."""
    model, tok = _model("gpt2", generators[generator_family], STOPPING[generator_family])
    perturb_trainable(model, 0.5)
    state = model.base_model.state
    generator = state.generator["default"]
    collate = PromptGenCollator(tok, model)
    texts = [{"X": e["X"], "template": e["template"]} for e in EXAMPLES]
    inputs = collate.inputs(texts)
    tok.padding_side = "right"  # a forward without position ids counts positions from the first column
    right_padded = collate.inputs(texts)
    expected_lengths = _force_different_stops(model, inputs)
    generate_calls: list[int] = []
    generator_calls: list[int] = []
    run = state.generate
    state.generate = lambda *args: generate_calls.append(1) or run(*args)  # type: ignore[method-assign]
    generator.register_forward_hook(lambda *_: generator_calls.append(1))
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
        decoder_steps = len(generator_calls)
        lengths = state.last_generation[1][:, 0].tolist()
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
        logits = model(**right_padded).logits
    # the unwritten soft positions were removed: the last kept token of a row moved left by their number
    last = right_padded["attention_mask"].sum(1) - 1 - (4 - torch.tensor(lengths))
    first = logits[torch.arange(2), last].argmax(-1)
    assert len(generate_calls) == 3 and len(generator_calls) == 3 * decoder_steps
    assert lengths == expected_lengths and len(set(lengths)) == 2, lengths
    assert torch.equal(cached, uncached)
    assert cached[:, -6].tolist() == first.tolist()


def _force_different_stops(model, inputs) -> list[int]:  # type: ignore[no-untyped-def]
    """Add a constant to the stop token's logit (a hook on the generator's LM head) so that the two rows' first
    segments stop at different steps; return those lengths, found from the logits of a run without stopping."""
    state = model.base_model.state
    generator = state.generator["default"]
    options = state.options["default"]
    token = options["stop_ids"][0]
    logits: list[torch.Tensor] = []
    handle = generator.register_forward_hook(lambda module, args, out: logits.append(out.logits[:, -1].float()))
    saved, options["stop_ids"] = options["stop_ids"], (None, None)
    try:
        with torch.no_grad():
            state.generate("default", inputs["generator_input_ids"], inputs["generator_attention_mask"],
                           inputs["generator_subject_ids"])
    finally:
        handle.remove()
        options["stop_ids"] = saved
    widths = (inputs["generator_subject_ids"] >= 0).sum(1)
    # an encoder-decoder's row with a shorter subject writes earlier; a decoder-only generator's rows start together
    offsets = torch.zeros_like(widths) if options["decoder_only"] else widths - widths.min()
    stacked = torch.stack(logits, 1)
    calls = offsets[:, None] + torch.arange(options["m"])
    at = stacked[torch.arange(widths.numel())[:, None], calls]
    margins = at[..., token] - at.index_select(-1, options["gen_ids"]).max(-1).values
    candidates = [(bias, _first_stops(margins + bias, options["m"])) for bias in (1e-3 - margins).flatten().tolist()]
    separating = [(bias, lengths) for bias, lengths in sorted(candidates) if len(set(lengths)) == len(lengths)]
    assert separating, f"no bias on the stop token's logit separates the rows: margins {margins}"
    bias, lengths = separating[0]
    shift = torch.zeros(generator.get_output_embeddings().weight.shape[0])
    shift[token] = bias
    generator.get_output_embeddings().register_forward_hook(lambda module, args, out: out + shift)
    return lengths


def _first_stops(margins: torch.Tensor, maximum: int) -> list[int]:
    """Per row, the first step whose stop margin is positive (the segment's length), else ``maximum``."""
    stops = margins > 0
    return torch.where(stops.any(1), stops.float().argmax(1), maximum).tolist()


@pytest.mark.parametrize("downstream", ["gpt2", "llama"])
def test_readable_prompts_are_words_as_the_tokenizer_writes_them(downstream: str, generators: dict[str, Path]) -> None:
    """A byte-level BPE or SentencePiece word reads as the word ("was born"), not as its tokens ("Ġwas Ġborn")."""
    model, tok = _model(downstream, generators["gpt2"], "fixed")
    texts = model.base_model.generated_prompts(PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES), tok)
    state = model.base_model.state
    steps, _ = state.last_generation
    words = state.options["default"]["down_ids"][steps.argmax(-1)][:, :4]
    markers = ("Ġ", "▁")
    assert any(marker in token for token in tok.convert_ids_to_tokens(words[0].tolist()) for marker in markers)
    assert texts == [tok.decode(row.tolist(), clean_up_tokenization_spaces=False).strip() + " [Y]" for row in words]
    assert not any(marker in text for text in texts for marker in markers)
