"""Liu et al. (2021): P-tuning with a prompt encoder."""

from prompt_adapters.methods.ptuning.config import PTuningEncoderConfig
from prompt_adapters.methods.ptuning.model import PromptEncoder, PTuningEncoderLayer, PTuningEncoderModel
from prompt_adapters.peft_registry import Method, register_method

METHOD = register_method(Method("ptuning", PTuningEncoderConfig, PTuningEncoderModel))

__all__ = ["METHOD", "PTuningEncoderConfig", "PTuningEncoderLayer", "PTuningEncoderModel", "PromptEncoder"]
