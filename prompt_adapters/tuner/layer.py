"""``PromptLayer``: the headless tuner layer holding every adapter of one prompt method, and the contract a method
implements.

The hooks of ``prompt_adapters.injection`` ask the layer (their ``PromptSource``) three things at each forward:
which vectors sit at the prompt positions (``prompt_table``), which deltas are added to the hidden states there
(``delta``), and how the logits gathered at the answer slot become the answer distribution and the loss
(``combine``). A method overrides the hooks it needs:

* ``create(name, config, model, init_ids)`` (required): the parameters of a new adapter, typed with the method's own
  config. ``create_table`` and ``create_mixture`` build the common ones.
* ``prompt_table(name)`` / ``prompt_tables(names)``: the (soft rows, hidden) vectors; default: the trained table.
* ``delta(name, stack, depth)``: a per-depth delta; default: none.
* ``combine(name, request, output)``: default: the mixture over the adapter's templates of the answer
  distribution (single-token answers) or of answer-sequence log-probabilities, with its loss (Qin & Eisner; one
  template is plain soft-prompt scoring). ``combine_rows`` does the same for a batch mixing adapters.
* ``prepare(inputs, kwargs, request)`` / ``end_forward()`` with ``forward_keys``: per-batch state of methods that
  read extra forward inputs (PromptGen's generator inputs); ``generation(hooks, kwargs)``: the inputs of
  ``generate()``.
* class attributes ``supports_adapter_names`` and ``unshardable_reason``: what the method cannot do.

Everything else (templates, hard ids, per-row adapters, save/load layout, enable/disable) lives here once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypedDict, TypeVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from prompt_adapters.injection import SCORING_KEYS, PromptHooks, ScoreRequest
from prompt_adapters.scoring import IGNORE, slot_log_probs, target_log_probs
from prompt_adapters.template import CompiledTemplate
from prompt_adapters.tuner.answers import GoldAnswers, gold_answers, merge_rows, sequence_fields, single_token_fields
from prompt_adapters.tuner.config import InitMode, PromptConfig

#: peft's name for rows that run the bare base model in a mixed-adapter batch (``adapter_names``)
BASE_ROW = "__base__"
#: the config class a layer is typed with
ConfigT = TypeVar("ConfigT", bound=PromptConfig)


class MixtureSettings(TypedDict):
    """How an adapter weighs its templates: learned weights or uniform ones, and per-example weights or not."""

    learn_weights: bool
    data_dependent: bool


class PromptLayer(nn.Module, BaseTunerLayer, Generic[ConfigT]):
    """Headless tuner layer holding the state of every adapter of one prompt method (see the module docstring for
    the hooks a method overrides). ``ConfigT`` is the method's config class, the type ``create`` receives."""

    #: peft's names of the adapter-keyed parameter containers (saved, moved, frozen per adapter)
    adapter_layer_names: tuple[str, ...] = ("table",)
    #: peft's names of the other adapter-keyed state
    other_param_names: tuple[str, ...] = ("templates",)

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.table = nn.ParameterDict()
        #: K mixture logits per adapter with K > 1 templates
        self.mixture = nn.ParameterDict()
        self.settings: dict[str, MixtureSettings] = {}
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

    def add(self, name: str, config: ConfigT, model: nn.Module) -> None:
        """Add adapter ``name``: its compiled templates, soft-row offsets and hard ids, then ``create``."""
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

    def create(self, name: str, config: ConfigT, model: nn.Module, init_ids: list[int]) -> None:
        """Hook: create the parameters of adapter ``name`` from the method's ``config``; ``init_ids`` holds the word
        id of each soft row (-1 for rows without a word), which ``create_table`` starts them from."""
        raise NotImplementedError(f"{type(self).__name__} must implement create()")

    def create_table(self, name: str, model: nn.Module, init_ids: list[int], init: InitMode) -> None:
        """One trainable vector per soft row of adapter ``name``, started as ``init`` says."""
        self.table[name] = nn.Parameter(initial_vectors(model, init_ids, init))

    def create_mixture(self, name: str, learn_weights: bool, data_dependent: bool) -> None:
        """Uniform mixture logits over the adapter's templates (K > 1 only: one template has weight 1 and nothing
        to learn) and its mixture settings; ``learn_weights=False`` keeps them frozen (peft's frozen weights)."""
        self.settings[name] = {"learn_weights": learn_weights, "data_dependent": data_dependent}
        if len(self.templates[name]) > 1:
            self.mixture[name] = nn.Parameter(torch.zeros(len(self.templates[name])))
            if not learn_weights:
                self.frozen_peft_weight_names[name] = ("mixture",)

    # --------------------------------------------------------------------------- PromptSource

    @property
    def active_name(self) -> str:
        """The one active adapter's name (prompt adapters run one adapter at a time)."""
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
        """Whether adapter ``name`` puts any vector into the input (all-hard templates have none)."""
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
        """Adapter ``name``'s hard id of each soft row in ``rows``."""
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
        """Hook: the (soft rows, hidden) matrix of soft vectors of adapter ``name``; default: its trained table."""
        return self.table[name]

    def prompt_tables(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Hook: ``prompt_table`` of each named adapter (a mixed batch needs several); methods whose tables are computed
        override it to compute them together (P-tuning batches its encoders)."""
        return {name: self.prompt_table(name) for name in names}

    def delta(self, name: str, stack: int, depth: int) -> torch.Tensor | None:
        """Hook: the (soft rows, hidden) delta added at prompt positions at block ``depth`` of ``stack`` (0: before
        the first block), None for none; default: none."""
        return None

    def finish_scoring(self, request: ScoreRequest, output: Any) -> Any:
        """The model's output with the method's answer fields (``combine`` or ``combine_rows``); a loss that cannot
        reach any trainable parameter fails on ``backward()`` with the reason (``untrainable_reason``)."""
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

    # --------------------------------------------------------------------------- answer scoring

    def log_weights(self, name: str) -> torch.Tensor:
        """log pi_t, shape (K,); uniform while the adapter is disabled (the plain ensemble of hard prompts)."""
        if name not in self.mixture or self.disable_adapters:
            count = self.num_templates(name)
            return torch.full((count,), -math.log(count), device=self.weight.device)
        return torch.log_softmax(self.mixture[name].float(), dim=0)

    def combine(self, name: str, request: ScoreRequest, output: Any) -> Any:
        """Hook: the method's answer fields and loss from the logits gathered at the answer slots. Default: the
        mixture over templates of the answer distribution (single-token answers) or of answer-sequence
        log-probabilities (``num_choices`` set: multi-token answers, multiple choice), with its loss."""
        return self._combine(name, request, output, None)

    def _combine(self, name: str, request: ScoreRequest, output: Any, gold: GoldAnswers | None) -> Any:
        """``combine``; ``gold``: the examples' gold candidate positions when the caller computed them already."""
        num_templates = self.num_templates(name)
        logits = output["logits"]
        choices = request.num_choices or 1
        data_dependent = self.settings[name]["data_dependent"]
        query_rows = logits.shape[0] // (choices + 1) if data_dependent else 0
        answer_rows = logits.shape[0] - query_rows
        if answer_rows % (num_templates * choices):
            raise ValueError(
                f"batch has {answer_rows} answer rows, not a multiple of {choices} choice(s) x the adapter's "
                f"{num_templates} templates; build batches with prompt_adapters.PromptCollator"
            )
        batch = answer_rows // (num_templates * choices)
        log_weights = self.log_weights(name).to(logits.device).expand(batch, -1)
        if data_dependent:
            query = target_log_probs(logits[answer_rows:], request.targets[answer_rows:]).sum(-1)
            log_weights = torch.log_softmax(log_weights + query.view(batch, num_templates), dim=1)
        if request.num_choices is None:
            fields = single_token_fields(request, logits[:answer_rows, 0], log_weights, batch, num_templates, gold)
        else:
            fields = sequence_fields(request, logits[:answer_rows], log_weights, batch, choices, num_templates)
        result = type(output)(loss=fields.pop("loss", None), **{k: v for k, v in output.items() if k != "loss"})
        for key, value in fields.items():
            result[key] = value
        result["mixture_log_weights"] = log_weights
        return result

    def combine_rows(self, request: ScoreRequest, output: Any) -> Any:
        """Hook: ``combine`` of a batch mixing adapters (peft's ``adapter_names``): each adapter's rows are combined
        as if alone, then every per-example field is put back in example order. ``loss`` is the sum of the
        adapters' losses (each the mean over its own examples), so every adapter gets the gradient it would get
        alone; ``adapter_losses`` has each.
        Fields with one column per template are padded with -inf to the batch's largest template count.

        Rows follow the collator's layout, per example: K_a x choices answer rows of its adapter a, then (for
        data-dependent adapters) K_a query rows per example after every answer row, in example order.

        Every index is built on the host and moved in one copy, and single-token gold answers are looked up once
        for the whole batch: per-adapter copies and checks would each make the host wait for the device.
        """
        logits = output["logits"]
        names = self.row_names(logits.shape[0])
        choices = request.num_choices or 1
        examples: list[tuple[str, list[int]]] = []
        position, pending_queries = 0, 0
        while position + pending_queries < len(names):
            name = names[position]
            if name == BASE_ROW:
                raise ValueError(f"row {position} is {BASE_ROW!r}: base rows have no answer slot to score")
            width = self.num_templates(name) * choices
            if position + width > len(names) or names[position : position + width] != [name] * width:
                raise ValueError(
                    f"rows {position}..{position + width - 1} should all belong to adapter {name!r} ({width} rows: "
                    "its templates x choices); build mixed batches with PromptCollator from examples with an "
                    "'adapter' key"
                )
            examples.append((name, list(range(position, position + width))))
            position += width
            pending_queries += self.num_templates(name) if self.settings[name]["data_dependent"] else 0
        for index, (name, rows) in enumerate(examples):
            if self.settings[name]["data_dependent"]:
                count = self.num_templates(name)
                examples[index] = (name, rows + list(range(position, position + count)))
                position += count
        adapters = list(dict.fromkeys(name for name, _ in examples))
        if self._combines_at_once(request, adapters):
            return self._combine_at_once(request, output, examples, adapters)
        mine = {name: [index for index, (owner, _) in enumerate(examples) if owner == name] for name in adapters}
        rows = {}
        for name in adapters:
            answer = [row for index in mine[name] for row in examples[index][1][: self.num_templates(name) * choices]]
            query = [row for index in mine[name] for row in examples[index][1][self.num_templates(name) * choices :]]
            rows[name] = answer + query
        host = [rows[name] for name in adapters] + [mine[name] for name in adapters]
        host.append([rows_of_example[0] for _, rows_of_example in examples])
        host.append([adapters.index(name) for name, _ in examples])
        pieces = to_device(torch.tensor([i for values in host for i in values]), logits.device)
        pieces = pieces.split([len(values) for values in host])
        device_mine = dict(zip(adapters, pieces[len(adapters) : 2 * len(adapters)], strict=True))
        gold = gold_answers(request, pieces[-2], pieces[-1], adapters)
        # one gather in adapter order, then contiguous slices: its backward is one scatter, not one per adapter
        ordered = torch.cat(pieces[: len(adapters)])
        counts = [len(rows[name]) for name in adapters]
        own_logits = logits[ordered].split(counts)
        own_positions = request.positions[ordered].split(counts)
        own_targets = [None] * len(adapters) if request.targets is None else request.targets[ordered].split(counts)
        results: dict[str, Any] = {}
        for index, name in enumerate(adapters):
            labels = request.choice_labels
            sub_request = ScoreRequest(
                own_positions[index],
                own_targets[index],
                request.candidate_ids,
                request.num_choices,
                None if labels is None else labels[device_mine[name].to(labels.device)],
            )
            own_gold = None if gold is None else GoldAnswers(gold[0][device_mine[name]], gold[1][name])
            results[name] = self._combine(name, sub_request, type(output)(logits=own_logits[index]), own_gold)
        return merge_rows(output, results, device_mine, len(examples))

    def _combines_at_once(self, request: ScoreRequest, adapters: list[str]) -> bool:
        """Whether ``_combine_at_once`` applies: single-token answers, no query rows, and this class's own
        ``combine`` and ``log_weights`` (a subclass that changes them keeps the per-adapter path)."""
        return (
            request.num_choices is None
            and not any(self.settings[name]["data_dependent"] for name in adapters)
            and type(self).combine is PromptLayer.combine
            and type(self).log_weights is PromptLayer.log_weights
        )

    def _combine_at_once(
        self, request: ScoreRequest, output: Any, examples: list[tuple[str, list[int]]], adapters: list[str]
    ) -> Any:
        """``combine_rows`` of single-token answers as one computation over every example: each example's template
        rows and its adapter's mixture weights, padded to the batch's largest K (weight -inf, so padding adds
        nothing), and each adapter's loss as the mean over its own examples through one sum per adapter. The same
        fields as combining each adapter alone, in a few dozen kernels instead of some thirty per adapter."""
        logits = output["logits"]
        width = max(self.num_templates(name) for name in adapters)
        position = {name: index for index, name in enumerate(adapters)}
        learned = [name for name in adapters if name in self.mixture and not self.disable_adapters]
        host = [
            [rows[t] if t < len(rows) else rows[0] for _, rows in examples for t in range(width)],
            [len(rows) for _, rows in examples],
            [position[name] for name, _ in examples],
            [rows[0] for _, rows in examples],
            [self.num_templates(name) for name in adapters],
            [position[name] * width + t for name in learned for t in range(self.num_templates(name))],
        ]
        flat = to_device(torch.tensor([i for values in host for i in values]), logits.device)
        template_rows, counts, owners, first_rows, templates, slots = flat.split([len(values) for values in host])
        columns = torch.arange(width, device=logits.device)
        valid = columns < counts.unsqueeze(1)
        # mixture logits per adapter: its learned logits, else 0 (uniform weights); -inf beyond its K templates
        mixture = torch.zeros(len(adapters), width, device=logits.device).masked_fill(
            columns >= templates.unsqueeze(1), float("-inf")
        )
        if learned:
            values = torch.cat([self.mixture[name].float() for name in learned])
            mixture = mixture.flatten().index_put((slots,), values).view(len(adapters), width)
        log_weights = torch.log_softmax(mixture, dim=1)[owners]
        per_template = slot_log_probs(logits[:, 0], request.candidate_ids)[template_rows.view(len(examples), width)]
        merged = type(output)(**{k: v for k, v in output.items() if k != "loss"})
        fields = {"answer_log_probs": torch.logsumexp(log_weights.unsqueeze(-1) + per_template, dim=1)}
        gold = gold_answers(request, first_rows, owners, adapters)
        if gold is not None and any(gold[1].values()):
            positions, any_known = gold
            known = positions != IGNORE
            index = positions.clamp(min=0).view(-1, 1, 1).expand(-1, width, 1)
            gold_log_probs = per_template.gather(2, index).squeeze(-1)
            losses = -torch.logsumexp(log_weights + gold_log_probs, dim=1).masked_fill(~known, 0.0)
            totals = losses.new_zeros(len(adapters)).index_add(0, owners, losses)
            numbers = losses.new_zeros(len(adapters)).index_add(0, owners, known.float())
            adapter_losses = totals / numbers.clamp(min=1)
            merged["loss"] = adapter_losses.sum()  # adapters without a known answer add an exact 0
            merged["adapter_losses"] = {name: adapter_losses[position[name]] for name in adapters if any_known[name]}
            # rows of an adapter without a known answer have no template field: NaN, as when combined alone
            scored = (numbers > 0)[owners].unsqueeze(1)
            fields["template_log_probs"] = torch.where(
                scored, gold_log_probs.masked_fill(~valid, float("-inf")), float("nan")
            )
        fields["mixture_log_weights"] = log_weights
        for key, value in fields.items():
            merged[key] = value
        return merged


    # --------------------------------------------------------------------------- per-batch hooks

    #: extra forward kwargs the method consumes; ``prepare`` receives them before the model runs
    forward_keys: tuple[str, ...] = ()

    def prepare(
        self, inputs: dict[str, torch.Tensor], kwargs: dict[str, Any], request: ScoreRequest | None
    ) -> tuple[dict[str, Any], ScoreRequest | None]:
        """Hook before the model runs: may consume the method's ``forward_keys`` from ``kwargs`` and rewrite the
        inputs and the score request; default: nothing to do."""
        return kwargs, request

    def end_forward(self) -> None:
        """Hook after every forward: drops the per-batch state ``prepare`` kept; default: nothing to do."""

    @contextmanager
    def generation(self, hooks: PromptHooks, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Hook: the ``generate()`` inputs, prepared once for every decoding step: ``prompt_ids`` put the soft
        vectors into ``inputs_embeds`` up front; scoring keys are refused (generate() has no answer slot to
        score)."""
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

    def num_templates(self, name: str | None = None) -> int:
        """How many templates adapter ``name`` (default: the active one) has."""
        return len(self.templates[name or self.active_name])

    def soft_offsets(self, name: str | None = None) -> list[int]:
        """Where each template's soft rows start in adapter ``name``'s table (default: the active adapter)."""
        return self.offsets[name or self.active_name]

    def delete_adapter(self, adapter_name: str) -> None:
        """peft's ``delete_adapter``, with the layer's per-adapter state that peft does not know."""
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


def initial_vectors(model: nn.Module, init_ids: list[int], init: InitMode) -> torch.Tensor:
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
        scale = embed_scale(embedding, weight)
        mean, std = stats.mean(0), stats.std(0)
        return (mean + std * torch.randn(len(init_ids), weight.shape[1])) * scale
    ids = torch.tensor(init_ids, dtype=torch.long)
    ids = generator_ids if init == "vocab" else torch.where(ids >= 0, ids, generator_ids)
    with torch.no_grad():
        vectors = embedding(ids.to(weight.device)).detach().float().cpu()
    return vectors.clone()


def embed_scale(embedding: nn.Module, weight: torch.Tensor) -> float:
    """The factor the embedding module applies after the lookup (1 for most models, sqrt(d) for scaled ones)."""
    with torch.no_grad():
        probe = torch.tensor([0], device=weight.device)
        raw = weight[0].float()
        out = embedding(probe)[0].float()
    norm = raw.norm()
    return float(out.norm() / norm) if norm > 0 else 1.0
