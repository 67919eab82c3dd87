"""Qin & Eisner (2021): mixtures of soft prompts."""

from prompt_adapters.methods.mixture.config import MixturePromptConfig
from prompt_adapters.methods.mixture.model import MixturePromptLayer, MixturePromptModel
from prompt_adapters.peft_registry import Method, register_method

METHOD = register_method(Method("mixture", MixturePromptConfig, MixturePromptModel))

__all__ = ["METHOD", "MixturePromptConfig", "MixturePromptLayer", "MixturePromptModel"]
