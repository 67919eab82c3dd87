"""Answer-slot scoring: log-probabilities at the positions the hooks gathered, over a vocabulary or candidates."""

from __future__ import annotations

import torch

IGNORE = -100


def slot_log_probs(logits: torch.Tensor, candidate_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Log-softmax of gathered logits ``(..., V)`` over the full vocabulary or only over ``candidate_ids``."""
    logits = logits.float()
    if candidate_ids is not None:
        logits = logits.index_select(-1, candidate_ids.to(logits.device))
    return torch.log_softmax(logits, dim=-1)


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log p(target) at every gathered position ``(R, P)``; 0 where the target is IGNORE (padding)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets == IGNORE, 0.0)


def candidate_positions(candidate_ids: torch.Tensor | None, gold_ids: torch.Tensor) -> torch.Tensor:
    """Index of each gold id in ``candidate_ids`` (the id itself when there is no candidate set); IGNORE stays.

    Raises a ValueError naming the ids that are not candidates, so a gold answer is never silently unrankable.
    """
    if candidate_ids is None:
        return gold_ids
    known = gold_ids != IGNORE
    matches = gold_ids.unsqueeze(-1) == candidate_ids.to(gold_ids.device).unsqueeze(0)
    missing = known & ~matches.any(-1)
    if missing.any():
        raise ValueError(
            f"gold answer ids {gold_ids[missing].tolist()} are not in the candidate set of {candidate_ids.numel()} "
            "ids; filter such facts first (see prompt_adapters.data.lama filtering)"
        )
    return torch.where(known, matches.float().argmax(-1), gold_ids)
