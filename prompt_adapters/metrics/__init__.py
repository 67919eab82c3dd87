"""Evaluation metrics: LAMA ranking (``metrics.lama``) and SuperGLUE (``metrics.superglue``)."""

from prompt_adapters.metrics.lama import LamaRanking, gold_rank, other_valid_mask

__all__ = ["LamaRanking", "gold_rank", "other_valid_mask"]
