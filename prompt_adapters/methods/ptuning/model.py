"""P-tuning: the soft rows of each template come from a prompt encoder over trainable input embeddings.

The encoder is saved with the adapter (so training resumes exactly; peft's own P-tuning drops it), and
``export_static`` turns its output into a plain MixturePromptConfig adapter that loads without LSTM or MLP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from prompt_adapters.methods.mixture.model import MixturePromptLayer, MixturePromptModel
from prompt_adapters.tuner import PromptConfig


class PromptEncoder(nn.Module):
    """h = MLP([LSTM->(e) : LSTM<-(e)]) (paper eq. 4), an MLP on e, or e itself, for one template's rows."""

    def __init__(self, rows: int, output_size: int, config: PromptConfig) -> None:
        super().__init__()
        embed = getattr(config, "embed_size", None) or output_size
        self.kind = getattr(config, "encoder", "lstm")
        self.embedding = nn.Embedding(rows, embed)
        if self.kind == "lstm":
            hidden = getattr(config, "lstm_hidden_size", None) or max(1, embed // 2)
            self.lstm = nn.LSTM(
                embed,
                hidden,
                num_layers=getattr(config, "lstm_layers", 2),
                dropout=getattr(config, "lstm_dropout", 0.0),
                bidirectional=True,
                batch_first=True,
            )
            mlp_in = 2 * hidden
        else:
            mlp_in = embed
        if self.kind in ("lstm", "mlp"):
            mlp_hidden = getattr(config, "mlp_hidden_size", None) or output_size
            self.mlp = nn.Sequential(nn.Linear(mlp_in, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, output_size))
        elif embed != output_size:
            raise ValueError(
                f"encoder='none' needs embed_size == the model's embedding size {output_size}, got {embed}"
            )

    def forward(self) -> torch.Tensor:
        vectors = self.embedding.weight.unsqueeze(0)
        if self.kind == "lstm":
            vectors = self.lstm(vectors)[0]
        if self.kind in ("lstm", "mlp"):
            vectors = self.mlp(vectors)
        return vectors.squeeze(0)


class PTuningEncoderLayer(MixturePromptLayer):
    """One PromptEncoder per template (ModuleList) per adapter, plus the mixture weights for K > 1."""

    adapter_layer_names = ("encoder", "mixture")
    other_param_names = ("templates", "settings")

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict()
        self._cache: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}

    def create(self, name: str, config: PromptConfig, model: nn.Module, init_ids: list[int]) -> None:
        size = int(model.get_input_embeddings().weight.shape[1])
        rows = [template.num_soft for template in self.templates[name]]
        if not any(rows):
            raise ValueError(f"P-tuning templates {config.templates} have no soft tokens; add [P] or [P*n]")
        self.encoder[name] = nn.ModuleList(PromptEncoder(max(n, 1), size, config) for n in rows)
        self.create_mixture(name, config)

    def prompt_table(self, name: str) -> torch.Tensor:
        """The encoder output; without autograd it is cached until an encoder parameter changes (inference only
        needs the output embeddings, so evaluation does not re-run the LSTM on every forward)."""
        if torch.is_grad_enabled():
            return self._encode(name)
        versions = tuple(param._version for param in self.encoder[name].parameters())
        cached = self._cache.get(name)
        if cached is None or cached[0] != versions:
            cached = self._cache[name] = (versions, self._encode(name))
        return cached[1]

    def _encode(self, name: str) -> torch.Tensor:
        parts = [enc() for enc, template in zip(self.encoder[name], self.templates[name], strict=True)
                 if template.num_soft]
        return torch.cat(parts, dim=0)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._cache.pop(adapter_name, None)


class PTuningEncoderModel(MixturePromptModel):
    """PEFT tuner of PTuningEncoderConfig."""

    prefix = "ptuning_"
    layer_cls = PTuningEncoderLayer
    tuner_layer_cls = PTuningEncoderLayer

    def export_static(self, directory: str | Path, adapter_name: str | None = None) -> Path:
        """Save the encoder's output as a MixturePromptConfig adapter (no LSTM/MLP needed to load it).

        The exported adapter gives the same outputs: it has the same compiled templates, the encoder output as its
        soft table and the same mixture weights.
        """
        from safetensors.torch import save_file

        from prompt_adapters.methods.mixture import MixturePromptConfig

        name = adapter_name or self.active_adapter
        source = self.peft_config[name]
        config = MixturePromptConfig(
            templates=list(source.templates),
            words=source.words,
            lm_kind=source.lm_kind,
            max_length=source.max_length,
            compiled_templates=source.compiled_templates,
            model_fingerprint=source.model_fingerprint,
            base_model_name_or_path=source.base_model_name_or_path,
            tokenizer_name_or_path=source.tokenizer_name_or_path,
            task_type=source.task_type,
            learn_weights=bool(self.state.settings[name]["learn_weights"]),
        )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(directory))
        prefix = "base_model." + MixturePromptModel.prefix + "state."
        with torch.no_grad():
            tensors = {prefix + "table": self.state.prompt_table(name).detach().float().cpu().contiguous()}
            if name in self.state.mixture:
                tensors[prefix + "mixture"] = self.state.mixture[name].detach().float().cpu().contiguous()
        save_file(tensors, str(directory / "adapter_model.safetensors"))
        return directory
