"""MixturePromptConfig: Qin & Eisner's mixture of soft prompts (K = 1 is plain soft-prompt tuning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from prompt_adapters.tuner import PromptConfig


@dataclass
class MixturePromptConfig(PromptConfig):
    """K templates for one task, each with its own soft tokens, combined as p(y|x) = sum_t pi_t p_t(y|x).

    Args:
        learn_weights: train the mixture logits with the marginal log-likelihood (else they stay uniform, or are
            set by an EM M-step, see ``prompt_adapters.training.em_step``).
        data_dependent: per-example weights pi_t(x) proportional to pi_t q_t(x), where q_t(x) is the template's
            likelihood of the input field tokens with them masked (masked LMs) or predicted left to right (causal
            LMs). Costs one extra row per template and example.
    """

    method_type: ClassVar[str] = "MIXTURE_PROMPT"

    learn_weights: bool = field(default=True)
    data_dependent: bool = field(default=False)
