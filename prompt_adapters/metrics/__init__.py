"""Evaluation metrics: LAMA ranking (P@k, MRR; macro and micro)."""

from prompt_adapters.metrics.lama import LamaRanking, gold_rank, other_valid_mask

__all__ = ["LamaRanking", "gold_rank", "other_valid_mask"]
