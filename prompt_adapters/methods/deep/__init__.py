"""Qin & Eisner (2021): deep perturbation of soft prompts."""

from prompt_adapters.methods.deep.config import DeepPerturbConfig
from prompt_adapters.methods.deep.model import DeepPerturbLayer, DeepPerturbModel

__all__ = ["DeepPerturbConfig", "DeepPerturbLayer", "DeepPerturbModel"]
