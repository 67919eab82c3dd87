"""Answer scoring shared by every method's layer: the mixture over an adapter's templates of single-token answer
distributions or of answer-sequence log-probabilities, with their losses (functions of tensors; ``PromptLayer``
calls them)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from prompt_adapters.injection import ScoreRequest
from prompt_adapters.scoring import IGNORE, candidate_positions, slot_log_probs, target_log_probs


class GoldAnswers(NamedTuple):
    """Single-token scoring: each example's gold candidate position (IGNORE: unknown) and whether any is known."""

    positions: torch.Tensor
    any_known: bool


def gold_answers(
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


def merge_rows(output: Any, results: dict[str, Any], order: dict[str, torch.Tensor], count: int) -> Any:
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


def single_token_fields(
    request: ScoreRequest,
    logits: torch.Tensor,
    log_weights: torch.Tensor,
    batch: int,
    num_templates: int,
    gold: GoldAnswers | None = None,
) -> dict[str, torch.Tensor]:
    """Single-token answers: the mixture of the templates' answer distributions over the candidates
    (``answer_log_probs``), and where gold answers are known the loss -log sum_t pi_t p_t(y|x) and each template's
    gold log-probability (``template_log_probs``)."""
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


def sequence_fields(
    request: ScoreRequest,
    logits: torch.Tensor,
    log_weights: torch.Tensor,
    batch: int,
    choices: int,
    num_templates: int,
) -> dict[str, torch.Tensor]:
    """Multi-token answers: the mixture of the templates' answer-sequence log-probabilities
    (``sequence_log_probs``); with several choices also their distribution (``choice_log_probs``); the loss where
    targets or choice labels are known."""
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


