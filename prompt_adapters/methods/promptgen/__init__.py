"""Zhang et al. (2022): PromptGen, input-conditioned soft prompts from a generator."""

from prompt_adapters.methods.promptgen.config import PromptGenConfig
from prompt_adapters.methods.promptgen.model import PromptGenCollator, PromptGenLayer, PromptGenModel
from prompt_adapters.methods.promptgen.vocab import common_vocabulary
from prompt_adapters.methods.promptgen.warmup import unwritable_reason, warm_up
from prompt_adapters.peft_registry import Method, register_method

METHOD = register_method(Method("promptgen", PromptGenConfig, PromptGenModel))

__all__ = [
    "METHOD",
    "PromptGenCollator",
    "PromptGenConfig",
    "PromptGenLayer",
    "PromptGenModel",
    "common_vocabulary",
    "unwritable_reason",
    "warm_up",
]
