"""PTuningEncoderConfig: Liu et al. (2021) P-tuning, pseudo tokens produced by a prompt encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from transformers import PreTrainedTokenizerBase

from prompt_adapters.template import WordMode
from prompt_adapters.tuner import InitMode, PromptConfig

#: what produces the vectors of the pseudo tokens
EncoderKind = Literal["lstm", "mlp", "none"]
ENCODERS: tuple[EncoderKind, ...] = get_args(EncoderKind)


@dataclass
class PTuningEncoderConfig(PromptConfig):
    """Pseudo tokens anywhere in a template, their vectors produced by a prompt encoder.

    The default template is the paper's LAMA setting for masked LMs, ``(3, sub, 3, obj, 3)``; use
    ``"[P*3] [X] [P*3] [Y]"`` for causal LMs. Plain words are hard anchors (``words="hard"``).

    Args:
        encoder: ``"lstm"`` (bidirectional LSTM + 2-layer ReLU MLP, the paper's), ``"mlp"`` (2-layer ReLU MLP on the
            input embeddings) or ``"none"`` (the embeddings themselves, i.e. plain prompt tuning).
        embed_size: size of the encoder's input embeddings (default: the model's embedding size).
        lstm_hidden_size: hidden size per direction (default: embed_size // 2, the LAMA code; the few-shot code uses
            embed_size).
        lstm_layers, lstm_dropout: LSTM depth and dropout (paper: 2 and 0.0).
        mlp_hidden_size: hidden size of the MLP (default: the model's embedding size).
    """

    method_type: ClassVar[str] = "PTUNING_ENCODER"

    templates: list[str] = field(default_factory=lambda: ["[P*3] [X] [P*3] [Y] [P*3]"])
    words: WordMode = field(default="hard")
    init: InitMode = field(default="random")
    encoder: EncoderKind = field(default="lstm")
    embed_size: int | None = field(default=None)
    lstm_hidden_size: int | None = field(default=None)
    lstm_layers: int = field(default=2)
    lstm_dropout: float = field(default=0.0)
    mlp_hidden_size: int | None = field(default=None)

    def __post_init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        super().__post_init__(tokenizer)
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        for name in ("embed_size", "lstm_hidden_size", "mlp_hidden_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive size, got {value}")
        if self.lstm_layers < 1:
            raise ValueError(f"lstm_layers must be >= 1, got {self.lstm_layers}")
        if not 0 <= self.lstm_dropout < 1:
            raise ValueError(f"lstm_dropout must be a probability in [0, 1), got {self.lstm_dropout}")
