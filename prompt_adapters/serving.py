"""Serving a trained prompt adapter through an inference server's input embeddings.

Inference servers no longer load soft-prompt adapters; what they take instead is the prompt as input embeddings:
vLLM's ``prompt_embeds`` (one ``(length, hidden)`` tensor per request) and SGLang's ``input_embeds`` (the same
numbers as nested lists). ``prompt_embeds`` renders examples through the adapter's template and returns, per
example, the input embeddings the adapter gives the frozen model: they are read from the model's own embedding
modules while the adapter's hooks run, exactly as in training and ``generate``, so a server running the bare base
model on them computes what the adapter model computes.

Methods whose whole effect is at the input can be served this way: mixtures of soft prompts (one request per
template), P-tuning (its encoder output; ``export_static`` gives the same table) and PromptGen (the generated
prompts of each example). Deep perturbation also changes the hidden states after every block, which no input
embedding can carry, so it is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prompt_adapters.data.collator import PromptCollator, _tuner
from prompt_adapters.tuner import BASE_ROW

#: language-model kinds whose whole input is one embedding sequence (a seq2seq model also has a decoder input)
SERVABLE_KINDS = ("causal", "masked")


class _Rendered(Exception):
    """Stops the forward once the input embeddings are known (the blocks and the head are not needed)."""


def prompt_embeds(
    model: nn.Module,
    collator: PromptCollator,
    examples: str | Mapping[str, Any] | Sequence[Any],
    template: int = 0,
) -> list[torch.Tensor]:
    """The input embeddings of each example through template number ``template`` of the adapter, one
    ``(length, hidden)`` tensor per example (padding removed), in the model's dtype and on its device.

    ``examples`` is what ``collator.inputs`` takes (a text, a dict of fields, or a list of them; PromptGen examples
    also carry their manual template). Feeding tensor ``i`` to the bare base model as ``inputs_embeds`` gives the
    logits and the greedy continuation the adapter model gives for ``collator.inputs(examples[i], template)``. For
    vLLM pass it as ``{"prompt_embeds": tensor}``; for SGLang as ``input_embeds=tensor.tolist()``.
    A mixture with several templates answers with a weighted mixture of its templates' answer distributions:
    serve one request per template and combine the answers' log-probabilities with the mixture weights.
    """
    tuner = _tuner(model)
    if _tuner(collator._model) is not tuner:
        raise ValueError("the collator was made for another model; build it with PromptCollator(tokenizer, model)")
    return input_embeds(model, collator.inputs(examples, template))


def input_embeds(model: nn.Module, inputs: Mapping[str, Any]) -> list[torch.Tensor]:
    """``prompt_embeds`` of ready-made model inputs: ``input_ids`` holding the adapter's prompt positions (e.g. a chat
    conversation after its soft prompt, from ``prompt_adapters.sft.chat_prompt_ids``), with their ``attention_mask``
    when padded, and PromptGen's generator inputs. One ``(length, hidden)`` tensor per row, padding removed."""
    tuner = _tuner(model)
    inputs = dict(inputs)
    ids = inputs.get("input_ids")
    if not torch.is_tensor(ids) or ids.dim() != 2:
        got = f"shape {tuple(ids.shape)}" if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"inputs need input_ids as a (rows, length) tensor of token ids, got {got}")
    inputs.setdefault("attention_mask", torch.ones_like(ids))
    names = inputs.get("adapter_names") or [tuner.active_adapter]
    for name in dict.fromkeys(names):
        if name != BASE_ROW:
            _check_servable(tuner, name)
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured.append(output)
        raise _Rendered

    handles = [module.register_forward_hook(capture) for module in tuner.hooks.embeddings]
    try:
        with torch.no_grad(), tuner._enable_peft_forward_hooks(**inputs):
            inputs.pop("adapter_names", None)
            with tuner.hooks.generation(ids), tuner.state.generation(tuner.hooks, inputs) as prepared:
                with contextlib.suppress(_Rendered):
                    tuner.model(**prepared)
                mask = prepared["attention_mask"]
    finally:
        for handle in handles:
            handle.remove()
    if not captured:
        raise RuntimeError(
            f"{type(tuner.model).__name__} never called its input embedding module; its input embeddings cannot be "
            "read"
        )
    embeds = captured[0]
    return [row[keep.bool()].clone() for row, keep in zip(embeds, mask.to(embeds.device), strict=True)]


def _check_servable(tuner: Any, name: str) -> None:
    """Refuse adapters whose effect does not sit entirely in the input embeddings."""
    config = tuner.peft_config[name]
    if tuner.deep:
        raise ValueError(
            f"adapter {name!r} is a deep perturbation ({type(config).__name__}): besides the input it adds learned "
            "deltas to the hidden states after every transformer block, which input embeddings cannot carry, so a "
            "server fed prompt_embeds would run without them. Serve it with the HF model (PeftModel), or train an "
            "input-only method (MixturePromptConfig, PTuningEncoderConfig or PromptGenConfig) for serving"
        )
    if config.lm_kind not in SERVABLE_KINDS:
        raise ValueError(
            f"adapter {name!r} is for a {config.lm_kind} LM; input embeddings are exported for {SERVABLE_KINDS} LMs, "
            "whose whole input is one embedding sequence (a seq2seq model also needs its decoder input, which "
            "servers' prompt_embeds do not take)"
        )
    if config.modules_to_save:
        raise ValueError(
            f"adapter {name!r} also trains base-model modules {config.modules_to_save} (modules_to_save); a server "
            "running the base model would not have them. Serve a model saved with those trained modules in place, "
            "or an adapter trained with the base model frozen"
        )
