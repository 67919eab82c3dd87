"""Deep perturbation: per-depth deltas stacked into one (sites, rows, hidden) parameter per adapter."""

from __future__ import annotations

import torch
from torch import nn

from prompt_adapters.methods.deep.config import DeepPerturbConfig
from prompt_adapters.model_facts import block_stacks, block_width
from prompt_adapters.tuner import PromptLayer, PromptTuner


class DeepPerturbLayer(PromptLayer[DeepPerturbConfig]):
    """A mixture's soft table and weights plus the deltas; ``sites[name][(stack, depth)]`` is the delta slice of
    that depth."""

    adapter_layer_names = ("table", "mixture", "deltas")
    other_param_names = ("templates", "settings", "sites")

    def __init__(self) -> None:
        super().__init__()
        self.deltas = nn.ParameterDict()
        self.sites: dict[str, dict[tuple[int, int], int]] = {}

    def create(self, name: str, config: DeepPerturbConfig, model: nn.Module, init_ids: list[int]) -> None:
        """The mixture's soft table and weights, and zero deltas at every depth of ``config.layers``."""
        self.create_table(name, model, init_ids, config.init)
        self.create_mixture(name, config.learn_weights, config.data_dependent)
        depths = [len(stack) for stack in block_stacks(model)]
        wanted = config.layers
        deepest = max(depths)
        if wanted is not None and max(wanted, default=0) > deepest:
            raise ValueError(
                f"layers {wanted} asks for depth {max(wanted)} but the model's deepest block stack has {deepest} "
                "blocks (valid depths: 0 after the embeddings, 1..n after each block)"
            )
        sites: dict[tuple[int, int], int] = {}
        for stack, depth_count in enumerate(depths):
            for depth in range(depth_count + 1):
                if wanted is None or depth in wanted:
                    sites[(stack, depth)] = len(sites)
        self.sites[name] = sites
        rows = self.table[name].shape[0]
        self.deltas[name] = nn.Parameter(torch.zeros(len(sites), rows, block_width(model)))

    def delta(self, name: str, stack: int, depth: int) -> torch.Tensor | None:
        """The trained delta of adapter ``name`` at ``depth`` of ``stack`` (None where ``layers`` has none)."""
        site = self.sites[name].get((stack, depth))
        return None if site is None else self.deltas[name][site]


class DeepPerturbModel(PromptTuner):
    """PEFT tuner of DeepPerturbConfig."""

    prefix = "deepprompt_"
    layer_cls = DeepPerturbLayer
    tuner_layer_cls = DeepPerturbLayer
    deep = True
