"""The only module that touches peft internals: version check, PeftType extension and method registration.

peft has no plugin entry points, so a new method needs (1) a ``PeftType`` member, added here at run time, and
(2) ``register_peft_method``, which fills peft's config / tuner / prefix mappings. A new method is one line in
``METHODS``.
"""

from __future__ import annotations

import enum
import importlib
import sys

import peft
from packaging.version import Version
from peft.utils import register_peft_method
from peft.utils.peft_types import PeftType

SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))

MIXTURE_PROMPT = "MIXTURE_PROMPT"
DEEP_PERTURB = "DEEP_PERTURB"

#: (peft type, module, config class, tuner class); the tuner's ``prefix`` is the state-dict prefix
METHODS: tuple[tuple[str, str, str, str], ...] = (
    (MIXTURE_PROMPT, "prompt_adapters.methods.mixture", "MixturePromptConfig", "MixturePromptModel"),
    (DEEP_PERTURB, "prompt_adapters.methods.deep", "DeepPerturbConfig", "DeepPerturbModel"),
)


def check_peft_version(version: str = peft.__version__) -> None:
    """Fail with a clear message on a peft version whose internals this package was not tested against."""
    low, high = SUPPORTED_PEFT
    if not low <= Version(version) < high:
        raise ImportError(
            f"prompt-adapters supports peft>={low},<{high} (it registers new PEFT methods through peft internals "
            f"that change between releases), but peft {version} is installed; install 'peft>={low},<{high}'"
        )


def extend_peft_type(name: str) -> PeftType:
    """Add ``name`` to the ``PeftType`` str-enum (idempotent) and return the member."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    if sys.version_info >= (3, 13) and hasattr(PeftType, "_add_member_"):
        PeftType._add_member_(name, member)
    else:
        type.__setattr__(PeftType, name, member)
        PeftType._member_map_[name] = member
    if name not in PeftType._member_names_:
        PeftType._member_names_.append(name)
    PeftType._value2member_map_[name] = member
    if not isinstance(PeftType[name], enum.Enum):
        raise RuntimeError(f"could not add {name} to peft's PeftType enum on Python {sys.version.split()[0]}")
    return member


def register_methods() -> None:
    """Register every method of ``METHODS`` with peft (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    check_peft_version()
    for peft_type, module_name, config_name, model_name in METHODS:
        member = extend_peft_type(peft_type)
        if member in PEFT_TYPE_TO_TUNER_MAPPING:
            continue
        module = importlib.import_module(module_name)
        model_cls = getattr(module, model_name)
        register_peft_method(
            name=peft_type.lower(), config_cls=getattr(module, config_name), model_cls=model_cls, prefix=model_cls.prefix
        )
