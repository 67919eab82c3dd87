"""The one check of an adapter config against the base model it is attached to or loaded onto.

Run by the tuner when an adapter is added (``get_peft_model``, ``load_adapter``, ``PeftModel.from_pretrained``),
after the config's ``lm_kind`` is known and its templates are compiled.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from prompt_adapters.model_facts import LMKind, detect_lm_kind, model_fingerprint
from prompt_adapters.template import CompiledTemplate
from prompt_adapters.tuner.config import PromptConfig
from prompt_adapters.validation import check_tokenizer

#: the fingerprint entries an adapter's parameters are shaped by
SHAPE_FACTS = ("vocab_size", "hidden_size", "stack_depths")


def check_adapter_fits(name: str, config: PromptConfig, model: nn.Module) -> dict[str, Any]:
    """Refuse adapter ``name`` on ``model`` where it does not fit; return the model's fingerprint.

    ``lm_kind`` must agree with the model's own kind; an adapter saved with a fingerprint needs the shapes it was
    made for (vocabulary, hidden size, block stacks); compiled template ids must exist in the vocabulary; an adapter
    saved with a ``model_type`` loads only into that type; where the base model was loaded from a local directory
    holding a tokenizer, that tokenizer must be the one the templates were compiled with. Another checkpoint of the
    same shapes only warns (``check_embedding_digest``).
    """
    try:
        detected_lm_kind: LMKind | None = detect_lm_kind(model)
    except ValueError:  # a model class outside transformers' auto mappings: trust the config
        detected_lm_kind = None
    if config.lm_kind is not None and detected_lm_kind is not None and config.lm_kind != detected_lm_kind:
        raise ValueError(
            f"adapter {name!r} has lm_kind={config.lm_kind!r}, but {type(model).__name__} is a {detected_lm_kind} "
            f"LM; expected lm_kind={detected_lm_kind!r} (or None to detect it)"
        )
    fingerprint = model_fingerprint(model)
    saved = config.model_fingerprint or {}
    vocab = fingerprint["vocab_size"]
    if saved and saved.get("vocab_size") != vocab:
        _refuse_shape(name, saved, fingerprint, "vocab_size")
    for template in config.compiled_templates or []:
        ids = [i for piece in template["pieces"] if piece["kind"] in ("hard", "soft") for i in piece["ids"]]
        outside = sorted({i for i in ids if i >= vocab})
        if outside:
            raise ValueError(
                f"template {template['source']!r} of adapter {name!r} was compiled to token ids {outside[:5]} beyond "
                f"this model's vocabulary of {vocab}; expected templates compiled with this model's tokenizer"
            )
    current = fingerprint["model_type"]
    if saved.get("model_type") and current and saved["model_type"] != current:
        raise ValueError(
            f"adapter {name!r} was made for a {saved['model_type']!r} model, but this model is {current!r}; load it "
            f"on a {saved['model_type']!r} base model"
        )
    if config.model_fingerprint is None:  # a new adapter: nothing saved to compare
        return fingerprint
    if config.tokenizer_fingerprint:
        local = _local_tokenizer(model)
        if local is not None:
            check_tokenizer(config.tokenizer_fingerprint, local, f"adapter {name!r} on {model.name_or_path}")
    for key in SHAPE_FACTS:
        if saved.get(key) != fingerprint[key]:
            _refuse_shape(name, saved, fingerprint, key)
    check_embedding_digest(name, saved.get("embedding_digest"), fingerprint["embedding_digest"])
    return fingerprint


def _refuse_shape(name: str, saved: dict[str, Any], current: dict[str, Any], key: str) -> None:
    """Raise: adapter ``name`` was made for another ``key`` (a shape its parameters have) than this model's."""
    raise ValueError(
        f"adapter '{name}' was made for a base model with {key}={saved.get(key)} "
        f"(model_type={saved.get('model_type')}), but this model has {key}={current[key]} "
        f"(model_type={current['model_type']}); load it on the base model it was trained for"
    )


def _local_tokenizer(model: nn.Module) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved next to a base model loaded from a local directory (None when there is none)."""
    source = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    if not source or not os.path.isdir(source):
        return None
    if not any(os.path.exists(os.path.join(source, name)) for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(source)


def check_embedding_digest(name: str, saved: str | None, current: str | None) -> None:
    """Warn when an adapter is loaded onto another checkpoint than the one it was saved with: same architecture and
    shapes, other weights (``model_facts.embedding_digest`` of both differs).

    A warning, not an error: moving an adapter to a fine-tune of its base model is legitimate. Adapters saved without
    a digest, and digests taken in another precision class (float16 against the others), are not compared.
    """
    if not saved or not current or saved == current:
        return
    if saved.split(":")[0] != current.split(":")[0]:
        return
    warnings.warn(
        f"adapter {name!r} was saved with a base model whose input-embedding digest is {saved}, but this base model's "
        f"is {current}: it is another checkpoint of the same architecture and shape, with other weights. The soft "
        "prompts were trained for the other weights and may score differently here; expected the checkpoint the "
        "adapter was trained on (moving it to a fine-tune of that checkpoint on purpose is fine)",
        UserWarning,
        stacklevel=2,
    )


def warn_rows_after_answer(name: str, templates: Sequence[CompiledTemplate]) -> None:
    """Warn, naming the count, about soft rows after ``[Y]`` in an adapter trained on a causal LM.

    A causal LM reads only the tokens before ``[Y]``, so such rows are never in its input: they get no gradient,
    keep their initial values and change no score. A warning, not an error: the adapter works as one without them,
    and a template written for masked LMs (``[X] was born in [Y] .``) is reused on causal ones.
    """
    counts = {template.source: template.soft_after_answer() for template in templates}
    unreachable = {source: count for source, count in counts.items() if count}
    if not unreachable:
        return
    listed = "; ".join(f"{source!r}: {count}" for source, count in unreachable.items())
    warnings.warn(
        f"adapter {name!r} has {sum(unreachable.values())} soft row(s) after [Y] ({listed}), which a causal LM never "
        "reads: they get no gradient and stay as initialised. Expected soft tokens before [Y] on a causal LM; remove "
        "the ones after it (words after [Y] can be kept hard with [hard: ...] or words='hard')",
        UserWarning,
        stacklevel=2,
    )
