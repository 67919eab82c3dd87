"""Qin & Eisner (2021): deep perturbation of soft prompts."""

from prompt_adapters.methods.deep.config import DeepPerturbConfig
from prompt_adapters.methods.deep.model import DeepPerturbLayer, DeepPerturbModel
from prompt_adapters.peft_registry import Method, register_method

METHOD = register_method(Method("deep", DeepPerturbConfig, DeepPerturbModel))

__all__ = ["METHOD", "DeepPerturbConfig", "DeepPerturbLayer", "DeepPerturbModel"]
