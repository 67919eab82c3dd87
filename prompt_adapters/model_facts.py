"""Facts about a base model and a tokenizer that an adapter depends on: the kind of LM, where its input-embedding
modules, transformer blocks and LM head are, how long a row it takes, the shapes the adapter was built for, a digest
of sampled input-embedding rows, and the tokenizer's fingerprint.

The lowest module of the package: it imports nothing of it, so the hooks, the tuner and the checks all read the
model through it (the tuner records these facts in ``adapter_config.json``, ``fit`` compares them when an adapter
is attached or loaded).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, get_args

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

#: the kinds of language model an adapter scores answers with
LMKind = Literal["masked", "causal", "seq2seq"]
LM_KINDS: tuple[LMKind, ...] = get_args(LMKind)
#: how many input-embedding rows, evenly spaced over the vocabulary, the weights digest reads
DIGEST_ROWS = 16


def detect_lm_kind(model: nn.Module) -> LMKind:
    """``seq2seq`` for encoder-decoders, else ``causal`` or ``masked`` from the transformers auto mappings."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    name = type(model).__name__
    classes = {cls.__name__ for cls in type(model).__mro__}  # a sharded model's class is FSDP<its class>
    if classes & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return "causal"
    if classes & set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values()):
        return "masked"
    raise ValueError(
        f"cannot tell whether {name} is a masked, causal or seq2seq LM; set lm_kind= in the adapter config"
    )


def embedding_digest(model: nn.Module) -> str | None:
    """A short digest of the base model's weights: a hash of ``DIGEST_ROWS`` input-embedding rows evenly spaced
    over the vocabulary, so two checkpoints of one architecture and shape tell apart without reading every weight.

    The rows are rounded to bfloat16 first, so the same checkpoint loaded in float32 or bfloat16 gives the same
    digest. Rounding float32 weights to float16 and then to bfloat16 can differ from rounding them to bfloat16 at
    once, so a model loaded in float16 gets a digest of its own, marked ``float16:``, compared only with digests
    taken in float16. None when the weights cannot be read here (on the meta device, or sharded as a DTensor).
    """
    weight = model.get_input_embeddings().weight
    if weight.device.type == "meta" or _is_sharded(weight):
        return None
    vocab = int(weight.shape[0])
    rows = sorted({index * vocab // DIGEST_ROWS for index in range(DIGEST_ROWS)})
    with torch.no_grad():
        sample = weight[torch.tensor(rows, device=weight.device)].to(torch.bfloat16).cpu()
    hasher = hashlib.sha256(json.dumps([vocab, rows]).encode())
    hasher.update(sample.contiguous().view(torch.int16).numpy().tobytes())
    kind = "float16" if weight.dtype == torch.float16 else "bfloat16"
    return f"{kind}:{hasher.hexdigest()[:16]}"


def _is_sharded(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a DTensor (FSDP2 and tensor parallelism shard parameters as DTensors)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return False
    return isinstance(weight, DTensor) or isinstance(weight.data, DTensor)


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The base-model facts an adapter depends on, saved with it and checked when it is loaded."""
    weight = model.get_input_embeddings().weight
    return {
        "vocab_size": int(weight.shape[0]),
        "hidden_size": int(weight.shape[1]),
        "stack_depths": [len(stack) for stack in block_stacks(model)],
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "embedding_digest": embedding_digest(model),
    }


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What ids a tokenizer produces: its class, size and a hash of its vocabulary and special tokens."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = sorted((str(token), int(tokenizer.convert_tokens_to_ids(str(token))))
                     for token in tokenizer.all_special_tokens)
    text = json.dumps([vocab, special], ensure_ascii=False)
    return {"class": type(tokenizer).__name__, "size": len(tokenizer),
            "hash": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]}


def input_embedding_modules(model: nn.Module) -> list[nn.Embedding]:
    """Every embedding module whose weight is the model's input-embedding weight."""
    weight = model.get_input_embeddings().weight
    return [m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is weight]


def block_stacks(model: nn.Module) -> list[list[nn.Module]]:
    """Transformer blocks grouped by the module list holding them (one stack for encoders and decoders each).

    Blocks are the ``GradientCheckpointingLayer`` modules of a ``ModuleList``. Architectures whose blocks are plain
    modules (older ones such as CTRL or CPM-Ant) fall back to the outermost module lists whose items are all of one
    class and hold parameters of their own submodules."""
    stacks: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for child in module:
                if isinstance(child, GradientCheckpointingLayer):
                    stacks.setdefault(id(module), []).append(child)
    return list(stacks.values()) or _plain_block_stacks(model)


def block_width(model: nn.Module) -> int:
    """Width of the hidden states between blocks: the config's ``hidden_size``, which differs from the input
    embedding's width in models that project their embeddings (ALBERT, RemBERT, ELECTRA-small, OPT-350m)."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = getattr(text_config, "hidden_size", None)
    return width if isinstance(width, int) else int(model.get_input_embeddings().weight.shape[1])


def _plain_block_stacks(model: nn.Module) -> list[list[nn.Module]]:
    """The outermost module lists of same-class composite modules (blocks that are not GradientCheckpointingLayer)."""
    inside: set[int] = set()
    stacks = []
    for module in model.modules():  # parents come before their children
        if id(module) in inside or not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kind = type(module[0])
        composite = all(type(child) is kind and list(child.children()) for child in module)
        if composite and list(module.parameters()):
            stacks.append(list(module))
            inside.update(id(sub) for sub in module.modules())
    return stacks


def lm_head_entry(model: nn.Module) -> nn.Module | None:
    """The module where the LM head starts: the model's direct child that holds the output embedding (BERT's
    ``cls``, RoBERTa's ``lm_head``, GPT-2's ``lm_head``), so gathering score positions there also spares the
    head's transform layers on positions nobody asked for. Falls back to the output embedding itself. A child that
    is a whole LM (the decoder of ``EncoderDecoderModel``) is searched in turn."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None:
        return None
    backbone = model.get_input_embeddings()
    for child in model.children():
        owned = list(child.modules())
        if any(m is output for m in owned) and not any(m is backbone for m in owned):
            if hasattr(child, "get_output_embeddings") and child.get_output_embeddings() is output:
                return lm_head_entry(child)
            return child
    return output


def model_max_positions(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest row the model can take: its position table (less an offset for padding-based position ids, as
    RoBERTa counts from ``padding_idx + 1``) and the tokenizer's ``model_max_length``; None when unbounded."""
    limits = []
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            offset = 0
            for module in model.modules():
                padding = getattr(module, "padding_idx", None)
                if isinstance(padding, int) and isinstance(getattr(module, "position_embeddings", None), nn.Embedding):
                    offset = padding + 1
                    break
            limits.append(value - offset)
            break
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < 1_000_000:
        limits.append(length)
    return min(limits) if limits else None
