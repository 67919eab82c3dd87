"""The shared peft tuner of every prompt method, laid out as peft lays out its tuners: the config base
(``config``), the headless adapter layer and its hook contract (``layer``, with the shared answer scoring of
``answers``), the BaseTuner subclass (``model``) and the one check of an adapter against its base model (``fit``).

A method subclasses ``PromptConfig`` (its hyper-parameters), ``PromptLayer`` (its parameters and the hooks that
give the prompt table, the per-layer deltas and the answer distribution) and ``PromptTuner`` (its peft prefix).
"""

from prompt_adapters.model_facts import detect_lm_kind
from prompt_adapters.tuner.config import INIT_CHOICES, InitMode, PromptConfig
from prompt_adapters.tuner.layer import BASE_ROW, MixtureSettings, PromptLayer, embed_scale, initial_vectors, to_device
from prompt_adapters.tuner.model import PromptTuner

__all__ = [
    "BASE_ROW",
    "INIT_CHOICES",
    "InitMode",
    "MixtureSettings",
    "PromptConfig",
    "PromptLayer",
    "PromptTuner",
    "detect_lm_kind",
    "embed_scale",
    "initial_vectors",
    "to_device",
]
