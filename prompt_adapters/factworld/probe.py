"""A small self-contained LAMA scorer used to check the build (the library's own scorer is separate).

A template is filled with the subject and the object slot is scored: the masked LM reads the logits
at its mask token, GPT-2 predicts the next token after the text before ``[Y]``, and BART reconstructs
the sentence from the masked input with teacher forcing and is read at the object position. The
prediction is the argmax over a candidate set: the objects of the relation's type, or all objects.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from prompt_adapters.factworld.pretrain import ModelKind
from prompt_adapters.factworld.tokenization import object_token_id
from prompt_adapters.factworld.world import World

Candidates = Literal["type", "all"]


def _fill(template: str, subject: str, slot: str) -> str:
    return template.replace("[X]", subject).replace("[Y]", slot)


@torch.no_grad()
def object_logits(
    kind: ModelKind,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    template: str,
    subjects: list[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits over the vocabulary at the ``[Y]`` slot of ``template`` for each subject, shape (n, vocab).

    For GPT-2 only the text before ``[Y]`` is used; a template starting with ``[Y]`` cannot be scored.
    """
    if "[Y]" not in template or "[X]" not in template:
        raise ValueError(f"template {template!r} must contain [X] and [Y]")
    out: list[torch.Tensor] = []
    for start in range(0, len(subjects), batch_size):
        chunk = subjects[start : start + batch_size]
        if kind == "gpt2":
            prefix = template.split("[Y]")[0].rstrip()
            if not prefix:
                raise ValueError(f"template {template!r} starts with [Y]: a causal LM cannot predict it")
            enc = tokenizer([_fill(prefix, s, "") for s in chunk], return_tensors="pt", padding=True)
            logits = model(**enc).logits
            last = enc["attention_mask"].sum(1) - 1
            out.append(logits[torch.arange(len(chunk)), last])
            continue
        enc = tokenizer([_fill(template, s, tokenizer.mask_token) for s in chunk], return_tensors="pt", padding=True)
        mask_pos = (enc["input_ids"] == tokenizer.mask_token_id).int().argmax(1)
        if kind == "bert":
            logits = model(**enc).logits
            out.append(logits[torch.arange(len(chunk)), mask_pos])
            continue
        # BART: teacher-force the decoder on the encoder input up to the mask, read the next-token logits there.
        decoder_inputs = torch.cat(
            [torch.full((len(chunk), 1), model.config.decoder_start_token_id), enc["input_ids"][:, :-1]], dim=1
        )
        logits = model(**enc, decoder_input_ids=decoder_inputs).logits
        out.append(logits[torch.arange(len(chunk)), mask_pos])
    return torch.cat(out)


def candidate_ids(tokenizer: PreTrainedTokenizerFast, names: list[str], template: str) -> torch.Tensor:
    """Token ids of object names as they appear in ``template``, each checked to be a single token.

    Byte-level BPE spells a word differently at the start of a text (no leading space), so a template
    that starts with ``[Y]`` is scored against the space-less forms.
    """
    leading_space = not template.startswith("[Y]")
    return torch.tensor([object_token_id(tokenizer, name, leading_space) for name in names])


def relation_scores(
    kind: ModelKind,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    world: World,
    relation: str,
    template: str,
    splits: tuple[str, ...] = ("train", "dev", "test"),
) -> dict[str, dict[Candidates, float]]:
    """P@1 of ``template`` on one relation, per split, with both candidate sets (one forward pass per fact)."""
    spec = next((s for s in world.relations if s.relation == relation), None)
    if spec is None:
        raise ValueError(f"unknown relation {relation!r}, expected one of {[s.relation for s in world.relations]}")
    facts = world.facts[relation]
    logits = object_logits(kind, model, tokenizer, template, [f["sub"] for f in facts])
    result: dict[str, dict[Candidates, float]] = {}
    for cands, names in (("type", world.objects_of_type(spec.object_type)), ("all", world.all_objects())):
        predicted = [names[i] for i in logits[:, candidate_ids(tokenizer, names, template)].argmax(1).tolist()]
        for split in splits:
            hits = [p == f["obj"] for p, f in zip(predicted, facts, strict=True) if f["split"] == split]
            result.setdefault(split, {})[cands] = sum(hits) / len(hits) if hits else float("nan")
    return result


def precision_at_1(
    kind: ModelKind,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    world: World,
    relation: str,
    template: str,
    split: str,
    candidates: Candidates = "type",
) -> float:
    """P@1 of ``template`` on one relation's split, argmax restricted to the candidate set."""
    return relation_scores(kind, model, tokenizer, world, relation, template, (split,))[split][candidates]


def evaluate(
    kind: ModelKind,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    world: World,
    templates: dict[str, dict[str, str]],
    splits: tuple[str, ...] = ("train", "dev", "test"),
) -> dict[str, dict]:
    """P@1 per template name, split and candidate set: per relation and macro-averaged over relations.

    ``templates`` maps a template name (e.g. ``"manual"``) to ``{relation: template}``; a relation
    missing from a name's mapping is skipped for it. Result:
    ``{name: {split: {"type" | "all": {"macro": float, "per_relation": {relation: float}}}}}``.
    """
    results: dict[str, dict] = {}
    for name, by_relation in templates.items():
        scores = {
            relation: relation_scores(kind, model, tokenizer, world, relation, template, splits)
            for relation, template in by_relation.items()
        }
        for split in splits:
            for cands in ("type", "all"):
                per_relation = {relation: scores[relation][split][cands] for relation in by_relation}
                results.setdefault(name, {}).setdefault(split, {})[cands] = {
                    "macro": sum(per_relation.values()) / len(per_relation),
                    "per_relation": per_relation,
                }
    return results
