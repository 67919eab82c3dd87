"""Mixture of soft prompts: one soft table shared by K templates and learned mixture weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prompt_adapters.injection import ScoreRequest
from prompt_adapters.scoring import IGNORE, candidate_positions, slot_log_probs, target_log_probs
from prompt_adapters.tuner import PromptConfig, PromptLayer, PromptTuner


class MixturePromptLayer(PromptLayer):
    """Soft vectors for every template plus the K mixture logits of each adapter."""

    adapter_layer_names = ("table", "mixture")
    other_param_names = ("templates", "settings")

    def __init__(self) -> None:
        super().__init__()
        self.mixture = nn.ParameterDict()
        self.settings: dict[str, dict[str, bool]] = {}

    def create(self, name: str, config: PromptConfig, model: nn.Module, init_ids: list[int]) -> None:
        super().create(name, config, model, init_ids)
        self.mixture[name] = nn.Parameter(torch.zeros(len(self.templates[name])))
        self.settings[name] = {
            "learn_weights": bool(getattr(config, "learn_weights", True)),
            "data_dependent": bool(getattr(config, "data_dependent", False)),
        }

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode)
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        for name in names:
            if name in self.settings and not self.settings[name]["learn_weights"]:
                self.mixture[name].requires_grad_(False)

    def log_weights(self, name: str) -> torch.Tensor:
        """log pi_t, shape (K,); uniform while the adapter is disabled (the plain ensemble of hard prompts)."""
        logits = self.mixture[name].float()
        if self.disable_adapters:
            logits = torch.zeros_like(logits)
        return torch.log_softmax(logits, dim=0)

    def combine(self, name: str, request: ScoreRequest, output: Any) -> Any:
        """Mixture answer distribution, per-template gold log-probs and the marginal likelihood loss."""
        num_templates = self.num_templates(name)
        logits = output["logits"]
        rows = logits.shape[0]
        data_dependent = self.settings[name]["data_dependent"]
        answer_rows = rows // 2 if data_dependent else rows
        if answer_rows % num_templates:
            raise ValueError(
                f"batch has {answer_rows} answer rows, not a multiple of the adapter's {num_templates} templates; "
                "build batches with prompt_adapters.PromptCollator"
            )
        batch = answer_rows // num_templates
        per_template = slot_log_probs(logits[:answer_rows, 0], request.candidate_ids)
        per_template = per_template.view(batch, num_templates, -1)
        log_weights = self.log_weights(name).to(per_template.device).expand(batch, -1)
        if data_dependent:
            query = target_log_probs(logits[answer_rows:], request.targets[answer_rows:]).sum(-1)
            log_weights = torch.log_softmax(log_weights + query.view(batch, num_templates), dim=1)
        mixture = torch.logsumexp(log_weights.unsqueeze(-1) + per_template, dim=1)
        fields: dict[str, torch.Tensor] = {}
        if request.targets is not None:
            gold = candidate_positions(request.candidate_ids, request.targets[:answer_rows:num_templates, 0])
            known = gold != IGNORE
            if known.any():
                index = gold.clamp(min=0)
                fields["loss"] = -mixture.gather(1, index.unsqueeze(1)).squeeze(1)[known].mean()
                fields["template_log_probs"] = per_template.gather(
                    2, index.view(batch, 1, 1).expand(-1, num_templates, 1)
                ).squeeze(-1)
        result = type(output)(loss=fields.pop("loss", None), **{k: v for k, v in output.items() if k != "loss"})
        for key, value in fields.items():
            result[key] = value
        result["answer_log_probs"] = mixture
        result["mixture_log_weights"] = log_weights
        return result


class MixturePromptModel(PromptTuner):
    """PEFT tuner of MixturePromptConfig."""

    prefix = "mixprompt_"
    layer_cls = MixturePromptLayer
    tuner_layer_cls = MixturePromptLayer
