"""The tiny offline models and tokenizers of ``prompt_adapters.testing``: shapes, determinism, save / reload,
round-trips, single-token names and the family-specific special tokens the rest of the test-suite relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

import prompt_adapters.testing as testing_module
from prompt_adapters.testing import (
    ANSWER_WORDS,
    CAUSAL_LM_FAMILIES,
    CORPUS,
    FAMILIES,
    MASKED_LM_FAMILIES,
    MAX_LENGTH,
    NAMES,
    SEQ2SEQ_FAMILIES,
    build_tiny_model,
    build_tokenizer,
    save_tiny_model,
)

AUTO_CLASSES = {
    **dict.fromkeys(MASKED_LM_FAMILIES, AutoModelForMaskedLM),
    **dict.fromkeys(CAUSAL_LM_FAMILIES, AutoModelForCausalLM),
    **dict.fromkeys(SEQ2SEQ_FAMILIES, AutoModelForSeq2SeqLM),
}
SENTENCES = ["Dante was born in Florence .", "Paris is the capital of France ."]

# How each family frames "Dante was born in Paris ." (special tokens and word-initial markers).
EXPECTED_TOKENS = {
    "bert": ["[CLS]", "Dante", "was", "born", "in", "Paris", ".", "[SEP]"],
    "distilbert": ["[CLS]", "Dante", "was", "born", "in", "Paris", ".", "[SEP]"],
    "roberta": ["<s>", "Dante", "Ġwas", "Ġborn", "Ġin", "ĠParis", "Ġ.", "</s>"],
    "bart": ["<s>", "Dante", "Ġwas", "Ġborn", "Ġin", "ĠParis", "Ġ.", "</s>"],
    "gpt2": ["Dante", "Ġwas", "Ġborn", "Ġin", "ĠParis", "Ġ."],
    "albert": ["[CLS]", "▁Dante", "▁was", "▁born", "▁in", "▁Paris", "▁.", "[SEP]"],
    "llama": ["<s>", "▁Dante", "▁was", "▁born", "▁in", "▁Paris", "▁."],
    "t5": ["▁Dante", "▁was", "▁born", "▁in", "▁Paris", "▁.", "</s>"],
}


def _forward(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, family: str) -> torch.Tensor:
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    extra = {}
    if family in SEQ2SEQ_FAMILIES:
        extra["decoder_input_ids"] = torch.full((len(SENTENCES), 2), model.config.decoder_start_token_id)
    with torch.no_grad():
        return model(**batch, **extra).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_pass_and_config(family: str) -> None:
    model, tok = build_tiny_model(family)
    assert not model.training
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.pad_token_id == tok.pad_token_id is not None
    if tok.eos_token_id is not None and family not in ("bert", "distilbert"):
        assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok) or (family == "t5" and model.config.vocab_size % 128 == 0)
    assert model.config.vocab_size >= len(tok)
    assert model.name_or_path == tok.name_or_path == f"prompt-adapters/tiny-{family}"
    logits = _forward(model, tok, family)
    length = 2 if family in SEQ2SEQ_FAMILIES else tok(SENTENCES, padding=True, return_tensors="pt").input_ids.shape[1]
    assert logits.shape == (len(SENTENCES), length, model.config.vocab_size)
    assert torch.isfinite(logits).all()
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert tied == (family != "llama")  # Llama unties its LM head; every other family ties it


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_and_rng_untouched(family: str) -> None:
    state = torch.random.get_rng_state()
    first, _ = build_tiny_model(family, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    second, _ = build_tiny_model(family, seed=3)
    other, _ = build_tiny_model(family, seed=4)
    same = [torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)]
    seeded = [torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values(), strict=True)]
    assert all(same) and not all(seeded)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_with_auto_classes(family: str, tmp_path: Path) -> None:
    model, tok = build_tiny_model(family, seed=1)
    assert save_tiny_model(family, tmp_path, seed=1) == tmp_path
    loaded = AUTO_CLASSES[family].from_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert loaded_tok.padding_side == tok.padding_side
    assert loaded_tok.all_special_tokens == tok.all_special_tokens
    for text in [*SENTENCES, f"x {tok.mask_token or tok.unk_token} y", "<extra_id_0> Paris <extra_id_1>"]:
        assert loaded_tok(text).input_ids == tok(text).input_ids
    assert torch.equal(_forward(loaded.eval(), loaded_tok, family), _forward(model, tok, family))


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_round_trip_offsets_and_framing(family: str) -> None:
    tok = build_tokenizer(family)
    assert tok.is_fast and tok.model_max_length == MAX_LENGTH
    for text in CORPUS:
        decoded = tok.decode(tok(text).input_ids, skip_special_tokens=True)
        if family in ("bert", "distilbert"):  # WordPiece decoding glues punctuation: "France ." -> "France."
            decoded, text = "".join(decoded.split()), "".join(text.split())
        assert decoded == text
    text = "Dante was born in Paris ."
    encoding = tok(text, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(encoding.input_ids) == EXPECTED_TOKENS[family]
    words = [text[start:end].strip() for start, end in encoding.offset_mapping if end > start]
    assert words == text.split()


@pytest.mark.parametrize("family", FAMILIES)
def test_names_and_answer_words_are_single_tokens(family: str) -> None:
    tok = build_tokenizer(family)
    for word in NAMES + ANSWER_WORDS:
        pieces = tok.tokenize(" " + word)
        assert len(pieces) == 1, (word, pieces)
        ids = tok(f"The answer is {word} .", add_special_tokens=False).input_ids
        assert tok.convert_tokens_to_ids(pieces[0]) in ids


@pytest.mark.parametrize("family", MASKED_LM_FAMILIES)
def test_mask_token(family: str) -> None:
    model, tok = build_tiny_model(family)
    assert tok.mask_token == ("<mask>" if family == "roberta" else "[MASK]")
    assert 0 <= tok.mask_token_id < model.config.vocab_size
    ids = tok(f"Dante was born in {tok.mask_token} .").input_ids
    assert ids.count(tok.mask_token_id) == 1
    # Like the real RoBERTa and ALBERT, their mask token swallows the space before it (BERT's does not).
    assert tok.added_tokens_decoder[tok.mask_token_id].lstrip == (family in ("roberta", "albert"))
    if family == "roberta":
        assert ids == tok(f"Dante was born in{tok.mask_token} .").input_ids


def test_t5_sentinels() -> None:
    model, tok = build_tiny_model("t5")
    sentinels = [f"<extra_id_{i}>" for i in range(20)]
    assert tok.extra_special_tokens == sentinels
    ids = tok.convert_tokens_to_ids(sentinels)
    assert ids == list(range(len(tok) - 1, len(tok) - 21, -1))  # <extra_id_0> is the last id, as in T5
    assert tok("<extra_id_0> Paris <extra_id_1>").input_ids == [ids[0], *tok(" Paris").input_ids[:-1], ids[1], 1]
    assert model.config.decoder_start_token_id == tok.pad_token_id == 0


def test_special_token_choices() -> None:
    gpt2, llama = build_tokenizer("gpt2"), build_tokenizer("llama")
    assert gpt2.pad_token == gpt2.eos_token == gpt2.bos_token == gpt2.unk_token == "<|endoftext|>"
    assert gpt2.eos_token_id == len(gpt2) - 1
    assert (llama.bos_token, llama.eos_token, llama.pad_token, llama.padding_side) == ("<s>", "</s>", "<unk>", "left")
    assert "token_type_ids" in build_tokenizer("bert")("a")
    assert "token_type_ids" not in build_tokenizer("distilbert")("a")


def test_tokenizers_are_independent_copies() -> None:
    first = build_tokenizer("bert")
    first.add_tokens(["<new>"])
    first.pad_token = "[UNK]"
    second = build_tokenizer("bert")
    assert len(second) == len(first) - 1 and second.pad_token == "[PAD]"


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        build_tokenizer("xlnet")


def test_retraining_gives_identical_vocabularies() -> None:
    """The stock WordPiece and Unigram trainers of `tokenizers` give a different vocabulary on every run (their
    Rust hash maps are seeded per map, so even in one process); the tiny tokenizers must not."""
    before = {family: build_tokenizer(family).backend_tokenizer.to_str() for family in FAMILIES}
    testing_module._backend_json.cache_clear()
    assert {family: build_tokenizer(family).backend_tokenizer.to_str() for family in FAMILIES} == before
