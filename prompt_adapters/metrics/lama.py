"""LAMA ranking metrics: P@k and MRR per relation, per relation type, macro (headline) and micro.

The protocol (methods-spec §1.4): for fact *i* with gold object *y_i* and candidate set *C*,
``rank_i = 1 + |{v in C : s_i(v) > s_i(y_i)}|`` (ties go in the gold's favour). ``P@k_rel`` is the share of a
relation's facts with ``rank <= k``; the headline is the macro average (mean over relations, as LAMA, OptiPrompt's
"Micro" line, PromptGen Table 1 and P-tuning report); the micro average pools all facts (soft-prompts).

``aggregate_runs`` turns the per-relation records of a run (one per relation and seed, as the LAMA harness writes
them) into per-seed tables and the mean ± std headline over seeds; ``kept_epochs`` / ``describe_kept`` say which
epoch's parameters each fit kept.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
import evaluate
import torch

_CITATION = """\
@inproceedings{petroni2019language,
  title={Language Models as Knowledge Bases?},
  author={Petroni, Fabio and Rockt{\\"a}schel, Tim and Riedel, Sebastian and Lewis, Patrick and Bakhtin, Anton
          and Wu, Yuxiang and Miller, Alexander},
  booktitle={EMNLP-IJCNLP},
  year={2019}
}
"""

_DESCRIPTION = """\
Precision@k and mean reciprocal rank for LAMA-style knowledge probing, from the 1-based rank of each fact's gold
object among the candidates. Reports every relation, every relation type (mean over that type's relations), the
macro average over relations (the number LAMA-derived papers report) and the pooled micro average.
"""

_INPUTS = """
Args:
    ranks (`list[int]`): 1-based rank of the gold object among the candidates (see `gold_rank`).
    relations (`list[str]`): relation id of each fact, e.g. "P19".
    relation_types (`list[str]`, optional): "1-1", "N-1" or "N-M" per fact; omit (or pass "") for relations
        without a type, such as Google-RE or ConceptNet.
    k (`Sequence[int]`, compute only): cut-offs for P@k, default (1, 10).
    mrr_cap (`int | None`, compute only): ranks above it count 0 in MRR (LAMA uses 1000); None uses the full
        ranking (soft-prompts).
Returns:
    `dict` with the macro values at the top level ("P@1", "P@10", "MRR", as fractions in [0, 1]), plus
    "macro", "micro", "per_relation" ({relation: {..., "n": facts}}) and "per_type" ({type: {...,
    "n_relations": relations}}), and "n_facts" / "n_relations".
"""


def gold_rank(scores: torch.Tensor, gold_index: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.LongTensor:
    """1-based rank of each row's gold column: 1 + the number of columns scoring strictly higher.

    ``scores`` is ``[B, C]`` over the candidate set, ``gold_index`` is ``[B]`` column indices. ``exclude`` is an
    optional ``[B, C]`` bool mask of columns to drop from the ranking (other valid objects, LAMA §4.4); a True at
    the gold column itself is ignored, so the mask may simply mark every valid object.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, candidates], got shape {tuple(scores.shape)}")
    batch, n_cand = scores.shape
    gold_index = torch.as_tensor(gold_index, device=scores.device)
    if gold_index.shape != (batch,):
        raise ValueError(f"gold_index must have shape ({batch},) to match scores, got {tuple(gold_index.shape)}")
    if gold_index.dtype.is_floating_point or gold_index.dtype == torch.bool:
        raise ValueError(f"gold_index must hold integer column indices, got dtype {gold_index.dtype}")
    if batch and (gold_index.min() < 0 or gold_index.max() >= n_cand):
        raise ValueError(
            f"gold_index values must lie in [0, {n_cand}), got min {int(gold_index.min())} and "
            f"max {int(gold_index.max())}"
        )
    gold_scores = scores.gather(1, gold_index.long().unsqueeze(1))
    if torch.isnan(gold_scores).any():
        raise ValueError("the gold score is NaN for some rows; the rank is undefined")
    higher = scores > gold_scores
    if exclude is not None:
        exclude = torch.as_tensor(exclude, device=scores.device)
        if exclude.shape != scores.shape or exclude.dtype != torch.bool:
            raise ValueError(
                f"exclude must be a bool tensor of shape {tuple(scores.shape)}, got {exclude.dtype} "
                f"{tuple(exclude.shape)}"
            )
        higher &= ~exclude
    return (higher.sum(dim=1) + 1).long()


def other_valid_mask(
    relations: Sequence[str],
    subs: Sequence[str],
    valid: Mapping[tuple[str, str], Iterable[str]],
    candidate_index: Mapping[str, int],
    num_candidates: int | None = None,
) -> torch.BoolTensor:
    """``[B, C]`` mask of the candidate columns holding a valid object of each fact's (relation, sub).

    ``valid`` comes from ``prompt_adapters.data.lama.valid_objects``; ``candidate_index`` maps an object word to
    its score column. The gold is part of the mask, which ``gold_rank`` ignores. Objects outside the candidate
    set are skipped.
    """
    if len(relations) != len(subs):
        raise ValueError(f"relations and subs differ in length: {len(relations)} vs {len(subs)}")
    n_cols = num_candidates if num_candidates is not None else len(candidate_index)
    mask = torch.zeros(len(subs), n_cols, dtype=torch.bool)
    for row, key in enumerate(zip(relations, subs, strict=True)):
        for obj in valid.get(key, ()):
            col = candidate_index.get(obj)
            if col is not None:
                mask[row, col] = True
    return mask


def _scores(ranks: Sequence[int], ks: Sequence[int], mrr_cap: int | None) -> dict[str, float]:
    n = len(ranks)
    out = {f"P@{k}": sum(r <= k for r in ranks) / n for k in ks}
    out["MRR"] = sum(1.0 / r for r in ranks if mrr_cap is None or r <= mrr_cap) / n
    return out


def _mean(rows: Iterable[Mapping[str, float]], keys: Sequence[str]) -> dict[str, float]:
    rows = list(rows)
    return {key: sum(row[key] for row in rows) / len(rows) for key in keys}


class LamaRanking(evaluate.Metric):
    """P@k and MRR from gold ranks, per relation, per relation type, macro (headline) and micro.

    Works offline: construct it directly (``LamaRanking(keep_in_memory=True)``), no Hub lookup.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "ranks": datasets.Value("int64"),
                    "relations": datasets.Value("string"),
                    "relation_types": datasets.Value("string"),
                }
            ),
            reference_urls=["https://github.com/facebookresearch/LAMA"],
        )

    def add_batch(
        self,
        *,
        ranks: Sequence[int] | torch.Tensor | None = None,
        relations: Sequence[str] | None = None,
        relation_types: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add a batch of facts: gold ranks, relation ids and (optionally) relation types."""
        if ranks is None or relations is None:
            raise ValueError("add_batch needs ranks= and relations=")
        if isinstance(ranks, torch.Tensor):
            ranks = ranks.tolist()
        if relation_types is None:
            relation_types = [""] * len(relations)
        super().add_batch(ranks=ranks, relations=relations, relation_types=relation_types, **kwargs)

    def compute(self, **kwargs: Any) -> dict[str, Any] | None:
        """Compute the metrics over every fact added so far (and any ``ranks=``/``relations=`` given here)."""
        if self.writer is None and kwargs.get("ranks") is None:
            raise ValueError("no facts were added; call add_batch(ranks=..., relations=...) first")
        return super().compute(**kwargs)

    def add(
        self,
        *,
        rank: int | None = None,
        relation: str | None = None,
        relation_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Add one fact."""
        if rank is None or relation is None:
            raise ValueError("add needs rank= and relation=")
        types = None if relation_type is None else [relation_type]
        self.add_batch(ranks=[rank], relations=[relation], relation_types=types, **kwargs)

    def _compute(
        self,
        ranks: list[int],
        relations: list[str],
        relation_types: list[str],
        k: Sequence[int] = (1, 10),
        mrr_cap: int | None = None,
    ) -> dict[str, Any]:
        ks = (k,) if isinstance(k, int) else tuple(k)
        if not ks or any(not isinstance(v, int) or v < 1 for v in ks):
            raise ValueError(f"k must be positive integers, got {k!r}")
        if mrr_cap is not None and (not isinstance(mrr_cap, int) or mrr_cap < 1):
            raise ValueError(f"mrr_cap must be a positive integer or None, got {mrr_cap!r}")
        bad = next((r for r in ranks if r < 1), None)
        if bad is not None:
            raise ValueError(f"ranks are 1-based (1 = gold ranked first), got {bad}")

        by_relation: dict[str, list[int]] = {}
        type_of: dict[str, str] = {}
        for rank, rel, rel_type in zip(ranks, relations, relation_types, strict=True):
            by_relation.setdefault(rel, []).append(rank)
            previous = type_of.get(rel, "")
            if previous and rel_type and previous != rel_type:
                raise ValueError(f"relation {rel!r} was given two types: {previous!r} and {rel_type!r}")
            type_of[rel] = previous or rel_type

        keys = [*(f"P@{v}" for v in ks), "MRR"]
        per_relation = {
            rel: {**_scores(rel_ranks, ks, mrr_cap), "n": len(rel_ranks)} for rel, rel_ranks in by_relation.items()
        }
        macro = _mean(per_relation.values(), keys)
        micro = _scores(ranks, ks, mrr_cap)
        per_type = {}
        for rel_type in sorted({t for t in type_of.values() if t}):
            members = [per_relation[rel] for rel, t in type_of.items() if t == rel_type]
            per_type[rel_type] = {**_mean(members, keys), "n_relations": len(members)}
        return {
            **macro,
            "macro": macro,
            "micro": micro,
            "per_relation": per_relation,
            "per_type": per_type,
            "n_facts": len(ranks),
            "n_relations": len(per_relation),
        }


# ------------------------------------------------------------------------------------------------ runs of relations

#: the rank lists of a relation record and the headline row each one gives
RANK_ROWS = (("method", "ranks"), ("init", "init_ranks"), ("manual", "manual_ranks"), ("none", "none_ranks"))


def summarise(records: Sequence[Mapping[str, Any]], key: str, mrr_cap: int | None) -> dict[str, Any]:
    """``LamaRanking`` over the rank list ``key`` of every record (one record per relation)."""
    metric = LamaRanking()
    for record in records:
        metric.add_batch(ranks=record[key], relations=[record["relation"]] * len(record[key]),
                         relation_types=[record["type"]] * len(record[key]))
    return metric.compute(k=(1, 10), mrr_cap=mrr_cap)  # type: ignore[return-value]


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value) of values over seeds."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def kept_epochs(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The epoch each fit kept (0: its starting parameters, when no epoch beat them on dev P@1), by fit: one per
    (relation, seed), or one per seed when a single model is trained on every relation (``pooled``)."""
    fits = {}
    for record in records:
        if record.get("kept") is not None:
            fit = "pooled" if "pooled" in record else record["relation"]
            name = f"{fit}-seed{record['seed']}"
            fits[name] = record["kept"]
    started = sorted(name for name, kept in fits.items() if kept["epoch"] == 0)
    return {"fits": len(fits), "kept_start": len(started), "kept_start_fits": started, "per_fit": fits}


def describe_kept(kept: Mapping[str, Any]) -> str:
    """One line on what the evaluated parameters are; loud when training never beat the starting parameters."""
    if not kept["fits"]:
        return "Kept epochs: no training."

    def dev(value: float | None) -> str:
        return "not recorded" if value is None else f"{100 * value:.1f}"

    if kept["fits"] == 1:
        name, fit = next(iter(kept["per_fit"].items()))
        line = (f"Kept epoch ({name}): {fit['epoch']}, dev P@1 {dev(fit['dev_p1'])} "
                f"(before training {dev(fit['start_dev_p1'])}).")
    else:
        epochs = sorted(fit["epoch"] for fit in kept["per_fit"].values())
        line = (f"Kept epochs over {kept['fits']} fits: median {statistics.median(epochs):g}, "
                f"range {epochs[0]}–{epochs[-1]}.")
    if kept["kept_start"]:
        shown = ", ".join(kept["kept_start_fits"][:10]) + (" ..." if kept["kept_start"] > 10 else "")
        line += (f" **{kept['kept_start']} of {kept['fits']} fits kept their starting parameters**: no epoch beat "
                 f"them on dev P@1, so the trained row is the untrained prompt there ({shown}).")
    return line


def aggregate_runs(all_records: Sequence[Mapping[str, Any]], mrr_cap: int | None) -> dict[str, Any]:
    """Per-seed tables and the headline (mean ± std over seeds, in percent) of a run's relation records.

    A record holds ``relation``, ``type``, ``seed``, the gold ranks of the trained prompt (``ranks``), of the prompt
    before training (``init_ranks``), of the manual prompt (``manual_ranks``) and with the subject replaced by None
    (``none_ranks``), the facts ``dropped`` per split and reason, and optionally ``kept`` and ``train_seconds``; a
    relation left without test facts has ``skipped`` (its reason) instead of ranks and is not averaged.
    Returns ``seeds``, ``train_seconds`` (summed over relations, mean ± std over seeds), ``headline``
    (``<row>.<macro|micro>.<P@1|P@10|MRR>`` and ``method.macro.MRR_uncapped``), ``dropped_facts`` (first seed),
    ``kept_epochs``, ``skipped_relations`` and ``per_seed`` (every row's ``LamaRanking`` tables by seed).
    """
    records = [r for r in all_records if "skipped" not in r]
    skipped = {r["relation"]: r["skipped"] for r in all_records if "skipped" in r}
    if not records:
        raise ValueError(f"every relation was skipped, nothing to report: {skipped}")
    seeds = sorted({r["seed"] for r in records})
    per_seed = {s: {key: summarise([r for r in records if r["seed"] == s], key, mrr_cap) for _, key in RANK_ROWS}
                for s in seeds}
    uncapped = {s: summarise([r for r in records if r["seed"] == s], "ranks", None) for s in seeds}
    headline = {}
    for label, key in RANK_ROWS:
        for avg in ("macro", "micro"):
            for metric in ("P@1", "P@10", "MRR"):
                values = [100 * per_seed[s][key][avg][metric] for s in seeds]
                headline[f"{label}.{avg}.{metric}"] = mean_std(values)
    headline["method.macro.MRR_uncapped"] = mean_std([100 * uncapped[s]["macro"]["MRR"] for s in seeds])
    dropped: dict[str, dict[str, int]] = {}
    for record in all_records:
        if record["seed"] != seeds[0]:
            continue
        for split, counts in record["dropped"].items():
            for reason, count in counts.items():
                dropped.setdefault(split, {}).setdefault(reason, 0)
                dropped[split][reason] += count
    return {
        "seeds": seeds,
        "train_seconds": mean_std([sum(r.get("train_seconds", 0.0) for r in records if r["seed"] == s)
                                   for s in seeds]),
        "headline": headline,
        "dropped_facts": dropped,
        "kept_epochs": kept_epochs(records),
        "skipped_relations": skipped,
        "per_seed": {str(s): per_seed[s] for s in seeds},
    }
