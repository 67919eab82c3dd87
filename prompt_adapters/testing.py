"""Tiny, deterministic Hugging Face models and tokenizers, built locally for tests and runnable examples.

Nothing is downloaded. Every tokenizer is trained in-process on a small built-in English corpus of facts
(``CORPUS``) and every model is created from a config under a fixed seed, in well under a second. The tokenizers
mimic their real families (WordPiece for BERT, byte-level BPE for GPT-2 / RoBERTa / BART, SentencePiece-style
Unigram for ALBERT / T5 and BPE with byte fallback for Llama, with the same special tokens, post-processors and
decoders), so code that deals with leading spaces, ``<mask>`` vs ``[MASK]``, sentinels or BOS-only templates is
exercised for real. Every name in ``NAMES`` and word in ``ANSWER_WORDS`` is a single token in every family in its
mid-sentence form (``Paris``, ``ĠParis``, ``▁Paris``), so tests can use single-token answers.

Deviations from the real checkpoints: ALBERT is cased (the real one lower-cases), T5 has 20 sentinels (not 100),
and Llama's pad token is ``<unk>`` (the real one has none).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import string
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    T5Config,
    T5ForConditionalGeneration,
)

__all__ = [
    "ANSWER_WORDS",
    "CAUSAL_LM_FAMILIES",
    "CORPUS",
    "FAMILIES",
    "MASKED_LM_FAMILIES",
    "MAX_LENGTH",
    "NAMES",
    "SEQ2SEQ_FAMILIES",
    "build_tiny_model",
    "build_tokenizer",
    "save_tiny_model",
]

FAMILIES: tuple[str, ...] = ("bert", "roberta", "distilbert", "albert", "gpt2", "llama", "bart", "t5")
MASKED_LM_FAMILIES: tuple[str, ...] = ("bert", "roberta", "distilbert", "albert")
CAUSAL_LM_FAMILIES: tuple[str, ...] = ("gpt2", "llama")
SEQ2SEQ_FAMILIES: tuple[str, ...] = ("bart", "t5")

MAX_LENGTH = 128
"""Usable positions of every tiny model, and the tokenizers' ``model_max_length``."""

_NUM_SENTINELS = 20

# ---------------------------------------------------------------------------------------------------------------
# Corpus: true facts as short sentences with space-separated punctuation, generated in a fixed order.
# ---------------------------------------------------------------------------------------------------------------

# (country, capital, language)
_COUNTRIES: tuple[tuple[str, str, str], ...] = (
    ("France", "Paris", "French"),
    ("Italy", "Rome", "Italian"),
    ("Germany", "Berlin", "German"),
    ("Spain", "Madrid", "Spanish"),
    ("Portugal", "Lisbon", "Portuguese"),
    ("England", "London", "English"),
    ("Ireland", "Dublin", "Irish"),
    ("Austria", "Vienna", "German"),
    ("Greece", "Athens", "Greek"),
    ("Russia", "Moscow", "Russian"),
    ("Poland", "Warsaw", "Polish"),
    ("Norway", "Oslo", "Norwegian"),
    ("Sweden", "Stockholm", "Swedish"),
    ("Netherlands", "Amsterdam", "Dutch"),
    ("Czechia", "Prague", "Czech"),
    ("Turkey", "Ankara", "Turkish"),
    ("Egypt", "Cairo", "Arabic"),
    ("Japan", "Tokyo", "Japanese"),
    ("China", "Beijing", "Chinese"),
    ("Canada", "Ottawa", "English"),
    ("Brazil", "Brasilia", "Portuguese"),
    ("America", "Washington", "English"),
)

# (city, country) for cities that are not capitals
_CITIES: tuple[tuple[str, str], ...] = (
    ("Florence", "Italy"),
    ("Milan", "Italy"),
    ("Venice", "Italy"),
    ("Naples", "Italy"),
    ("Pisa", "Italy"),
    ("Ravenna", "Italy"),
    ("Munich", "Germany"),
    ("Hamburg", "Germany"),
    ("Frankfurt", "Germany"),
    ("Bonn", "Germany"),
    ("Ulm", "Germany"),
    ("Weimar", "Germany"),
    ("Barcelona", "Spain"),
    ("Seville", "Spain"),
    ("Malaga", "Spain"),
    ("Salzburg", "Austria"),
    ("Lyon", "France"),
    ("Marseille", "France"),
    ("Ajaccio", "France"),
    ("Manchester", "England"),
    ("Liverpool", "England"),
    ("Portsmouth", "England"),
    ("Stratford", "England"),
    ("Shrewsbury", "England"),
    ("Leiden", "Netherlands"),
    ("Kyoto", "Japan"),
    ("Osaka", "Japan"),
    ("Toronto", "Canada"),
    ("Montreal", "Canada"),
    ("Princeton", "America"),
    ("Chicago", "America"),
)

# (person, profession, language, birth place or "", death place or "")
_PEOPLE: tuple[tuple[str, str, str, str, str], ...] = (
    ("Dante", "poet", "Italian", "Florence", "Ravenna"),
    ("Galileo", "astronomer", "Italian", "Pisa", ""),
    ("Vivaldi", "composer", "Italian", "Venice", "Vienna"),
    ("Verdi", "composer", "Italian", "", "Milan"),
    ("Mozart", "composer", "German", "Salzburg", "Vienna"),
    ("Beethoven", "composer", "German", "Bonn", "Vienna"),
    ("Einstein", "physicist", "German", "Ulm", "Princeton"),
    ("Goethe", "writer", "German", "Frankfurt", "Weimar"),
    ("Kafka", "writer", "German", "Prague", ""),
    ("Newton", "physicist", "English", "", "London"),
    ("Dickens", "writer", "English", "Portsmouth", ""),
    ("Shakespeare", "playwright", "English", "Stratford", "Stratford"),
    ("Darwin", "naturalist", "English", "Shrewsbury", ""),
    ("Cervantes", "writer", "Spanish", "", "Madrid"),
    ("Picasso", "painter", "Spanish", "Malaga", ""),
    ("Curie", "physicist", "Polish", "Warsaw", ""),
    ("Chopin", "composer", "Polish", "", "Paris"),
    ("Rembrandt", "painter", "Dutch", "Leiden", "Amsterdam"),
    ("Ibsen", "playwright", "Norwegian", "", "Oslo"),
    ("Tolstoy", "writer", "Russian", "", ""),
    ("Plato", "philosopher", "Greek", "Athens", "Athens"),
    ("Napoleon", "emperor", "French", "Ajaccio", ""),
    ("Voltaire", "writer", "French", "Paris", "Paris"),
    ("Confucius", "philosopher", "Chinese", "", ""),
)

_GENERAL: tuple[str, ...] = (
    "The cat sat on the mat .",
    "The dog plays in the garden every day .",
    "She works for a bank in London .",
    "He plays football for a team in Milan .",
    "They live in a small house near the river .",
    "We visited the old museum last year .",
    "It's a beautiful day , isn't it ?",
    "France's capital is Paris and Italy's capital is Rome .",
    "Mozart's music is still played in Vienna .",
    "The river flows through the city to the sea .",
    "My brother doesn't like cold weather .",
    "The children read a book about animals .",
    "A good teacher explains the answer with care .",
    "The weather was warm and the sky was blue .",
    "This film is good , but the book is better .",
    "That movie was bad and very long .",
    "The food was great and the service was good .",
    "The hotel was terrible and the room was bad .",
    "The concert was great , the film was terrible .",
    "It was a great day , not a terrible one .",
    "She works for a company in Paris and he works for a bank .",
    "The question is simple but the answer is not .",
    "Every question has an answer .",
    "I think the answer is yes .",
    "I think the answer is no .",
    "I think the answer is maybe .",
    "Maybe the answer is true , maybe it is false .",
    "The statement is true .",
    "The statement is false .",
    "The premise entails the hypothesis .",
    "The hypothesis contradicts the premise .",
    "The two sentences are neutral .",
    "What is the capital of France ?",
    "Where was Mozart born ?",
    "Who wrote the book ?",
    "Which language do people speak in Brazil ?",
    "When did the war end ?",
    "How many people live in Tokyo ?",
    "Paris is a large city with many famous museums .",
    "Rome has a long and rich history .",
    "Berlin is known for its music and its art .",
    "London is the largest city in England .",
    "Venice is famous for its canals .",
    "Tokyo is one of the largest cities in the world .",
    "Einstein developed the theory of relativity .",
    "Newton described the laws of motion and gravity .",
    "Darwin wrote a famous book about the origin of species .",
    "Shakespeare wrote many plays and poems .",
    "Mozart wrote his first symphony as a child .",
    "Picasso painted in many different styles .",
    "The company is owned by a large bank .",
    "The phone is produced by a company in China .",
    "The software is developed by a small team .",
    "The book was written in French and translated into English .",
    "The show was originally aired on television .",
    "The museum is part of the university .",
    "The team is a member of the league .",
    "She was educated at the University of Vienna .",
    "He used to work in a hospital .",
    "The musician plays jazz music .",
    "The singer is represented by a music label .",
    "The player plays in the midfield position .",
    "The doctor gave the patient some medicine .",
    "The student asked a question and the teacher gave an answer .",
    "The price of bread went up in 1990 .",
    "The bridge was built in 1889 and is still in use .",
    "The train leaves at 7 and arrives at 9 .",
    "There are 12 months in a year and 7 days in a week .",
    "Water boils at 100 degrees .",
    "The meeting was moved to Monday because of the rain .",
    "The word has two different meanings in these sentences .",
    "The man dropped the glass , so it broke .",
    "The woman was hungry , so she ate an apple .",
    "He opened the window because the room was hot .",
    "The trophy doesn't fit into the suitcase because it is too big .",
)


def _build_corpus() -> tuple[str, ...]:
    """Generate several phrasings per fact (LAMA-, QA- and true/false-style), then append general sentences.

    Every name occurs at least twice after a space, so the BPE-based trainers (``min_frequency=2``) make its
    word-initial form a single token.
    """
    lines: list[str] = []
    countries = [row[0] for row in _COUNTRIES]
    capitals = {country: capital for country, capital, _ in _COUNTRIES}
    for i, (country, capital, language) in enumerate(_COUNTRIES):
        other = countries[(i + 1) % len(countries)]
        lines += [
            f"{capital} is the capital of {country} .",
            f"The capital of {country} is {capital} .",
            f"{capital} is located in {country} .",
            f"The official language of {country} is {language} .",
            f"People in {country} speak {language} .",
            f"{country} shares border with {other} ." if i % 3 == 0 else f"{country} is a country .",
            f"Question : Is {capital} the capital of {country} ? Answer : yes .",
            f"Question : Is {capital} the capital of {other} ? Answer : no .",
            f"{capitals[other]} is in {country} . True or false ? false .",
        ]
    for city, country in _CITIES:
        lines += [
            f"{city} is located in {country} .",
            f"The city of {city} is in {country} .",
            f"Question : Is {city} in {country} ? Answer : yes .",
            f"Many people visit {city} . True or false ? true .",
        ]
    for person, profession, language, born, died in _PEOPLE:
        article = "an" if profession[0] in "aeiou" else "a"
        lines += [
            f"{person} is {article} {profession} by profession .",
            f"The native language of {person} is {language} .",
            f"Question : Who was {person} ? Answer : {article} {profession} .",
        ]
        if born:
            lines += [f"{person} was born in {born} .", f"Question : Where was {person} born ? Answer : {born} ."]
        if died:
            lines.append(f"{person} died in {died} .")
    return (*lines, *_GENERAL)


CORPUS: tuple[str, ...] = _build_corpus()
"""The training corpus of every tiny tokenizer (fixed order, so the vocabularies are reproducible)."""

NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(
        [name for row in _COUNTRIES for name in row] + [row[0] for row in _CITIES] + [row[0] for row in _PEOPLE]
    )
)
"""Countries, capitals, languages, cities and people of ``CORPUS``: one token each in every family."""

ANSWER_WORDS: tuple[str, ...] = ("yes", "no", "maybe", "true", "false", "good", "bad", "great", "terrible")
"""Verbalizer words that are also one token each (word-initial form) in every family."""

# ---------------------------------------------------------------------------------------------------------------
# Tokenizers. Only the plain BPE trainer is used: its ties are broken by the sorted alphabet, so it is deterministic
# across processes, whereas the WordPiece and Unigram trainers (and BPE with a "##" prefix) change from run to run.
# WordPiece and Unigram vocabularies are derived from a BPE segmentation of the corpus instead.
# ---------------------------------------------------------------------------------------------------------------

_BPE_MAX_VOCAB = 5000  # a bound only: training stops when no pair occurs twice (700-1200 tokens)
# Printable ASCII and Latin-1 letters are always in the vocabulary, so that unseen words (and brackets, digits, ...)
# split into pieces instead of becoming unknown, as in the real vocabularies.
_ALPHABET = sorted(
    set(string.digits + string.ascii_letters + string.punctuation)
    | {chr(c) for c in range(0xC0, 0x100) if chr(c).isalpha()}
)


def _train_bpe(pre_tokenizer: Any, normalizer: Any = None, byte_level: bool = False) -> Tokenizer:
    """Train a BPE merging every pair seen at least twice in ``CORPUS`` (no special tokens)."""
    tokenizer = Tokenizer(models.BPE())
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_MAX_VOCAB,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if byte_level else _ALPHABET,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def _bpe_vocab_and_merges(tokenizer: Tokenizer) -> tuple[list[str], list[tuple[str, str]]]:
    """Return a trained BPE's tokens in id order and its merges in rank order."""
    model = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].__getitem__)
    return tokens, [tuple(merge) for merge in model["merges"]]


def _piece_counts(tokenizer: Tokenizer, continuation_prefix: str = "") -> Counter[str]:
    """Count the pieces of the BPE segmentation of ``CORPUS`` (non-initial pieces get ``continuation_prefix``)."""
    counts: Counter[str] = Counter()
    for sentence in CORPUS:
        normalized = tokenizer.normalizer.normalize_str(sentence) if tokenizer.normalizer else sentence
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized):
            pieces = [token.value for token in tokenizer.model.tokenize(word)]
            counts.update([pieces[0]] + [continuation_prefix + piece for piece in pieces[1:]])
    return counts


def _vocab_dict(tokens: Iterable[str]) -> dict[str, int]:
    """Number tokens in order, keeping the first occurrence of duplicates."""
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


def _special(content: str, lstrip: bool = False) -> AddedToken:
    """A special added token that is matched before normalization, like the real checkpoints' specials."""
    return AddedToken(content, lstrip=lstrip, normalized=False, special=True)


def _wordpiece_backend() -> Tokenizer:
    """Cased BERT WordPiece: specials, characters, ``##`` characters, then corpus pieces by frequency."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    bpe = _train_bpe(pre_tokenizers.BertPreTokenizer(), normalizer)
    alphabet = sorted(token for token in bpe.get_vocab() if len(token) == 1)
    counts = _piece_counts(bpe, continuation_prefix="##")
    pieces = sorted(counts, key=lambda piece: (-counts[piece], piece))
    vocab = _vocab_dict([*specials, *alphabet, *("##" + char for char in alphabet), *pieces])
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([_special(token) for token in specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tokenizer


def _byte_level_backend(specials: list[str]) -> Tokenizer:
    """GPT-2 / RoBERTa byte-level BPE with ``specials`` first (RoBERTa) or no specials in the model (GPT-2)."""
    tokens, merges = _bpe_vocab_and_merges(
        _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), byte_level=True)
    )
    tokenizer = Tokenizer(models.BPE(_vocab_dict([*specials, *tokens]), merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([_special(token) for token in specials])
    return tokenizer


def _roberta_backend() -> Tokenizer:
    """RoBERTa / BART: ``<s> A </s></s> B </s>``, with ``<mask>`` last and left-stripping like the real one."""
    tokenizer = _byte_level_backend(["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer.add_special_tokens([_special("<mask>", lstrip=True)])
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")),
        ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tokenizer


def _gpt2_backend() -> Tokenizer:
    """GPT-2: ``<|endoftext|>`` last; the post-processor only fixes offsets (kept with their leading space)."""
    tokenizer = _byte_level_backend([])
    tokenizer.add_special_tokens([_special("<|endoftext|>")])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _llama_backend() -> Tokenizer:
    """Llama: ``▁`` BPE with byte fallback (``<0x00>``..``<0xFF>`` after the specials) and a ``<s>`` prefix."""
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    # Train on words (split=True) so no merge spans a space; the real tokenizer then encodes unsplit text.
    bpe = _train_bpe(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True))
    tokens, merges = _bpe_vocab_and_merges(bpe)
    vocab = _vocab_dict([*specials, *byte_tokens, *tokens])
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([_special(token) for token in specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tokenizer


def _unigram_backend(specials: list[AddedToken], normalizer: Any) -> Tokenizer:
    """SentencePiece-style Unigram (ALBERT, T5): BPE pieces scored by smoothed log-frequency in ``CORPUS``."""
    pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    bpe = _train_bpe(pre_tokenizer, normalizer)
    counts = _piece_counts(bpe)
    pieces = bpe.get_vocab()
    total = sum(counts.values()) + 0.5 * len(pieces)
    scored = sorted(((piece, math.log((counts[piece] + 0.5) / total)) for piece in pieces), key=lambda p: (-p[1], p[0]))
    vocab = [(token.content, 0.0) for token in specials] + scored
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=[token for token, _ in vocab].index("<unk>")))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.add_special_tokens(specials)
    return tokenizer


def _albert_backend() -> Tokenizer:
    """ALBERT: ``[CLS] A [SEP] B [SEP]`` around a cased Unigram; ``[MASK]`` left-strips like the real one."""
    tokenizer = _unigram_backend(
        [*map(_special, ["<pad>", "<unk>", "[CLS]", "[SEP]"]), _special("[MASK]", lstrip=True)],
        normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    return tokenizer


def _t5_backend() -> Tokenizer:
    """T5: Unigram, ``A </s> B </s>``, sentinels last and in reverse so ``<extra_id_0>`` has the highest id."""
    tokenizer = _unigram_backend([_special(token) for token in ["<pad>", "</s>", "<unk>"]], normalizers.NFKC())
    tokenizer.add_special_tokens([_special(f"<extra_id_{i}>") for i in reversed(range(_NUM_SENTINELS))])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A:0 </s>:0", pair="$A:0 </s>:0 $B:1 </s>:1", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return tokenizer


_BERT_SPECIALS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_ROBERTA_SPECIALS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}
# family -> (backend builder, PreTrainedTokenizerFast keyword arguments); BERT alone returns token_type_ids.
_TOKENIZERS: dict[str, tuple[Callable[[], Tokenizer], dict[str, Any]]] = {
    "bert": (
        _wordpiece_backend,
        {**_BERT_SPECIALS, "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]},
    ),
    "distilbert": (_wordpiece_backend, _BERT_SPECIALS),
    "roberta": (_roberta_backend, _ROBERTA_SPECIALS),
    "bart": (_roberta_backend, _ROBERTA_SPECIALS),
    "albert": (
        _albert_backend,
        {
            "bos_token": "[CLS]",
            "eos_token": "[SEP]",
            "unk_token": "<unk>",
            "sep_token": "[SEP]",
            "pad_token": "<pad>",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        },
    ),
    "gpt2": (
        _gpt2_backend,
        {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
    ),
    "llama": (
        _llama_backend,
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>", "padding_side": "left"},
    ),
    "t5": (
        _t5_backend,
        {
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "extra_special_tokens": [f"<extra_id_{i}>" for i in range(_NUM_SENTINELS)],
        },
    ),
}


@functools.cache
def _backend_json(build: Callable[[], Tokenizer]) -> str:
    """Train a backend tokenizer once per process; the JSON string is immutable, hence safe to cache."""
    return build().to_str()


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """Return a new tiny tokenizer for ``family``, safe to mutate (e.g. ``add_tokens``) without affecting others.

    Llama pads on the left like the real ``LlamaTokenizer``; every other family pads on the right.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    build, kwargs = _TOKENIZERS[family]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_backend_json(build)),
        name_or_path=f"prompt-adapters/tiny-{family}",
        model_max_length=MAX_LENGTH,
        **copy.deepcopy({"model_input_names": ["input_ids", "attention_mask"], **kwargs}),
    )


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------

_HIDDEN = 32
_LAYERS = 2
_HEADS = 2
_FFN = 64


def _model_config(family: str, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """Tiny config of ``family`` whose vocabulary and special-token ids match ``tokenizer``."""
    vocab_size = len(tokenizer)
    ids = {"pad_token_id": tokenizer.pad_token_id}
    if family not in ("bert", "distilbert"):  # BERT-style configs have no BOS / EOS
        ids |= {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=_HIDDEN,
            num_hidden_layers=_LAYERS,
            num_attention_heads=_HEADS,
            intermediate_size=_FFN,
            max_position_embeddings=MAX_LENGTH,
            **ids,
        )
    if family == "roberta":
        # RoBERTa numbers positions from pad_token_id + 1 (hence 514 positions for 512 tokens in roberta-base).
        return RobertaConfig(
            vocab_size=vocab_size,
            hidden_size=_HIDDEN,
            num_hidden_layers=_LAYERS,
            num_attention_heads=_HEADS,
            intermediate_size=_FFN,
            max_position_embeddings=MAX_LENGTH + tokenizer.pad_token_id + 1,
            type_vocab_size=1,
            **ids,
        )
    if family == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab_size,
            dim=_HIDDEN,
            n_layers=_LAYERS,
            n_heads=_HEADS,
            hidden_dim=_FFN,
            max_position_embeddings=MAX_LENGTH,
            **ids,
        )
    if family == "albert":
        return AlbertConfig(
            vocab_size=vocab_size,
            embedding_size=16,
            hidden_size=_HIDDEN,
            num_hidden_layers=_LAYERS,
            num_attention_heads=_HEADS,
            intermediate_size=_FFN,
            max_position_embeddings=MAX_LENGTH,
            **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=MAX_LENGTH,
            n_embd=_HIDDEN,
            n_layer=_LAYERS,
            n_head=_HEADS,
            n_inner=_FFN,
            **ids,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=_HIDDEN,
            intermediate_size=_FFN,
            num_hidden_layers=_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=MAX_LENGTH,
            **ids,
        )
    if family == "bart":
        return BartConfig(
            vocab_size=vocab_size,
            d_model=_HIDDEN,
            encoder_layers=_LAYERS,
            decoder_layers=_LAYERS,
            encoder_attention_heads=_HEADS,
            decoder_attention_heads=_HEADS,
            encoder_ffn_dim=_FFN,
            decoder_ffn_dim=_FFN,
            max_position_embeddings=MAX_LENGTH,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            **ids,
        )
    # T5: more embedding rows than tokens, like the real checkpoints.
    return T5Config(
        vocab_size=-(-vocab_size // 128) * 128,
        d_model=_HIDDEN,
        d_kv=_HIDDEN // _HEADS,
        d_ff=_FFN,
        num_layers=_LAYERS,
        num_decoder_layers=_LAYERS,
        num_heads=_HEADS,
        relative_attention_num_buckets=8,
        decoder_start_token_id=tokenizer.pad_token_id,
        **ids,
    )


_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "bert": BertForMaskedLM,
    "roberta": RobertaForMaskedLM,
    "distilbert": DistilBertForMaskedLM,
    "albert": AlbertForMaskedLM,
    "gpt2": GPT2LMHeadModel,
    "llama": LlamaForCausalLM,
    "bart": BartForConditionalGeneration,
    "t5": T5ForConditionalGeneration,
}


def build_tiny_model(family: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Return a new randomly initialised tiny model of ``family`` (in eval mode) and its tokenizer.

    Weights depend only on ``seed``: two calls with the same seed give bit-identical parameters, and the caller's
    global torch RNG is left untouched. ``model.config.vocab_size == len(tokenizer)``, except for T5, whose
    embedding is rounded up to a multiple of 128 rows like the real checkpoints (32128 rows for 32100 tokens).
    """
    tokenizer = build_tokenizer(family)
    config = _model_config(family, tokenizer)
    config.name_or_path = tokenizer.name_or_path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[family](config)
    return model.eval(), tokenizer


def save_tiny_model(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny model and its tokenizer to ``directory`` for offline ``Auto*.from_pretrained(directory)``."""
    directory = Path(directory)
    model, tokenizer = build_tiny_model(family, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@torch.no_grad()
def widen_weights(model: torch.nn.Module, std: float = 0.2) -> None:
    """Redraw every weight but the LayerNorms from N(0, std) (from the global RNG): a tiny random model whose answers
    depend on its prompt, which its default small initialisation barely lets them do."""
    for name, param in model.named_parameters():
        if "LayerNorm" not in name:
            param.normal_(0, std)


@torch.no_grad()
def perturb_trainable(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Add Gaussian noise of ``scale`` to every trainable parameter, so a test of saving or exporting an adapter
    compares trained-looking values rather than its initialisation."""
    for param in model.parameters():
        if param.requires_grad:
            param.add_(torch.randn_like(param) * scale)
