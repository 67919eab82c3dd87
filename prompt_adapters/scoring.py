"""Answer-slot scoring: log-probabilities at the positions the hooks gathered, over a vocabulary or candidates."""

from __future__ import annotations

from typing import Any

import torch

#: the label the loss skips (transformers' and peft's ``ignore_index``): the one such constant of the package
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


@torch.no_grad()
def fill_most_confident_first(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    positions: list[int],
    targets: list[int] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[list[int], float]:
    """Fill the masks at ``positions`` of one masked-LM row one at a time, most confident first (PET's decoding).

    With ``targets`` (COPA scoring) the confidence is the probability of each position's gold token and that token
    is filled in; without (WSC decoding) it is the best token's probability and the argmax is filled in. Returns
    the filled tokens in position order and the summed log-probability of the choices made. Soft prompts work as
    usual: the row may hold pseudo ids.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"expected one row of shape (1, N), got {tuple(input_ids.shape)}")
    if targets is not None and len(targets) != len(positions):
        raise ValueError(f"{len(targets)} targets for {len(positions)} positions")
    ids = input_ids.clone()
    remaining = list(range(len(positions)))
    filled = [0] * len(positions)
    total = 0.0
    while remaining:
        logits = model(input_ids=ids, attention_mask=attention_mask).logits[0]
        log_probs = torch.log_softmax(logits[[positions[i] for i in remaining]].float(), dim=-1)
        if targets is not None:
            scores = log_probs[torch.arange(len(remaining)), [targets[i] for i in remaining]]
            tokens = [targets[i] for i in remaining]
        else:
            scores, best = log_probs.max(-1)
            tokens = best.tolist()
        pick = int(scores.argmax())
        slot = remaining.pop(pick)
        filled[slot] = int(tokens[pick])
        total += float(scores[pick])
        ids[0, positions[slot]] = filled[slot]
    return filled, total


def continuation_log_probs(logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log p of each row's continuation ``(R,)`` from full logits ``(R, N, V)``.

    ``positions`` ``(R, P)`` index the logits that predict ``targets`` ``(R, P)`` (for a causal LM the position before
    each target token); IGNORE targets count 0. A causal or seq2seq LM scores a candidate answer this way: the
    chain rule over its tokens, read in one teacher-forced forward.
    """
    index = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return target_log_probs(logits.gather(1, index), targets).sum(-1)


@torch.no_grad()
def greedy_continuation(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    steps: int,
    decoder_input_ids: torch.Tensor | None = None,
    use_cache: bool = True,
) -> tuple[list[int], float]:
    """Decode ``steps`` tokens greedily after one row (causal LM: after ``input_ids``; seq2seq: after
    ``decoder_input_ids``). Returns the tokens and their summed log-probability.

    The left-to-right counterpart of ``fill_most_confident_first`` without targets: a causal LM can only fill its
    answer slot in reading order. The row (pseudo ids of a prompt adapter included) is read once and each decoded
    token extends the model's key/value cache, as ``generate`` does; a seq2seq encoder runs once. With
    ``use_cache=False``, or for a model that returns no cache, every step re-reads the whole row: the way to decode
    through a wrapper that rewrites each forward's input (peft's prompt-learning models prepend virtual tokens).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"expected one row of shape (1, N), got {tuple(input_ids.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    seq2seq = decoder_input_ids is not None
    row = decoder_input_ids if seq2seq else input_ids
    inputs: dict[str, Any] = {"input_ids": input_ids} if seq2seq else {}
    step_ids, cache, cache_key = row, None, "past_key_values"
    tokens: list[int] = []
    total = 0.0
    for _ in range(steps):
        fed = {**inputs, ("decoder_input_ids" if seq2seq else "input_ids"): step_ids}
        if use_cache:
            fed.update({"use_cache": True} if cache is None else {cache_key: cache, "use_cache": True})
        out = model(**fed)
        log_probs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        token = int(log_probs.argmax())
        tokens.append(token)
        total += float(log_probs[token])
        step = torch.tensor([[token]], device=row.device)
        row = torch.cat([row, step], dim=1)
        if use_cache:  # newer transformers call past_key_values cache (in and out)
            cache_key = "cache" if "cache" in out else "past_key_values"
            cache = out.get(cache_key)
        if cache is None:
            step_ids = row
            continue
        step_ids = step
        if seq2seq and "encoder_outputs" not in inputs:
            inputs = {"encoder_outputs": (out.encoder_last_hidden_state,)}
    return tokens, total
