"""Mixture of soft prompts: one soft table shared by K templates and learned mixture weights."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from prompt_adapters.injection import ScoreRequest
from prompt_adapters.scoring import IGNORE, candidate_positions, slot_log_probs, target_log_probs
from prompt_adapters.tuner import BASE_ROW, PromptConfig, PromptLayer, PromptTuner, to_device


class GoldAnswers(NamedTuple):
    """Single-token scoring: each example's gold candidate position (IGNORE: unknown) and whether any is known."""

    positions: torch.Tensor
    any_known: bool


class MixturePromptLayer(PromptLayer):
    """Soft vectors for every template plus the K mixture logits of each adapter."""

    adapter_layer_names = ("table", "mixture")
    other_param_names = ("templates", "settings")

    def __init__(self) -> None:
        super().__init__()
        self.mixture = nn.ParameterDict()
        self.settings: dict[str, dict[str, bool]] = {}

    def create(self, name: str, config: PromptConfig, model: nn.Module, init_ids: list[int]) -> None:
        super().create(name, config, model, init_ids)
        self.create_mixture(name, config)

    def create_mixture(self, name: str, config: PromptConfig) -> None:
        """Uniform mixture logits over the adapter's templates (K > 1 only: one template has weight 1 and nothing
        to learn) and its mixture settings; ``learn_weights=False`` keeps them frozen (peft's frozen weights)."""
        learn = bool(getattr(config, "learn_weights", True))
        self.settings[name] = {"learn_weights": learn, "data_dependent": bool(getattr(config, "data_dependent", False))}
        if len(self.templates[name]) > 1:
            self.mixture[name] = nn.Parameter(torch.zeros(len(self.templates[name])))
            if not learn:
                self.frozen_peft_weight_names[name] = ("mixture",)

    def log_weights(self, name: str) -> torch.Tensor:
        """log pi_t, shape (K,); uniform while the adapter is disabled (the plain ensemble of hard prompts)."""
        if name not in self.mixture or self.disable_adapters:
            count = self.num_templates(name)
            return torch.full((count,), -math.log(count), device=self.weight.device)
        return torch.log_softmax(self.mixture[name].float(), dim=0)

    def combine(self, name: str, request: ScoreRequest, output: Any) -> Any:
        """Mixture over templates of the answer distribution (single-token answers) or of answer-sequence
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
            fields = self._single_token(request, logits[:answer_rows, 0], log_weights, batch, num_templates, gold)
        else:
            fields = self._sequences(request, logits[:answer_rows], log_weights, batch, choices, num_templates)
        result = type(output)(loss=fields.pop("loss", None), **{k: v for k, v in output.items() if k != "loss"})
        for key, value in fields.items():
            result[key] = value
        result["mixture_log_weights"] = log_weights
        return result

    def combine_rows(self, request: ScoreRequest, output: Any) -> Any:
        """``combine`` of a batch mixing adapters: each adapter's rows are combined as if alone, then every
        per-example field is put back in example order. ``loss`` is the sum of the adapters' losses (each the mean
        over its own examples), so every adapter gets the gradient it would get alone; ``adapter_losses`` has each.
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
        gold = self._gold_answers(request, pieces[-2], pieces[-1], adapters)
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
        return self._merge_rows(output, results, device_mine, len(examples))

    def _combines_at_once(self, request: ScoreRequest, adapters: list[str]) -> bool:
        """Whether ``_combine_at_once`` applies: single-token answers, no query rows, and this class's own
        ``combine`` and ``log_weights`` (a subclass that changes them keeps the per-adapter path)."""
        return (
            request.num_choices is None
            and not any(self.settings[name]["data_dependent"] for name in adapters)
            and type(self).combine is MixturePromptLayer.combine
            and type(self).log_weights is MixturePromptLayer.log_weights
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
        gold = self._gold_answers(request, first_rows, owners, adapters)
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

    @staticmethod
    def _gold_answers(
        request: ScoreRequest, first_rows: torch.Tensor, owners: torch.Tensor, adapters: list[str]
    ) -> tuple[torch.Tensor, dict[str, bool]] | None:
        """Single-token scoring: every example's gold candidate position (from its first row) and whether each
        adapter (``owners``: each example's index in ``adapters``) has an example with a known answer, found with
        one wait for the device; None otherwise."""
        if request.num_choices is not None or request.targets is None:
            return None
        gold = candidate_positions(request.candidate_ids, request.targets[first_rows, 0])
        known = torch.zeros(len(adapters), dtype=torch.long, device=gold.device)
        known.index_add_(0, owners.to(gold.device), (gold != IGNORE).long())
        return gold, dict(zip(adapters, (count > 0 for count in known.tolist()), strict=True))

    @staticmethod
    def _merge_rows(output: Any, results: dict[str, Any], order: dict[str, torch.Tensor], count: int) -> Any:
        """Per-example fields of each adapter's result back in example order; the loss is their sum."""
        merged = type(output)(**{k: v for k, v in output.items() if k != "loss"})
        losses = {name: result["loss"] for name, result in results.items() if result.get("loss") is not None}
        if losses:
            merged["loss"] = torch.stack(list(losses.values())).sum()
            merged["adapter_losses"] = losses
        keys = dict.fromkeys(key for result in results.values() for key in result if key not in ("loss", "logits"))
        for key in keys:
            parts = {name: result[key] for name, result in results.items() if result.get(key) is not None}
            first = next(iter(parts.values()))
            width = [max(part.shape[i] for part in parts.values()) for i in range(1, first.dim())]
            # rows of an adapter without the field (no known target) are NaN; missing template columns are -inf
            field = first.new_full((count, *width), float("nan"))
            for name, part in parts.items():
                index = order[name].to(part.device)
                field[index] = float("-inf")
                field[(index, *(slice(0, size) for size in part.shape[1:]))] = part
            merged[key] = field
        return merged

    @staticmethod
    def _single_token(
        request: ScoreRequest,
        logits: torch.Tensor,
        log_weights: torch.Tensor,
        batch: int,
        num_templates: int,
        gold: GoldAnswers | None = None,
    ) -> dict[str, torch.Tensor]:
        per_template = slot_log_probs(logits, request.candidate_ids).view(batch, num_templates, -1)
        if num_templates == 1:
            mixture = per_template[:, 0]
        else:
            mixture = torch.logsumexp(log_weights.unsqueeze(-1) + per_template, dim=1)
        fields = {"answer_log_probs": mixture}
        if request.targets is not None:
            if gold is None:
                answer_rows = batch * num_templates
                positions = candidate_positions(request.candidate_ids, request.targets[:answer_rows:num_templates, 0])
                gold = GoldAnswers(positions, bool((positions != IGNORE).any()))
            if gold.any_known:
                known = gold.positions != IGNORE
                index = gold.positions.clamp(min=0).view(batch, 1, 1).expand(-1, num_templates, 1)
                gold_log_probs = per_template.gather(2, index).squeeze(-1)
                # the loss needs only the gold entries: log sum_t pi_t p_t(y|x), not the whole (B, K, V) mixture
                mixture_gold = torch.logsumexp(log_weights + gold_log_probs, dim=1)
                fields["loss"] = -mixture_gold.masked_fill(~known, 0.0).sum() / known.sum()
                fields["template_log_probs"] = gold_log_probs
        return fields

    @staticmethod
    def _sequences(
        request: ScoreRequest,
        logits: torch.Tensor,
        log_weights: torch.Tensor,
        batch: int,
        choices: int,
        num_templates: int,
    ) -> dict[str, torch.Tensor]:
        if request.targets is None:
            raise ValueError("sequence scoring needs score_targets (the answer tokens of every choice)")
        targets = request.targets[: logits.shape[0]]
        sequence = target_log_probs(logits, targets).sum(-1).view(batch, choices, num_templates)
        mixture = torch.logsumexp(log_weights.unsqueeze(1) + sequence, dim=2)
        fields = {"sequence_log_probs": mixture, "template_log_probs": sequence[:, 0] if choices == 1 else sequence}
        if choices == 1:
            known = (targets.view(batch, num_templates, -1)[:, 0] != IGNORE).any(-1)
            if known.any():
                fields["loss"] = -mixture[known, 0].mean()
            return fields
        choice_log_probs = torch.log_softmax(mixture, dim=1)
        fields["choice_log_probs"] = choice_log_probs
        labels = request.choice_labels
        if labels is not None and (labels != IGNORE).any():
            known = labels != IGNORE
            fields["loss"] = -choice_log_probs[known].gather(1, labels[known].unsqueeze(1).to(mixture.device)).mean()
        return fields


class MixturePromptModel(PromptTuner):
    """PEFT tuner of MixturePromptConfig."""

    prefix = "mixprompt_"
    layer_cls = MixturePromptLayer
    tuner_layer_cls = MixturePromptLayer
