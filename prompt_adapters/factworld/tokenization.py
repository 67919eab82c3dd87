"""Tokenizers trained on the corpus with the `tokenizers` library, saved in HF format.

BERT gets a cased word-level vocabulary (like bert-base-cased, every corpus word is one token).
GPT-2 and BART get byte-level BPE trained until no pair is left to merge, so every corpus word is
one token both with and without its leading space (``"Paris"`` and ``"ĠParis"``), while unseen words
still split into sub-words as in the real models.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

MAX_LENGTH = 64
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
GPT2_SPECIALS = ("<|endoftext|>",)
BART_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, normalized=False, special=True))


def train_wordlevel_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A BERT-style tokenizer: whitespace split, cased word-level vocabulary, ``[CLS] x [SEP]``."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(BERT_SPECIALS), show_progress=False))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LENGTH,
    )


def _train_bpe(texts: Iterable[str], specials: tuple[str | AddedToken, ...]) -> Tokenizer:
    """Byte-level BPE with an unbounded vocabulary: merging stops only when every word is one token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        min_frequency=1,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def train_gpt2_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A GPT-2-style tokenizer: byte-level BPE, ``<|endoftext|>`` as bos/eos/unk (and pad), no specials added."""
    tok = _train_bpe(texts, GPT2_SPECIALS)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=eos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=MAX_LENGTH,
    )


def train_bart_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A BART-style tokenizer: byte-level BPE, ``<s> x </s>``, ``<mask>`` absorbing the space before it."""
    tok = _train_bpe(texts, BART_SPECIALS)
    bos, eos = ("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))
    tok.post_processor = processors.RobertaProcessing(eos, bos)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_LENGTH,
    )


def object_token_id(tokenizer: PreTrainedTokenizerFast, name: str, leading_space: bool = True) -> int:
    """The single token id of an object name; raises if the name is not exactly one token.

    Byte-level tokenizers are asked for the mid-sentence form (``" " + name``) unless
    ``leading_space`` is False; a word-level tokenizer ignores the space.
    """
    text = (" " + name) if leading_space else name
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"object {text!r} is {len(ids)} tokens {tokenizer.convert_ids_to_tokens(ids)}, expected 1")
    return ids[0]
