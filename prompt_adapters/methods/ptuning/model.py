"""P-tuning: the soft rows of each template come from a prompt encoder over trainable input embeddings.

The encoder is saved with the adapter (so training resumes exactly; peft's own P-tuning drops it), and
``export_static`` turns its output into a plain MixturePromptConfig adapter that loads without LSTM or MLP.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import torch
from torch import nn

from prompt_adapters.methods.mixture import MixturePromptConfig, MixturePromptModel
from prompt_adapters.methods.ptuning.config import PTuningEncoderConfig
from prompt_adapters.tuner import PromptLayer, PromptTuner


class PromptEncoder(nn.Module):
    """h = MLP([LSTM->(e) : LSTM<-(e)]) (paper eq. 4), an MLP on e, or e itself, for one template's rows."""

    def __init__(self, rows: int, output_size: int, config: PTuningEncoderConfig) -> None:
        super().__init__()
        embed = config.embed_size or output_size
        self.kind = config.encoder
        self.embedding = nn.Embedding(rows, embed)
        if self.kind == "lstm":
            hidden = config.lstm_hidden_size or max(1, embed // 2)
            self.lstm = nn.LSTM(
                embed,
                hidden,
                num_layers=config.lstm_layers,
                dropout=config.lstm_dropout,
                bidirectional=True,
                batch_first=True,
            )
            mlp_in = 2 * hidden
        else:
            mlp_in = embed
        if self.kind in ("lstm", "mlp"):
            mlp_hidden = config.mlp_hidden_size or output_size
            self.mlp = nn.Sequential(nn.Linear(mlp_in, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, output_size))
        elif embed != output_size:
            raise ValueError(
                f"encoder='none' needs embed_size == the model's embedding size {output_size}, got {embed}"
            )

    def forward(self) -> torch.Tensor:
        """The (rows, output size) vectors of the template's soft rows."""
        vectors = self.embedding.weight.unsqueeze(0)
        if self.kind == "lstm":
            vectors = self.lstm(vectors)[0]
        if self.kind in ("lstm", "mlp"):
            vectors = self.mlp(vectors)
        return vectors.squeeze(0)

    def signature(self) -> Hashable:
        """What encoders must share to run as one batched computation: kind, every parameter's shape, dtype and
        device, and the dropout in force."""
        params = tuple((tuple(p.shape), p.dtype, p.device) for p in self.parameters())
        dropout = self.lstm.dropout if self.kind == "lstm" and self.training else 0.0
        return self.kind, params, dropout


def encode_group(encoders: Sequence[PromptEncoder]) -> torch.Tensor:
    """The outputs of encoders with one ``signature``, stacked (encoders, rows, output size), computed at once.

    The same math as each ``PromptEncoder.forward`` (``nn.LSTM``'s gate order i, f, g, o, its two biases, both
    directions concatenated, dropout between layers in training), with every adapter's weights stacked and the
    recurrence run as batched matrix products: one chain of small kernels for all encoders instead of one LSTM call
    each, which is what bounds a step of many adapters on a GPU.
    """
    first = encoders[0]
    vectors = torch.stack([encoder.embedding.weight for encoder in encoders])
    if first.kind == "lstm":
        vectors = _stacked_lstm(vectors, [encoder.lstm for encoder in encoders])
    if first.kind in ("lstm", "mlp"):
        for index in (0, 2):  # Linear, ReLU, Linear
            weight = torch.stack([encoder.mlp[index].weight for encoder in encoders])
            bias = torch.stack([encoder.mlp[index].bias for encoder in encoders])
            vectors = _batched_linear(vectors, weight, bias)
            if index == 0:
                vectors = torch.relu(vectors)
    return vectors


def _batched_linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``inputs @ weight.T + bias`` for each of a stack of (out, in) weights, computed as ``(weight @ inputs.T).T``:
    the weight's gradient then comes out in the weight's own layout, so each adapter's slice of it becomes the
    parameter's gradient as it is, without a copy per parameter."""
    outputs = torch.bmm(weight, inputs.transpose(1, 2)).transpose(1, 2)
    return outputs if bias is None else outputs + bias.unsqueeze(1)


def _stacked_lstm(inputs: torch.Tensor, lstms: Sequence[nn.LSTM]) -> torch.Tensor:
    """Bidirectional multi-layer LSTMs (zero initial state, batch of one sequence each) over ``inputs`` of shape
    (lstms, steps, input size); both directions run together, the backward one on the time-reversed sequence."""
    first = lstms[0]
    groups, steps = inputs.shape[:2]
    for layer in range(first.num_layers):
        suffixes = (f"_l{layer}", f"_l{layer}_reverse")

        def stacked(kind: str, suffixes: tuple[str, ...] = suffixes) -> torch.Tensor:
            return torch.stack([getattr(lstm, kind + suffix) for suffix in suffixes for lstm in lstms])

        # (2 * lstms, steps, input size): forward sequences, then the reversed ones
        sequences = torch.cat([inputs, inputs.flip(1)])
        projected = _batched_linear(sequences, stacked("weight_ih"), stacked("bias_ih") + stacked("bias_hh"))
        recurrent = stacked("weight_hh")
        hidden = projected.new_zeros(2 * groups, 1, recurrent.shape[2])
        cell = projected.new_zeros(2 * groups, 1, recurrent.shape[2])
        outputs = []
        for step in range(steps):
            gates = projected[:, step : step + 1] + _batched_linear(hidden, recurrent)
            in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
            cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
            hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
            outputs.append(hidden)
        states = torch.cat(outputs, dim=1)
        inputs = torch.cat([states[:groups], states[groups:].flip(1)], dim=-1)
        if layer < first.num_layers - 1 and first.dropout and first.training:
            inputs = nn.functional.dropout(inputs, first.dropout, training=True)
    return inputs


class PTuningEncoderLayer(PromptLayer[PTuningEncoderConfig]):
    """One PromptEncoder per template (ModuleList) per adapter, plus the mixture weights for K > 1."""

    adapter_layer_names = ("encoder", "mixture")
    other_param_names = ("templates", "settings")

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict()
        self._cache: dict[str, tuple[tuple[tuple[int, int], ...], torch.Tensor]] = {}

    def create(self, name: str, config: PTuningEncoderConfig, model: nn.Module, init_ids: list[int]) -> None:
        """One prompt encoder per template with soft rows, and learned mixture weights for K > 1 templates."""
        size = int(model.get_input_embeddings().weight.shape[1])
        rows = [template.num_soft for template in self.templates[name]]
        if not any(rows):
            raise ValueError(f"P-tuning templates {config.templates} have no soft tokens; add [P] or [P*n]")
        self.encoder[name] = nn.ModuleList(PromptEncoder(max(n, 1), size, config) for n in rows)
        self.create_mixture(name, learn_weights=True, data_dependent=False)

    def prompt_table(self, name: str) -> torch.Tensor:
        """The encoder output; without autograd it is cached until an encoder parameter changes (inference only
        needs the output embeddings, so evaluation does not re-run the LSTM on every forward)."""
        return self._tables([name], lambda names: {name: self._encode(name) for name in names})[name]

    def prompt_tables(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every named adapter's table, the encoders that share a shape computed as one batched computation
        (``encode_group``), cached as in ``prompt_table``."""
        return self._tables(names, self._encode_many)

    def _tables(
        self, names: Sequence[str], encode: Callable[[Sequence[str]], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``encode(names)``; without autograd, only for the adapters whose encoder changed since it was cached.

        A parameter counts as changed when its storage or its version counter changed. Fused optimisers (torch's
        ``AdamW(fused=True)``, the HF Trainer's default ``adamw_torch_fused``) update parameters without bumping the
        version counter, so a forward with autograd (a training step, always before an optimiser step) also drops
        the cache."""
        if torch.is_grad_enabled():
            self._cache.clear()
            return encode(names)
        stale = []
        for name in names:
            versions = tuple((param.data_ptr(), param._version) for param in self.encoder[name].parameters())
            cached = self._cache.get(name)
            if cached is None or cached[0] != versions:
                stale.append((name, versions))
        fresh = encode([name for name, _ in stale]) if stale else {}
        for name, versions in stale:
            self._cache[name] = (versions, fresh[name])
        return {name: self._cache[name][1] for name in names}

    def _encode_many(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """``_encode`` of several adapters; encoders are grouped by ``signature`` and each group runs at once."""
        groups: dict[Hashable, list[PromptEncoder]] = {}
        for name in names:
            for encoder in self._soft_encoders(name):
                groups.setdefault(encoder.signature(), []).append(encoder)
        outputs: dict[int, torch.Tensor] = {}
        for members in groups.values():
            if len(members) == 1 or members[0].kind == "none":
                outputs.update((id(encoder), encoder()) for encoder in members)
            else:
                outputs.update(zip(map(id, members), encode_group(members).unbind(0), strict=True))
        return {name: torch.cat([outputs[id(encoder)] for encoder in self._soft_encoders(name)]) for name in names}

    def _soft_encoders(self, name: str) -> list[PromptEncoder]:
        """The encoders of the adapter's templates that have soft rows, in table order."""
        return [encoder for encoder, template in zip(self.encoder[name], self.templates[name], strict=True)
                if template.num_soft]

    def _encode(self, name: str) -> torch.Tensor:
        """Adapter ``name``'s table: its encoders' outputs, one after the other."""
        return torch.cat([encoder() for encoder in self._soft_encoders(name)], dim=0)

    def delete_adapter(self, adapter_name: str) -> None:
        """peft's ``delete_adapter``, with the adapter's cached encoder output."""
        super().delete_adapter(adapter_name)
        self._cache.pop(adapter_name, None)


class PTuningEncoderModel(PromptTuner):
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
