"""Liu et al. (2021): P-tuning with a prompt encoder."""

from prompt_adapters.methods.ptuning.config import PTuningEncoderConfig
from prompt_adapters.methods.ptuning.model import PromptEncoder, PTuningEncoderLayer, PTuningEncoderModel

__all__ = ["PTuningEncoderConfig", "PTuningEncoderLayer", "PTuningEncoderModel", "PromptEncoder"]
