"""The test matrix of the prompt methods, read from the library's one list (``prompt_adapters.METHODS``).

A new method joins every method-parametrised test through that list; it needs an entry in ``SETTINGS`` here only
when its tiny test config needs more than a list of templates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase

from prompt_adapters import METHODS
from prompt_adapters.tuner import PromptConfig

#: every method's name, in the library's order
METHOD_NAMES = tuple(method.name for method in METHODS)
#: each method's peft type, by name
PEFT_TYPES = {method.name: method.peft_type for method in METHODS}
#: the methods whose adapters run together in one batch (peft's ``adapter_names``)
MIXING_METHODS = tuple(method.name for method in METHODS if method.model_cls.layer_cls.supports_adapter_names)
#: what a method's test config needs besides templates, from the generator folder (absent: the templates suffice)
SETTINGS: dict[str, Callable[[str], dict[str, Any]]] = {
    "ptuning": lambda generator_dir: {"templates": ["[P*2] [X] [P] born in [Y] ."]},
    "promptgen": lambda generator_dir: {
        "templates": [], "generator_name_or_path": generator_dir, "num_before": 2, "num_after": 1
    },
}


#: the methods whose adapters read a generator model of their own
GENERATOR_METHODS = tuple(name for name, settings in SETTINGS.items() if "generator_name_or_path" in settings(""))


def make_config(method: str, tokenizer: PreTrainedTokenizerBase, templates: list[str], generator_dir: str = "",
                **kwargs: Any) -> PromptConfig:
    """The tiny test config of ``method``: ``templates`` (or the method's own, see ``SETTINGS``), compiled with
    ``tokenizer``, with ``kwargs`` on top."""
    config_cls = next(spec.config_cls for spec in METHODS if spec.name == method)
    own = SETTINGS[method](generator_dir) if method in SETTINGS else {}
    fields = {"templates": templates, **own, **kwargs}
    return config_cls(tokenizer=tokenizer, **fields)
