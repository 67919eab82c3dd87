"""Every language-model architecture transformers knows, built tiny from its own config.

Discovery reads transformers' auto mappings (causal, masked and seq2seq LMs); nothing here names a model family.
A config is shrunk by generic rules that act on attribute names shared across families (widths, layer and head
counts, feed-forward sizes, experts, vocabulary, special ids), recursively through nested configs (``text_config``,
``encoder``...). An architecture whose default config cannot be built and run this way is "not buildable tiny",
with the error that stopped it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from prompt_adapters.testing import build_tokenizer
from prompt_adapters.tuner import detect_lm_kind

#: the auto mapping of each kind of LM, in discovery order (an architecture listed twice keeps its first kind)
MAPPINGS = {
    "causal": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "masked": MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    "seq2seq": MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
}
#: the tiny tokenizer paired with each kind: BOS-prefixed byte-fallback BPE, WordPiece with [MASK], T5 sentinels
TOKENIZER_FAMILY = {"causal": "llama", "masked": "bert", "seq2seq": "t5"}

WIDTH = 64
FFN = 128
LAYERS = 2
HEADS = 4
EXPERTS = 4
MAX_POSITIONS = 512
MAX_PARAMETERS = 20_000_000

# Attribute names shared by many configs; each maps to its tiny value. Head widths (head_dim, d_kv, ...) keep their
# defaults, so rotary sections and attention scales stay consistent; models deriving the head width from the hidden
# size get WIDTH / HEADS.
_WIDTHS = ("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "n_embed", "d_embed", "word_embed_proj_dim")
_FFNS = (
    "intermediate_size", "d_ff", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_inner", "n_inner",
    "moe_intermediate_size", "shared_expert_intermediate_size", "ffn_hidden_size", "expert_intermediate_size",
)
_LAYER_COUNTS = (
    "num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_decoder_layers", "encoder_layers",
    "decoder_layers", "num_encoder_layers",
)
_HEAD_COUNTS = (
    "num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads", "decoder_attention_heads",
)
_KV_HEAD_COUNTS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_EXPERTS_PER_TOKEN = ("num_experts_per_tok", "moe_topk", "num_selected_experts", "moe_k")
_POSITIONS = ("max_position_embeddings", "n_positions", "max_source_positions", "max_target_positions")


@dataclass(frozen=True)
class Architecture:
    """One model class of an auto mapping: ``kind:model_type``, e.g. ``causal:llama``."""

    kind: str
    model_type: str
    class_name: str

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.model_type}"


class NotBuildableTiny(Exception):
    """The architecture's default config could not be shrunk, built or run by the generic rules."""


def discover() -> list[Architecture]:
    """Every (model type, class) pair of the causal, masked and seq2seq LM auto mappings, each once."""
    seen: set[tuple[str, str]] = set()
    found = []
    for kind, mapping in MAPPINGS.items():
        for model_type, class_name in mapping.items():
            if (model_type, class_name) not in seen:
                seen.add((model_type, class_name))
                found.append(Architecture(kind, model_type, class_name))
    return found


def _set(config: PretrainedConfig, name: str, value: Any) -> None:
    if isinstance(getattr(config, name, None), int) and not isinstance(getattr(config, name), bool):
        setattr(config, name, value)


def _kept_layers(config: PretrainedConfig, layers_before: set[int]) -> list[int] | None:
    """Which layers of a config with per-layer lists (``layer_types``...) to keep: the first of each distinct kind
    of layer (hybrids keep one attention and one linear-attention layer), then the first ones, LAYERS at least."""
    lists = [v for v in vars(config).values() if isinstance(v, list) and len(v) in layers_before and len(v) > LAYERS]
    if not lists:
        return None
    signature = [tuple(repr(values[i]) for values in lists) for i in range(len(lists[0]))]
    kept = sorted({signature.index(kind) for kind in signature})
    kept += [i for i in range(len(signature)) if i not in kept][: max(LAYERS - len(kept), 0)]
    return sorted(kept)


def _shrink(config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, vocab_size: int) -> None:
    """Shrink ``config`` in place by the generic rules, then its nested configs."""
    layers_before = {getattr(config, name) for name in _LAYER_COUNTS if isinstance(getattr(config, name, None), int)}
    kept = _kept_layers(config, layers_before)
    layers = LAYERS if kept is None else len(kept)
    heads_before = next((getattr(config, n) for n in _HEAD_COUNTS if isinstance(getattr(config, n, None), int)), 0)
    for name in _WIDTHS:
        _set(config, name, WIDTH)
    if isinstance(getattr(config, "embedding_size", None), int):  # factorised embeddings (ALBERT-like) stay narrower
        config.embedding_size = WIDTH // 2
    for name in _FFNS:
        _set(config, name, FFN)
    for name in _LAYER_COUNTS:
        _set(config, name, layers)
    for name in _HEAD_COUNTS:
        _set(config, name, HEADS)
    for name in _KV_HEAD_COUNTS:
        value = getattr(config, name, None)
        if isinstance(value, int):  # keep the kind of attention: multi-head, grouped or multi-query
            setattr(config, name, HEADS if value == heads_before else min(value, 2))
    for name in _EXPERT_COUNTS:
        _set(config, name, EXPERTS)
    for name in _EXPERTS_PER_TOKEN:
        _set(config, name, 2)
    for name in _POSITIONS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > MAX_POSITIONS:
            setattr(config, name, MAX_POSITIONS)
    if kept is not None:  # per-layer lists (layer_types, ...) follow the layers kept
        for name, value in list(vars(config).items()):
            if isinstance(value, list) and len(value) in layers_before and len(value) > LAYERS:
                setattr(config, name, [value[i] for i in kept])
    for name in ("n_group", "topk_group"):
        _set(config, name, 1)
    if isinstance(getattr(config, "rotary_dim", None), int):  # rotary width cannot exceed the derived head width
        config.rotary_dim = min(config.rotary_dim, WIDTH // HEADS)
    for name, value in list(vars(config).items()):  # extra vocabularies (per-layer inputs, entities...)
        if name.endswith("vocab_size") and name != "vocab_size" and isinstance(value, int) and value > vocab_size:
            setattr(config, name, vocab_size)
    if isinstance(getattr(config, "vocab_size", None), int):
        config.vocab_size = vocab_size
        for name, token_id in (
            ("pad_token_id", tokenizer.pad_token_id),
            ("bos_token_id", tokenizer.bos_token_id),
            ("eos_token_id", tokenizer.eos_token_id),
        ):
            if hasattr(config, name) and token_id is not None:
                setattr(config, name, token_id)
        if isinstance(getattr(config, "mask_token_id", None), int):  # never the pad id (XLM zeroes pad positions)
            mask_id = tokenizer.mask_token_id
            config.mask_token_id = mask_id if mask_id is not None else tokenizer.eos_token_id
        if hasattr(config, "decoder_start_token_id"):
            config.decoder_start_token_id = tokenizer.pad_token_id
    for value in list(vars(config).values()):
        if isinstance(value, PretrainedConfig):
            _shrink(value, tokenizer, vocab_size)


AUTO_CLASSES = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM, "seq2seq": AutoModelForSeq2SeqLM}


def _lm_kind(arch: Architecture, encoder_decoder: bool) -> str:
    return "seq2seq" if encoder_decoder else ("masked" if arch.kind == "masked" else "causal")


def _build_with(arch: Architecture, lm_kind: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Shrink the default config around the tiny tokenizer of ``lm_kind`` and build the model under ``seed``."""
    tokenizer = build_tokenizer(TOKENIZER_FAMILY[lm_kind])
    tokenizer.padding_side = "left" if lm_kind == "causal" else "right"
    try:
        config = AutoConfig.for_model(arch.model_type)
        _shrink(config, tokenizer, len(tokenizer))
        if lm_kind == "seq2seq":
            config.decoder_start_token_id = tokenizer.pad_token_id
        with torch.device("meta"):  # count the parameters before allocating them
            size = sum(p.numel() for p in AUTO_CLASSES[arch.kind].from_config(config).parameters())
        if size > MAX_PARAMETERS:
            raise NotBuildableTiny(f"{size:,} parameters after shrinking (more than {MAX_PARAMETERS:,})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AUTO_CLASSES[arch.kind].from_config(config)
    except NotBuildableTiny:
        raise
    except Exception as error:  # any failure of the generic rules is a finding, reported with its reason
        raise NotBuildableTiny(f"{type(error).__name__}: {error}") from error
    return model, tokenizer


@dataclass
class Built:
    """A tiny model, its tokenizer, and its kind of LM as the adapter must be told (None: detected)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    lm_kind: str
    lm_kind_given: str | None


def build(arch: Architecture, seed: int = 0) -> Built:
    """A tiny randomly initialised ``arch`` in eval mode and its tokenizer; NotBuildableTiny with the reason.

    The kind of LM comes from the config (encoder-decoder) and the mapping: a decoder-only model listed as seq2seq
    (speech-to-text models whose text side is a causal LM) is a causal LM for text prompts.
    """
    try:
        encoder_decoder = bool(getattr(AutoConfig.for_model(arch.model_type), "is_encoder_decoder", False))
    except Exception as error:
        raise NotBuildableTiny(f"{type(error).__name__}: {error}") from error
    lm_kind = _lm_kind(arch, encoder_decoder)
    model, tokenizer = _build_with(arch, lm_kind, seed)
    built_kind = _lm_kind(arch, bool(getattr(model.config, "is_encoder_decoder", False)))
    if built_kind != lm_kind:  # the class decides (a decoder-only class of an encoder-decoder family)
        lm_kind = built_kind
        model, tokenizer = _build_with(arch, lm_kind, seed)
    try:
        given = None if detect_lm_kind(model) == lm_kind else lm_kind
    except ValueError:  # detection reads the auto mappings; the user is told to name the kind
        given = lm_kind
    return Built(model.eval(), tokenizer, lm_kind, given)


def check_runs_bare(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """One forward of the bare model on tokenizer output, or NotBuildableTiny: the model needs more than text."""
    inputs = dict(tokenizer(["Dante was born in Florence ."], return_tensors="pt"))
    inputs.pop("token_type_ids", None)
    if getattr(model.config, "is_encoder_decoder", False):
        start = getattr(model.config, "decoder_start_token_id", None)
        if start is None:
            raise NotBuildableTiny("the seq2seq config has no decoder_start_token_id")
        inputs["decoder_input_ids"] = torch.tensor([[start, 5]])
    try:
        with torch.no_grad():
            model(**inputs)
    except Exception as error:
        raise NotBuildableTiny(f"the bare model does not run on text: {type(error).__name__}: {error}") from error
