"""DeepPerturbConfig: a mixture of soft prompts plus trainable deltas at every selected layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from prompt_adapters.methods.mixture.config import MixturePromptConfig


@dataclass
class DeepPerturbConfig(MixturePromptConfig):
    """Qin & Eisner's deep perturbation: h(l) = block_l(h(l-1)) + delta(l) at prompt positions only.

    Args:
        layers: depths that get a delta, 0 meaning the input of the first block (after the embedding block),
            l >= 1 the output of block l; None means every depth. Applied to every block stack (encoder and
            decoder of seq2seq models). Deltas start at zero, so an untrained adapter equals its mixture.
    """

    method_type: ClassVar[str] = "DEEP_PERTURB"

    layers: list[int] | None = field(default=None)

    def __post_init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        super().__post_init__(tokenizer)
        if self.layers is not None:
            if not self.layers:
                raise ValueError(
                    "layers=[] gives a deep adapter that perturbs no layer; expected depths such as [0, 1, 2], or None "
                    "for every depth (use MixturePromptConfig for no deltas at all)"
                )
            bad = [layer for layer in self.layers if not isinstance(layer, int) or layer < 0]
            if bad:
                raise ValueError(f"layers must be depths >= 0 (0 = after the embeddings), got {bad}")
            self.layers = sorted(set(self.layers))
