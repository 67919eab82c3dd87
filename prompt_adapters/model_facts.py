"""Facts about a base model and a tokenizer that an adapter depends on: the kind of LM, the shapes the adapter was
built for, a digest of sampled input-embedding rows, and the tokenizer's fingerprint.

A low module: it imports nothing from the tuner or the checks, so both can use it (``tuner`` records these facts in
``adapter_config.json``, ``validation`` compares them when an adapter is attached or loaded).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from prompt_adapters.injection import block_stacks

LM_KINDS = ("masked", "causal", "seq2seq")
#: how many input-embedding rows, evenly spaced over the vocabulary, the weights digest reads
DIGEST_ROWS = 16


def detect_lm_kind(model: nn.Module) -> str:
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
