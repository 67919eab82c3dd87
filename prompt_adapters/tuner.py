"""The shared PEFT tuner of every prompt method: config base, headless adapter layer and BaseTuner subclass.

A method subclasses ``PromptConfig`` (its hyper-parameters), ``PromptLayer`` (its parameters and how they give
the prompt table, the per-layer deltas and the final answer distribution) and ``PromptTuner`` (its PEFT prefix).
Everything else (hooks, templates, save/load layout, enable/disable, multiple adapters) lives here once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, cast_adapter_dtype
from peft.utils.constants import DUMMY_TARGET_MODULES
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from prompt_adapters.injection import SCORING_KEYS, PromptHooks, ScoreRequest, attached_hooks
from prompt_adapters.model_facts import LM_KINDS, detect_lm_kind, model_fingerprint, tokenizer_fingerprint
from prompt_adapters.sharding import check_shardable, gathered_embeddings, is_sharded
from prompt_adapters.template import CompiledTemplate, WordMode, compile_templates
from prompt_adapters.validation import (
    check_adapter_fits,
    check_embedding_digest,
    check_field_types,
    check_positive,
    warn_rows_after_answer,
)

INIT_CHOICES = ("words", "random", "vocab")
#: peft's name for rows that run the bare base model in a mixed-adapter batch (``adapter_names``)
BASE_ROW = "__base__"


@dataclass
class PromptConfig(PeftConfig):
    """Fields shared by every prompt method.

    Args:
        templates: prompt templates (see ``prompt_adapters.template``), e.g. ``"[X] was born in [Y] ."``.
        words: whether plain template words become trainable soft vectors (``"soft"``, Qin & Eisner) or stay
            hard anchor tokens (``"hard"``, P-tuning).
        init: how soft rows start: ``"words"`` from their word piece's embedding (rows with no word, ``[P]``, are
            sampled from the vocabulary), ``"random"`` from a normal matched to the embedding statistics, or
            ``"vocab"`` from randomly sampled vocabulary rows.
        tokenizer_name_or_path: tokenizer used to compile the templates when no ``tokenizer`` is passed; defaults
            to the base model's ``name_or_path``.
        lm_kind: ``"masked"``, ``"causal"`` or ``"seq2seq"``; detected from the model when None.
        max_length: longest row the collator builds; input fields are truncated, prompt tokens never.
        tokenizer: (init only) a tokenizer to compile the templates with right away.
    """

    templates: list[str] = field(default_factory=list)
    words: str = field(default="soft")
    init: str = field(default="words")
    tokenizer_name_or_path: str | None = field(default=None)
    lm_kind: str | None = field(default=None)
    max_length: int | None = field(default=None)
    compiled_templates: list[dict] | None = field(default=None, metadata={"help": "filled automatically"})
    model_fingerprint: dict | None = field(default=None, metadata={"help": "filled automatically"})
    tokenizer_fingerprint: dict | None = field(default=None, metadata={"help": "filled automatically"})
    target_modules: Any = field(default=DUMMY_TARGET_MODULES)
    modules_to_save: list[str] | None = field(default=None)
    tokenizer: InitVar[PreTrainedTokenizerBase | None] = None

    def __post_init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        super().__post_init__()
        if isinstance(self.templates, str):
            self.templates = [self.templates]
        check_field_types(self, PromptConfig)
        check_positive(self, "max_length")
        if self.words not in ("soft", "hard"):
            raise ValueError(f"words must be 'soft' or 'hard', got {self.words!r}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")
        if self.lm_kind is not None and self.lm_kind not in LM_KINDS:
            raise ValueError(f"lm_kind must be one of {LM_KINDS} or None, got {self.lm_kind!r}")
        if tokenizer is not None:
            self.compile(tokenizer)

    def compile(self, tokenizer: PreTrainedTokenizerBase) -> list[CompiledTemplate]:
        """Tokenise the templates with ``tokenizer`` and keep the result in the config (saved with it).

        A config may be created without templates (peft's ``PeftConfig.from_peft_type`` builds every registered
        config from its defaults); it needs at least one by the time it is compiled.
        """
        if not self.templates:
            raise ValueError(
                f"{type(self).__name__} needs at least one template, got {self.templates!r}; "
                "e.g. templates=['[X] was born in [Y] .']"
            )
        words: WordMode = self.words  # type: ignore[assignment]
        compiled = compile_templates(self.templates, tokenizer, words)
        self.compiled_templates = [t.to_dict() for t in compiled]
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        if self.tokenizer_name_or_path is None and getattr(tokenizer, "name_or_path", ""):
            self.tokenizer_name_or_path = tokenizer.name_or_path
        return compiled

    def compiled(self) -> list[CompiledTemplate]:
        if self.compiled_templates is None:
            raise ValueError("templates are not compiled yet: pass tokenizer= to the config or call get_peft_model")
        compiled = [CompiledTemplate.from_dict(t) for t in self.compiled_templates]
        for template in compiled:
            answers = sum(piece.kind == "answer" for piece in template.pieces)
            if answers != 1:
                raise ValueError(
                    f"compiled template {template.source!r} in the adapter config has {answers} answer slots; "
                    "exactly one is required (was adapter_config.json edited by hand?)"
                )
        return compiled


class PromptLayer(nn.Module, BaseTunerLayer):
    """Headless tuner layer holding the state of every adapter of one prompt method.

    Subclasses create their parameters in ``create(name, config, model, compiled)`` and may override
    ``table``, ``delta`` and ``combine``.
    """

    adapter_layer_names: tuple[str, ...] = ("table",)
    other_param_names: tuple[str, ...] = ("templates",)

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.table = nn.ParameterDict()
        self.templates: dict[str, list[CompiledTemplate]] = {}
        self.offsets: dict[str, list[int]] = {}
        self.hard_table: dict[str, torch.Tensor] = {}
        self._active_adapter = "default"
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.frozen_peft_weight_names: dict[str, tuple[str, ...]] = {}
        #: the base model's input-embedding weight (in a tuple, so it is not registered here): device and dtype
        self._base_weight: tuple[torch.Tensor, ...] = ()
        #: one adapter name per input row during a call with peft's ``adapter_names`` (None: the active adapter)
        self.row_adapters: list[str] | None = None
        #: ``_row_lookup_tables``' last result, with the row names and device it was built for
        self._row_tables: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    # --------------------------------------------------------------------------- creation

    def add(self, name: str, config: PromptConfig, model: nn.Module) -> None:
        compiled = config.compiled()
        self.templates[name] = compiled
        offsets, total = [], 0
        for template in compiled:
            offsets.append(total)
            total += template.num_soft
        self.offsets[name] = offsets
        init_ids = [i for template in compiled for i in template.soft_init_ids()]
        fallback = _fallback_id(model)
        self.hard_table[name] = torch.tensor([i if i >= 0 else fallback for i in init_ids], dtype=torch.long)
        self._row_tables = None
        self.track_base(model)
        self.create(name, config, model, init_ids)
        self._move_adapter_to_device_of_base_layer(name)

    def track_base(self, model: nn.Module) -> None:
        """Follow ``model``'s current input-embedding weight (after sharding, the sharded one)."""
        self._base_weight = (model.get_input_embeddings().weight,)

    #: why the method cannot run on a base model sharded with ``prompt_adapters.sharding`` (None: it can)
    unshardable_reason: ClassVar[str | None] = None

    def create(self, name: str, config: PromptConfig, model: nn.Module, init_ids: list[int]) -> None:
        """Create the parameters of adapter ``name``; the default is one trainable vector per soft row."""
        self.table[name] = nn.Parameter(initial_vectors(model, init_ids, config.init))

    # --------------------------------------------------------------------------- PromptSource

    @property
    def active_name(self) -> str:
        active = self.active_adapters
        if not active:
            raise ValueError("no prompt adapter is active (all were deleted); add or load one first")
        if len(active) != 1:
            raise ValueError(f"prompt adapters run one adapter at a time; active adapters are {active}")
        return active[0]

    def current_adapter(self) -> str | None:
        """The active adapter's name, None when every adapter was deleted."""
        return self.active_name if self.active_adapters else None

    def has_soft_rows(self, name: str) -> bool:
        return any(template.num_soft for template in self.templates[name])

    def get_base_layer(self) -> nn.Module:
        """The layer is headless: it wraps no module (peft's device and dtype helpers read ``weight``)."""
        return self

    @property
    def weight(self) -> torch.Tensor:
        """The base model's input-embedding weight: the device and dtype the adapter follows."""
        if not self._base_weight:
            raise AttributeError("the prompt layer has no adapter yet, hence no base weight")
        return self._base_weight[0]

    #: whether the method mixes adapters in one batch (peft's ``adapter_names``)
    supports_adapter_names: ClassVar[bool] = True

    def row_names(self, batch: int) -> list[str]:
        """The adapter name of each of ``batch`` rows; generate() repeats every row for beams and samples."""
        names = self.row_adapters or []
        if batch != len(names):
            if batch % max(len(names), 1) or not names:
                raise ValueError(
                    f"adapter_names has {len(names)} names but the input has {batch} rows; pass one name per row"
                )
            names = [name for name in names for _ in range(batch // len(names))]
        return names

    def check_rows(self, pseudo: torch.Tensor, rows: torch.Tensor) -> None:
        """With ``adapter_names``: every prompt position belongs to its row's adapter (``"__base__"`` rows have
        none), so no row reads another adapter's soft rows."""
        if self.row_adapters is None:
            return
        names = self.row_names(rows.shape[0])
        limits = self._row_lookup_tables(names, rows.device)[0][:, 1]
        beyond = pseudo & (rows >= limits.unsqueeze(1))
        if not bool(beyond.any()):  # one check for the whole batch; the rest only names the first bad row
            return
        index = int(beyond.any(1).nonzero()[0])
        name, highest = names[index], int(rows[index][pseudo[index]].max())
        if name == BASE_ROW:
            raise ValueError(
                f"row {index} is {BASE_ROW!r} (the base model) but has prompt positions (ids >= vocabulary size); "
                "give base rows plain token ids, or name the adapter whose template built the row"
            )
        raise IndexError(
            f"row {index} has soft row {highest} but its adapter {name!r} has only {int(limits[index])} soft rows; "
            "were these inputs built for another adapter?"
        )

    def hard_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """Real token ids standing in for pseudo ids: the template's own words (used when disabled)."""
        if self.row_adapters is not None:
            info, hard = self._row_lookup_tables(self.row_names(rows.shape[0]), rows.device)
            last = (info[:, 1:] - 1).clamp(min=0)  # base rows and adapters without soft rows read a zero column
            return hard[info[:, :1], torch.minimum(rows, last)]
        return self._hard_ids_of(self.active_name, rows)

    def _row_lookup_tables(self, names: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """For per-row adapters: a (rows, 2) tensor of each row's adapter index and soft-row count (0 for base
        rows), and the adapters' hard-id tables stacked and zero-padded (one zero row last, for base rows).

        Built on the host and moved in one copy, without waiting for the device, and kept while the rows' adapters
        stay the same (a training loop repeats them): per-adapter indexing would cost one round trip each.
        """
        key = (tuple(names), device)
        if self._row_tables is not None and self._row_tables[0] == key:
            return self._row_tables[1]
        adapters = [name for name in dict.fromkeys(names) if name != BASE_ROW]
        position = {name: index for index, name in enumerate(adapters)}
        info = [[position.get(name, len(adapters)), 0 if name == BASE_ROW else self.hard_table[name].numel()]
                for name in names]
        hard = [self._hard_ids_table(name, device) for name in adapters]
        padded = nn.utils.rnn.pad_sequence([*hard, torch.zeros(1, dtype=torch.long, device=device)], batch_first=True)
        tables = (to_device(torch.tensor(info, dtype=torch.long), device), padded)
        self._row_tables = (key, tables)
        return tables

    def _hard_ids_table(self, name: str, device: torch.device) -> torch.Tensor:
        """Adapter ``name``'s hard ids, moved to ``device`` once."""
        table = self.hard_table[name]
        if table.device != device:
            table = self.hard_table[name] = table.to(device)
        return table

    def _hard_ids_of(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        table = self._hard_ids_table(name, rows.device)
        if table.numel() == 0:
            return torch.zeros_like(rows)
        return table[rows.clamp(max=table.numel() - 1)]

    def active_table(self) -> torch.Tensor | None:
        """The active adapter's table, or with ``adapter_names`` a (rows, soft rows, hidden) table: each input row's
        own adapter table, zero-padded to the largest (``"__base__"`` rows: zeros, they have no prompt position)."""
        if self.disable_adapters:
            return None
        if self.row_adapters is not None:
            return self._per_row(self.prompt_tables([name for name in dict.fromkeys(self.row_adapters)
                                                     if name != BASE_ROW]))
        return self.prompt_table(self.active_name)

    def active_delta(self, stack: int, depth: int) -> torch.Tensor | None:
        """The active adapter's delta at a depth; with ``adapter_names`` one per input row (zeros where a row's
        adapter has none there, None when no row's adapter has one)."""
        if self.disable_adapters:
            return None
        if self.row_adapters is not None:
            deltas = {name: self.delta(name, stack, depth) for name in set(self.row_adapters) - {BASE_ROW}}
            present = {name: delta for name, delta in deltas.items() if delta is not None}
            return self._per_row(present) if present else None
        return self.delta(self.active_name, stack, depth)

    def _per_row(self, tables: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stack each input row's adapter table into (rows, longest, hidden); absent adapters give zero rows."""
        names = self.row_adapters or []
        template = next(iter(tables.values()), None)
        if template is None:
            return self.weight.new_zeros(len(names), 0, self.weight.shape[1])
        longest = max(table.shape[0] for table in tables.values())
        padded = [nn.functional.pad(table, (0, 0, 0, longest - table.shape[0])) if table.shape[0] < longest else table
                  for table in tables.values()]
        stacked = torch.stack([*padded, template.new_zeros(longest, template.shape[1])])
        # each table once, then one gather by row: stacking every row's table would sum R copies in the backward
        position = {name: index for index, name in enumerate(tables)}
        owners = torch.tensor([position.get(name, len(position)) for name in names])
        return stacked[to_device(owners, stacked.device)]

    def prompt_table(self, name: str) -> torch.Tensor:
        """The (rows, hidden) matrix of soft vectors of adapter ``name``."""
        return self.table[name]

    def prompt_tables(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """``prompt_table`` of each named adapter (a mixed batch needs several); methods whose tables are computed
        override it to compute them together (P-tuning batches its encoders)."""
        return {name: self.prompt_table(name) for name in names}

    def delta(self, name: str, stack: int, depth: int) -> torch.Tensor | None:
        """The (rows, hidden) delta added at block ``depth`` of ``stack`` (0: before the first block)."""
        return None

    def finish_scoring(self, request: ScoreRequest, output: Any) -> Any:
        if self.row_adapters is not None:
            result = self.combine_rows(request, output)
        else:
            result = self.combine(self.active_name, request, output)
        loss = result.get("loss") if hasattr(result, "get") else None
        if loss is not None and torch.is_grad_enabled() and not loss.requires_grad and not self.disable_adapters:
            names = ([self.active_name] if self.row_adapters is None
                     else [name for name in dict.fromkeys(self.row_adapters) if name != BASE_ROW])
            result["loss"] = failing_backward(loss, self.untrainable_reason(names))
        return result

    def untrainable_reason(self, names: Sequence[str]) -> str:
        """Why a loss of adapters ``names`` has no gradient: nothing to train, or every parameter frozen."""
        parameters = [param for key, param in self.named_parameters() if set(key.split(".")) & set(names)]
        listed = ", ".join(repr(name) for name in names)
        if any(param.numel() for param in parameters):
            return (
                f"adapter {listed} is frozen: none of its parameters requires grad, so its loss cannot be "
                "backpropagated. PeftModel.from_pretrained loads an adapter for inference unless is_trainable=True; "
                "load it with is_trainable=True (or call set_requires_grad) to train it"
            )
        sources = [template.source for name in names for template in self.templates[name]]
        return (
            f"adapter {listed} has no trainable rows: its templates {sources} have no soft token and its mixture "
            "weights are fixed (one template, or learn_weights=False), so its loss has no gradient. Expected soft "
            "tokens to train ([P], [soft: ...] or words='soft'); to score it as a fixed prompt, run it under "
            "torch.no_grad()"
        )

    def combine_rows(self, request: ScoreRequest, output: Any) -> Any:
        """``combine`` of a batch mixing adapters (``adapter_names``); methods that score such batches override it
        (see ``MixturePromptLayer.combine_rows``)."""
        raise ValueError(f"{type(self).__name__} scores one adapter per batch; adapter_names is not supported")

    #: extra forward kwargs the method consumes; ``prepare`` receives them before the model runs
    forward_keys: tuple[str, ...] = ()

    def prepare(
        self, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any], request: ScoreRequest | None
    ) -> tuple[dict[str, Any], ScoreRequest | None]:
        """Method hook before the model runs (may rewrite the inputs and the score request)."""
        return kwargs, request

    def end_forward(self) -> None:
        """Method hook after every forward (drops per-batch state)."""

    @contextmanager
    def generation(self, hooks: PromptHooks, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The ``generate()`` inputs, prepared once for every decoding step: ``prompt_ids`` put the soft vectors into
        ``inputs_embeds`` up front; scoring keys are refused (generate() has no answer slot to score)."""
        scoring = [key for key in SCORING_KEYS if key != "prompt_ids" and key in kwargs]
        if scoring:
            raise ValueError(
                f"generate() got the scoring keys {scoring} of a PromptCollator training batch; pass the inputs of "
                "PromptCollator(tokenizer, model).inputs(texts) instead (input_ids and attention_mask)"
            )
        kwargs = dict(kwargs)
        prompt_ids = kwargs.pop("prompt_ids", None)
        if prompt_ids is not None:
            kwargs["inputs_embeds"] = hooks.embeds_from_prompt_ids(kwargs.get("inputs_embeds"), prompt_ids)
        yield kwargs

    def combine(self, name: str, request: ScoreRequest, output: Any) -> Any:
        """Turn gathered logits into the method's answer distribution and loss (see methods.mixture)."""
        raise NotImplementedError

    def num_templates(self, name: str | None = None) -> int:
        return len(self.templates[name or self.active_name])

    def soft_offsets(self, name: str | None = None) -> list[int]:
        return self.offsets[name or self.active_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.offsets.pop(adapter_name, None)
        self.hard_table.pop(adapter_name, None)
        self._row_tables = None

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """peft's move to the base weight's device and float dtype; the tuner's autocast then upcasts to fp32."""
        super()._move_adapter_to_device_of_base_layer(adapter_name, device)
        if adapter_name in self.hard_table:
            self.hard_table[adapter_name] = self.hard_table[adapter_name].to(device or self.weight.device)


class _FailingBackward(torch.autograd.Function):
    """Identity on a loss whose ``backward()`` raises ``RuntimeError(reason)`` (see ``failing_backward``)."""

    @staticmethod
    def forward(ctx: Any, loss: torch.Tensor, anchor: torch.Tensor, reason: str) -> torch.Tensor:
        ctx.reason = reason
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[None, ...]:
        raise RuntimeError(ctx.reason)


def failing_backward(loss: torch.Tensor, reason: str) -> torch.Tensor:
    """``loss`` (same value) whose ``backward()`` fails with ``reason``: the loss of an adapter with nothing to train.

    Without it, ``loss.backward()`` fails inside torch with "element 0 of tensors does not require grad", naming
    neither the adapter nor the cause. A fresh leaf that requires grad lets ``backward()`` reach the reason.
    """
    anchor = torch.zeros((), device=loss.device, requires_grad=True)
    return _FailingBackward.apply(loss, anchor, reason)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``; to a GPU through pinned memory, so the host does not wait for it."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _fallback_id(model: nn.Module) -> int:
    """A real token id standing in for soft rows without a word: unk, pad or eos if inside the vocabulary, else 0."""
    config = getattr(model, "config", None)
    vocab = model.get_input_embeddings().weight.shape[0]
    for name in ("unk_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int) and 0 <= value < vocab:
            return value
    return 0


def initial_vectors(model: nn.Module, init_ids: list[int], init: str) -> torch.Tensor:
    """Starting soft vectors in fp32, as the model's own embedding modules would output them.

    ``words`` copies each row's word piece through the embedding module (so BART's scaling is included);
    rows without a word and ``vocab`` sample vocabulary rows; ``random`` draws from a normal distribution with the
    per-dimension mean and std of the embedding matrix (the soft-prompts reference code's random init).
    """
    embedding = model.get_input_embeddings()
    weight = embedding.weight
    generator_ids = torch.randint(0, weight.shape[0], (len(init_ids),))
    if init == "random":
        stats = weight.detach().float()
        scale = _embed_scale(embedding, weight)
        mean, std = stats.mean(0), stats.std(0)
        return (mean + std * torch.randn(len(init_ids), weight.shape[1])) * scale
    ids = torch.tensor(init_ids, dtype=torch.long)
    ids = generator_ids if init == "vocab" else torch.where(ids >= 0, ids, generator_ids)
    with torch.no_grad():
        vectors = embedding(ids.to(weight.device)).detach().float().cpu()
    return vectors.clone()


def _embed_scale(embedding: nn.Module, weight: torch.Tensor) -> float:
    """The factor the embedding module applies after the lookup (1 for most models, sqrt(d) for scaled ones)."""
    with torch.no_grad():
        probe = torch.tensor([0], device=weight.device)
        raw = weight[0].float()
        out = embedding(probe)[0].float()
    norm = raw.norm()
    return float(out.norm() / norm) if norm > 0 else 1.0


class PromptTuner(BaseTuner):
    """BaseTuner of every prompt method: adapter state in one headless layer, behaviour through hooks."""

    prefix: str = "prompt_"
    tuner_layer_cls = PromptLayer
    layer_cls: ClassVar[type[PromptLayer]] = PromptLayer
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}
    uses_shared_state = True
    deep: ClassVar[bool] = False

    @property
    def state(self) -> PromptLayer:
        return getattr(self, self.prefix + "state")

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        self._adapter_being_added = adapter_name
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        if self.peft_config[adapter_name].inference_mode:
            self.state.set_requires_grad(adapter_name, requires_grad=False)

    def _prepare_model(self, peft_config: PromptConfig, model: nn.Module) -> None:
        """Compile templates, check the config fits the model, then create the adapter and the hooks."""
        adapter_name = self._adapter_being_added
        self._check_fits(adapter_name, peft_config, model)
        if not hasattr(self, self.prefix + "state"):
            self._replace_earlier_hooks(model)
            setattr(self, self.prefix + "state", self.layer_cls())
            self.hooks = PromptHooks(model, self.state, deep=self.deep)
            self.hooks.attach()
        if is_sharded(model):
            check_shardable(self.state)
        with self.hooks.paused(), gathered_embeddings(model):  # a sharded base: the adapter starts from whole rows
            self.state.add(adapter_name, peft_config, model)
        self.state.track_base(model)
        self.state.set_adapter(self.active_adapters)
        # rows that are parameters of their own (not computed from every row by an encoder or a generator)
        if peft_config.lm_kind == "causal" and not peft_config.inference_mode and adapter_name in self.state.table:
            warn_rows_after_answer(adapter_name, self.state.templates[adapter_name])

    @staticmethod
    def _replace_earlier_hooks(model: nn.Module) -> None:
        """A model wrapped a second time runs the new adapter: the earlier PeftModel's hooks are removed, with peft's
        warning (its layers sit inside the model, so peft sees them; ours are hooks, so we look for them)."""
        earlier = attached_hooks(model)
        if not earlier:
            return
        warnings.warn(
            "You are trying to modify a model with PEFT for a second time. If you want to reload the model with a "
            "different config, make sure to call `.unload()` before. The prompt hooks of the earlier PeftModel are "
            "removed from this model: the new adapter is the one that runs, and the earlier PeftModel no longer "
            "applies its prompts.",
            UserWarning,
            stacklevel=4,
        )
        for hooks in earlier:
            hooks.detach()

    def _check_fits(self, adapter_name: str, config: PromptConfig, model: nn.Module) -> None:
        if config.lm_kind is None:
            config.lm_kind = detect_lm_kind(model)
        if config.compiled_templates is None:
            source = config.tokenizer_name_or_path or getattr(model, "name_or_path", None)
            if not source:
                raise ValueError(
                    "cannot compile the templates: pass tokenizer= to the config or set tokenizer_name_or_path"
                )
            config.compile(AutoTokenizer.from_pretrained(source))
        check_adapter_fits(adapter_name, config, model)
        fingerprint = model_fingerprint(model)
        if config.model_fingerprint is None:
            config.model_fingerprint = fingerprint
            return
        saved = config.model_fingerprint
        for key in ("vocab_size", "hidden_size", "stack_depths"):
            if saved.get(key) != fingerprint[key]:
                raise ValueError(
                    f"adapter '{adapter_name}' was made for a base model with {key}={saved.get(key)} "
                    f"(model_type={saved.get('model_type')}), but this model has {key}={fingerprint[key]} "
                    f"(model_type={fingerprint['model_type']}); load it on the base model it was trained for"
                )
        check_embedding_digest(adapter_name, saved.get("embedding_digest"), fingerprint["embedding_digest"])

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """Drop the adapter name from ``...<prefix>state.<attr>.<adapter>[.<rest>]`` keys, nested modules included.

        peft's default only handles the name as the last or second-to-last segment; encoders (ModuleDicts of
        modules) have it deeper, and would otherwise load under another adapter name with random weights.
        """
        head, marker, tail = key.partition(cls.prefix + "state.")
        parts = tail.split(".")
        if marker and len(parts) >= 2 and parts[1] == adapter_name:
            return head + marker + ".".join([parts[0], *parts[2:]])
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        """Never called: the method targets no module (its state is the headless layer)."""

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for _name, param in model.named_parameters():
            param.requires_grad = False
        if hasattr(self, self.prefix + "state") and self.active_adapters:
            self.state.set_adapter(self.active_adapters)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        """peft's ``set_requires_grad``: the adapter state lives in the headless layer, outside ``self.model``."""
        super().set_requires_grad(adapter_names, requires_grad)
        self.state.set_requires_grad(adapter_names, requires_grad)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        self.state.enable_adapters(enabled)

    def disable_adapter_layers(self) -> None:
        self._enable_adapter_layers(False)

    def enable_adapter_layers(self) -> None:
        self._enable_adapter_layers(True)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(f"prompt adapters run one adapter at a time, got {names}")
        if names[0] not in self.peft_config:
            raise ValueError(f"adapter {names[0]!r} not found; available: {sorted(self.peft_config)}")
        self.state.set_adapter(names, inference_mode=inference_mode)
        self.active_adapter = names[0]

    def delete_adapter(self, adapter_name: str) -> None:
        """peft's ``delete_adapter``; after the last one the hooks stay but the model runs as the base model."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} does not exist; available: {sorted(self.peft_config)}")
        del self.peft_config[adapter_name]
        self.state.delete_adapter(adapter_name)
        remaining = self.state.active_adapters
        self.active_adapter = remaining[0] if len(remaining) == 1 else list(remaining)

    def _check_merge_allowed(self) -> None:
        raise ValueError(
            f"{type(self).__name__} cannot be merged: soft prompts are input vectors, not weight updates, so there "
            "is nothing to add to the base weights. Keep the adapter and load it with PeftModel.from_pretrained, "
            "or call unload() to get the untouched base model back."
        )

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        self._check_merge_allowed()

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        self.hooks.detach()
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """peft's rule: adapters follow the base weight's dtype, and ``autocast_adapter_dtype=True`` (the default)
        upcasts fp16 / bf16 adapter weights to fp32. The state layer sits outside ``self.model``, hence ``self``."""
        cast_adapter_dtype(self, adapter_name=adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """peft's per-row adapters: ``adapter_names`` gives one adapter per input row (``"__base__"``: the bare
        model), so adapters with different templates and soft-row counts run in one batch. PeftModel enters this
        around ``forward`` and ``generate`` and drops ``adapter_names`` from the kwargs itself."""
        names = kwargs.get("adapter_names")
        if names is None:
            yield
            return
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise TypeError(f"adapter_names must be a list of adapter names, one per input row, got {names!r}")
        if not self.state.supports_adapter_names:
            raise ValueError(
                f"{type(self).__name__} runs one adapter per batch, so adapter_names is not supported: its prompt "
                "table is generated from each input by the adapter's own generator model; group rows by adapter and "
                "call set_adapter() between batches"
            )
        unknown = sorted({name for name in names if name != BASE_ROW} - set(self.peft_config))
        if unknown:
            raise ValueError(
                f"adapter_names has unknown adapter(s) {unknown}; available: {sorted(self.peft_config)} "
                f"and {BASE_ROW!r} for the base model"
            )
        previous, self.state.row_adapters = self.state.row_adapters, list(names)
        try:
            yield
        finally:
            self.state.row_adapters = previous

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._enable_peft_forward_hooks(**kwargs):
            kwargs.pop("adapter_names", None)
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate()``, with the method's extra inputs (PromptGen's generator inputs) consumed
        once, before decoding starts. Warns once per adapter when the inputs carry no prompt position."""
        ids = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("input_ids")
        checked = (ids, kwargs.get("decoder_input_ids"), kwargs.get("prompt_ids"))
        with self._enable_peft_forward_hooks(**kwargs):
            kwargs.pop("adapter_names", None)
            with self.hooks.generation(*checked), self.state.generation(self.hooks, kwargs) as inputs:
                return self.model.generate(*args, **inputs)
