"""Mixture of soft prompts: one soft table shared by K templates and learned mixture weights."""

from __future__ import annotations

from torch import nn

from prompt_adapters.methods.mixture.config import MixturePromptConfig
from prompt_adapters.tuner import PromptLayer, PromptTuner


class MixturePromptLayer(PromptLayer[MixturePromptConfig]):
    """Soft vectors for every template plus the K mixture logits of each adapter (the base layer's answer scoring
    is the mixture over templates)."""

    adapter_layer_names = ("table", "mixture")
    other_param_names = ("templates", "settings")

    def create(self, name: str, config: MixturePromptConfig, model: nn.Module, init_ids: list[int]) -> None:
        """One trainable vector per soft row, and the mixture logits of ``config``'s settings."""
        self.create_table(name, model, init_ids, config.init)
        self.create_mixture(name, config.learn_weights, config.data_dependent)


class MixturePromptModel(PromptTuner):
    """PEFT tuner of MixturePromptConfig."""

    prefix = "mixprompt_"
    layer_cls = MixturePromptLayer
    tuner_layer_cls = MixturePromptLayer
