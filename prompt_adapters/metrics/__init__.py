"""Evaluation metrics: LAMA ranking (``metrics.lama``), SuperGLUE (``metrics.superglue``) and paired bootstrap
intervals for comparisons between systems (``metrics.bootstrap``)."""

from prompt_adapters.metrics.bootstrap import PairedInterval, paired_bootstrap
from prompt_adapters.metrics.lama import LamaRanking, gold_rank, other_valid_mask

__all__ = ["LamaRanking", "PairedInterval", "gold_rank", "other_valid_mask", "paired_bootstrap"]
