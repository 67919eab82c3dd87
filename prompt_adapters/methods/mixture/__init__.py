"""Qin & Eisner (2021): mixtures of soft prompts."""

from prompt_adapters.methods.mixture.config import MixturePromptConfig
from prompt_adapters.methods.mixture.model import MixturePromptLayer, MixturePromptModel

__all__ = ["MixturePromptConfig", "MixturePromptLayer", "MixturePromptModel"]
