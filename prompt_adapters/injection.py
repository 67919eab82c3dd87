"""Hooks that put soft vectors into a frozen HF model without touching its code or its vocabulary.

* Pseudo ids (``>= vocab_size``) mark prompt positions. A pre-hook on every ``nn.Embedding`` that shares the
  input-embedding weight (T5 and BART have several) maps them to real ids, and a forward hook overwrites the
  embedding output at those positions with the active adapter's vectors. Sequence length, attention mask,
  position ids and logits therefore stay aligned with the caller's tokens.
* Optional per-layer deltas are added at prompt positions to the input of the first block of each stack and to
  the output of every block (transformer blocks are found as ``GradientCheckpointingLayer`` modules, else as the
  outermost module lists of same-class composite modules).
* A pre-hook on the output embedding gathers the hidden states at the requested score positions only, so the LM
  head is never computed on positions nobody asked for.
* A pre/post hook pair on the model itself takes the scoring keys out of the forward kwargs and lets the method
  turn the gathered logits into its loss and answer distribution.
* Inputs without any prompt position pass untouched (the output does not depend on the adapter), and an enabled
  adapter warns once that it met such inputs, naming the way to build inputs through its template.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from prompt_adapters.model_facts import block_stacks, input_embedding_modules, lm_head_entry
from prompt_adapters.scoring import IGNORE

#: forward keyword arguments the hooks consume before the model sees them
SCORING_KEYS = ("score_positions", "score_targets", "candidate_ids", "prompt_ids", "num_choices", "choice_labels")


@dataclass
class ScoreRequest:
    """The scoring keys of one forward call."""

    positions: torch.Tensor
    targets: torch.Tensor | None
    candidate_ids: torch.Tensor | None
    num_choices: int | None = None
    choice_labels: torch.Tensor | None = None


#: how a user turns text into inputs that carry the adapter's prompt positions (named by the no-prompt warning)
PROMPT_INPUTS_HINT = (
    "build the inputs through the adapter's template with PromptCollator(tokenizer, model).inputs(texts) "
    "(PromptGenCollator for PromptGen), see docs/peft.md#inputs-from-raw-text"
)


class PromptSource(Protocol):
    """What the hooks need from the adapter state (implemented by the tuner layer)."""

    #: whether the adapters are disabled (``disable_adapter()``): prompt positions then get the template's words
    disable_adapters: bool

    def current_adapter(self) -> str | None:
        """The active adapter's name, None when no adapter is left (all deleted)."""
        ...

    def has_soft_rows(self, name: str) -> bool:
        """Whether adapter ``name`` puts any vector into the input (all-hard templates have none to miss)."""
        ...

    #: one adapter name per input row with peft's ``adapter_names``, else None
    row_adapters: list[str] | None

    def check_rows(self, pseudo: torch.Tensor, rows: torch.Tensor) -> None:
        """Refuse prompt positions the rows' adapters do not have (per-row adapters)."""
        ...

    def hard_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """The template's own word ids standing in for soft rows ``rows`` (read while disabled)."""
        ...

    def active_table(self) -> torch.Tensor | None:
        """The vectors at the prompt positions: (soft rows, hidden), or per input row (rows, soft rows, hidden) with
        ``adapter_names``; None while disabled."""
        ...

    def active_delta(self, stack: int, depth: int) -> torch.Tensor | None:
        """The delta added at prompt positions after block ``depth`` of ``stack``; None for none."""
        ...

    def finish_scoring(self, request: ScoreRequest, output: Any) -> Any:
        """The model's output with the method's answer fields and loss, from the logits at the answer slots."""
        ...

    #: extra forward kwargs the method consumes (e.g. PromptGen's generator inputs)
    forward_keys: tuple[str, ...]

    def prepare(
        self, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any], request: ScoreRequest | None
    ) -> tuple[dict[str, Any], ScoreRequest | None]:
        """Before the model runs: consume ``forward_keys`` from ``kwargs``; may rewrite inputs and score request."""
        ...

    def end_forward(self) -> None:
        """After every forward: drop per-batch state."""
        ...


def _replace_first(args: tuple, kwargs: dict, key: str, value: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, key: value}


def _first(args: tuple, kwargs: dict, key: str) -> Any:
    return args[0] if args else kwargs.get(key)


class PromptHooks:
    """Installs and removes the hooks of one prompt adapter on one model."""

    def __init__(self, model: nn.Module, source: PromptSource, deep: bool = False) -> None:
        self.model = model
        self.source = source
        self.vocab_size = model.get_input_embeddings().weight.shape[0]
        self.embeddings = input_embedding_modules(model)
        self.stacks = block_stacks(model) if deep else []
        self.positions: tuple[torch.Tensor, torch.Tensor] | None = None
        self.request: ScoreRequest | None = None
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._paused = False
        self.saw_prompt = False
        self.generating = False
        self._continuation = False
        self.warned: set[str] = set()
        if deep and not self.stacks:
            raise ValueError(
                f"{type(model).__name__} has no transformer blocks (GradientCheckpointingLayer modules or same-class "
                "modules in a ModuleList); deep perturbation cannot locate its layers"
            )

    def __deepcopy__(self, memo: dict) -> PromptHooks:
        """A copy of the whole model (``copy.deepcopy(peft_model)``) gets its own hooks, reading the copied adapter
        state; a module copied on its own with its hooks (peft's ``modules_to_save`` copies) keeps feeding this one.

        The model is always reached before the hooks (the tuner registers it first), so ``memo`` tells the cases apart.
        """
        if id(self.model) not in memo:
            return self
        clone = PromptHooks.__new__(PromptHooks)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone

    # ------------------------------------------------------------------------------------------ lifecycle

    def attach(self) -> None:
        """Register every hook (idempotent)."""
        if self._handles:
            return
        add = self._handles.append
        for module in self.embeddings:
            add(module.register_forward_pre_hook(self._embedding_pre_hook))
            add(module.register_forward_hook(self._embedding_hook))
        for stack_index, stack in enumerate(self.stacks):
            pre_hook = functools.partial(self._block_pre_hook, stack_index)
            add(stack[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
            for depth, block in enumerate(stack, start=1):
                add(block.register_forward_hook(functools.partial(self._block_hook, stack_index, depth)))
        head = lm_head_entry(self.model)
        if head is not None:
            add(head.register_forward_pre_hook(self._head_pre_hook))
        add(self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
        add(self.model.register_forward_hook(self._model_hook, always_call=True))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run the plain model (e.g. to read embeddings while an adapter is being created)."""
        self._paused, previous = True, self._paused
        try:
            yield
        finally:
            self._paused = previous

    def detach(self) -> None:
        """Remove every hook; the model is exactly as before attach()."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()
        self.positions = None
        self.request = None

    # ------------------------------------------------------------------------------------------ embeddings

    def _embedding_pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """Map pseudo ids to real ids; ids without a prompt position pass untouched (no link to the adapter)."""
        if self._paused:
            return None
        ids = args[0]
        pseudo = ids >= self.vocab_size
        if not bool(pseudo.any()):
            return None
        self.saw_prompt = True
        if self.source.current_adapter() is None:
            raise ValueError(
                f"the input has prompt positions (pseudo ids >= {self.vocab_size}) but the model has no prompt adapter "
                "left (all were deleted); add or load an adapter, or pass ids of the base vocabulary only"
            )
        rows = (ids - self.vocab_size).clamp(min=0)
        self.source.check_rows(pseudo, rows)
        self._pending[id(module)] = (pseudo, rows)
        return (torch.where(pseudo, self.source.hard_ids(rows), ids), *args[1:])

    def _embedding_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self._paused:
            return output
        pending = self._pending.pop(id(module), None)
        self.positions = pending
        if pending is None:
            return output
        return self.substitute(output, *pending)

    def substitute(self, embeds: torch.Tensor, pseudo: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Overwrite ``embeds`` at pseudo positions with the active adapter's vectors."""
        table = self.source.active_table()
        if table is None:
            return embeds
        available = table.shape[-2]
        if table.dim() == 3:  # one table per input row (input-dependent prompts, per-row adapters)
            if self.source.row_adapters is None:  # per-row adapters' rows were checked by check_rows
                self._check_available(rows.masked_fill(~pseudo, 0), available)
            values = self._row_lookup(table, pseudo, rows, "prompt tables")
            return embeds if values is None else torch.where(pseudo.unsqueeze(-1), values.to(embeds.dtype), embeds)
        selected = rows[pseudo]
        self._check_available(selected, available)
        return embeds.index_put((pseudo,), table[selected].to(embeds.dtype))

    def _check_available(self, rows: torch.Tensor, available: int) -> None:
        """Refuse soft rows the active adapter does not have."""
        if rows.numel() and int(rows.max()) >= available:
            raise IndexError(
                f"input has pseudo id {self.vocab_size + int(rows.max())} but the active adapter has only "
                f"{available} soft rows (ids {self.vocab_size}..{self.vocab_size + available - 1}); "
                "were these inputs built for another adapter?"
            )

    def _row_lookup(
        self, table: torch.Tensor, pseudo: torch.Tensor, rows: torch.Tensor, what: str
    ) -> torch.Tensor | None:
        """``table[row, soft row]`` at every position of a (rows, soft rows, hidden) per-row table, shaped like the
        input (positions that are not prompt positions read a valid row, for ``torch.where`` to drop); None for a
        table without soft rows. Dense on purpose: boolean-mask indexing would make the host wait for the device."""
        batch = pseudo.shape[0]
        expand = batch // max(table.shape[0], 1)
        if self.generating and expand > 1 and batch == expand * table.shape[0]:
            table = table.repeat_interleave(expand, dim=0)  # generate() expanded the rows (beams, samples)
        if table.shape[0] != batch:
            raise ValueError(f"per-row {what} for {table.shape[0]} rows, but the input has {batch}")
        if table.shape[1] == 0:
            return None
        owner = torch.arange(batch, device=pseudo.device).unsqueeze(1)
        return table[owner, rows.clamp(max=table.shape[1] - 1)]

    # ------------------------------------------------------------------------------------------ deep deltas

    def _add_delta(self, hidden: torch.Tensor, stack: int, depth: int) -> torch.Tensor:
        if self.positions is None:
            return hidden
        delta = self.source.active_delta(stack, depth)
        if delta is None:
            return hidden
        pseudo, rows = self.positions
        if hidden.dim() != 3:
            raise ValueError(
                f"block stack {stack} carries hidden states of shape {tuple(hidden.shape)}; deep perturbation adds "
                "its deltas to (batch, sequence, hidden) states and cannot place them in this layout (e.g. several "
                "residual streams per position); use MixturePromptConfig or PTuningEncoderConfig with this model"
            )
        if pseudo.shape != hidden.shape[:2]:
            raise RuntimeError(
                f"prompt positions {tuple(pseudo.shape)} do not match the hidden states {tuple(hidden.shape[:2])} "
                f"of block stack {stack}; the model changed the sequence length between embedding and blocks"
            )
        if delta.dim() == 3:
            values = self._row_lookup(delta, pseudo, rows, "deltas")
            return hidden if values is None else hidden + torch.where(pseudo.unsqueeze(-1), values.to(hidden.dtype), 0)
        return hidden.index_put((pseudo,), delta[rows[pseudo]].to(hidden.dtype), accumulate=True)

    def _block_pre_hook(self, stack: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = _first(args, kwargs, "hidden_states")
        return _replace_first(args, kwargs, "hidden_states", self._add_delta(hidden, stack, 0))

    def _block_hook(self, stack: int, depth: int, module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, (tuple, list)):  # blocks of older architectures (OpenAI GPT) return lists
            return type(output)([self._add_delta(output[0], stack, depth), *output[1:]])
        return self._add_delta(output, stack, depth)

    # ------------------------------------------------------------------------------------------ scoring

    def _head_pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.request is None:
            return None
        hidden = args[0]
        positions = self.request.positions.clamp(min=0)
        if positions.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"score_positions has {positions.shape[0]} rows but the model computed {hidden.shape[0]}"
            )
        index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return (hidden.gather(1, index), *args[1:])

    def _model_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.saw_prompt = False
        self._continuation = _continues_a_sequence(kwargs)
        labels = kwargs.get("labels")
        if torch.is_tensor(labels) and not labels.is_floating_point():
            kwargs = {**kwargs, "labels": self.ignore_prompt_labels(labels)}
        method_keys = self.source.forward_keys
        if not any(key in kwargs for key in (*SCORING_KEYS, *method_keys)):
            return args, kwargs
        kwargs = dict(kwargs)
        extra = {key: kwargs.pop(key) for key in method_keys if key in kwargs}
        positions = kwargs.pop("score_positions", None)
        targets = kwargs.pop("score_targets", None)
        candidates = kwargs.pop("candidate_ids", None)
        prompt_ids = kwargs.pop("prompt_ids", None)
        num_choices = kwargs.pop("num_choices", None)
        choice_labels = kwargs.pop("choice_labels", None)
        if positions is not None:
            if positions.dim() == 1:
                positions = positions.unsqueeze(-1)
                targets = targets.unsqueeze(-1) if targets is not None and targets.dim() == 1 else targets
            choices = None if num_choices is None else int(num_choices)
            self.request = ScoreRequest(positions, targets, candidates, choices, choice_labels)
        if extra:  # the method runs first: it may build the prompt table and repack the inputs (prompt_ids included)
            if prompt_ids is not None:
                kwargs["prompt_ids"] = prompt_ids
            kwargs, self.request = self.source.prepare(extra, kwargs, self.request)
            prompt_ids = kwargs.pop("prompt_ids", None)
        if prompt_ids is not None:
            kwargs["inputs_embeds"] = self.embeds_from_prompt_ids(kwargs.get("inputs_embeds"), prompt_ids)
        return args, kwargs

    def ignore_prompt_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with -100 at prompt positions, as peft's prompt tuning labels its virtual tokens: a pseudo id
        is no token the model can predict (a trainer that copies ``input_ids`` into ``labels`` would read past the
        LM head)."""
        return labels.masked_fill(labels >= self.vocab_size, IGNORE)

    def embeds_from_prompt_ids(self, embeds: torch.Tensor | None, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Inject soft vectors into caller-made ``inputs_embeds`` at the pseudo ids of ``prompt_ids``."""
        if embeds is None:
            raise ValueError("prompt_ids marks prompt positions of inputs_embeds; pass inputs_embeds with it")
        if prompt_ids.shape != embeds.shape[:2]:
            raise ValueError(
                f"prompt_ids has shape {tuple(prompt_ids.shape)} but inputs_embeds has {tuple(embeds.shape[:2])}"
            )
        pseudo = prompt_ids >= self.vocab_size
        if not bool(pseudo.any()):
            return embeds
        self.saw_prompt = True
        rows = (prompt_ids - self.vocab_size).clamp(min=0)
        self.source.check_rows(pseudo, rows)
        self.positions = (pseudo, rows)
        return self.substitute(embeds, pseudo, rows)

    def _model_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        request, self.request = self.request, None
        self.positions = None
        self._pending.clear()
        saw_prompt, self.saw_prompt = self.saw_prompt, False
        self.source.end_forward()
        if output is not None and not (saw_prompt or self._continuation or self.generating or self._paused):
            self.warn_no_prompt("forward")
        if request is None or output is None:
            return output
        return self.source.finish_scoring(request, output)

    # ------------------------------------------------------------------------------------------ no-prompt warning

    def warn_no_prompt(self, call: str) -> None:
        """Tell the user, once per adapter, that an enabled adapter met inputs without any prompt position."""
        name = self.source.current_adapter()
        if name is None or self.source.disable_adapters or name in self.warned or not self.source.has_soft_rows(name):
            return
        self.warned.add(name)
        warnings.warn(
            f"prompt adapter {name!r} is active but this {call} call has no prompt position (no id >= "
            f"{self.vocab_size}), so the base model ran without the adapter; {PROMPT_INPUTS_HINT}. "
            "This warning is shown once per adapter.",
            UserWarning,
            stacklevel=3,
        )

    def has_prompt(self, *tensors: Any) -> bool:
        """Whether any of the given id tensors holds a prompt position."""
        return any(torch.is_tensor(t) and bool((t >= self.vocab_size).any()) for t in tensors)

    @contextmanager
    def generation(self, *inputs: Any) -> Iterator[None]:
        """Run ``generate()``: its inputs are checked for prompt positions once, not at every (cached) step."""
        if not self.has_prompt(*inputs):
            self.warn_no_prompt("generate")
        self.generating, previous = True, self.generating
        try:
            yield
        finally:
            self.generating = previous


def attached_hooks(model: nn.Module) -> list[PromptHooks]:
    """The PromptHooks currently attached to ``model`` (a model wrapped by an earlier get_peft_model has some)."""
    found: dict[int, PromptHooks] = {}
    for hook in model._forward_pre_hooks.values():
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, PromptHooks):
            found[id(owner)] = owner
    return list(found.values())


def _continues_a_sequence(kwargs: dict[str, Any]) -> bool:
    """Whether a forward only extends a sequence whose prompt was seen before (KV cache, encoder outputs given)."""
    if kwargs.get("encoder_outputs") is not None:
        return True
    cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers renamed past_key_values to cache
    if cache is None:
        return False
    length = getattr(cache, "get_seq_length", None)
    return bool(length() > 0) if callable(length) else bool(cache)
