"""The only module that touches peft internals: version check, PeftType extension, method registration and the
patches that make peft's loading, cards, ``generate`` and per-row adapters work for prompt adapters.

peft has no plugin entry points, so a new method needs (1) a ``PeftType`` member, added here at run time, and
(2) ``register_peft_method``, which fills peft's config / tuner / prefix mappings. A method registers itself in its
own package's ``__init__.py`` with ``register_method(Method(...))``; ``prompt_adapters.methods.METHODS`` lists them.
"""

from __future__ import annotations

import enum
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import peft
from huggingface_hub import HfApi
from packaging.version import Version
from peft import PeftConfig, PeftModel
from peft.utils import register_peft_method
from peft.utils.peft_types import PeftType

from prompt_adapters.adapter_files import strict_config_from_pretrained, strict_from_pretrained, strict_load_adapter

if TYPE_CHECKING:  # the configs and tuners import this module to register themselves
    from prompt_adapters.tuner import PromptConfig, PromptTuner

SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))



@dataclass(frozen=True)
class Method:
    """One prompt method: its short name (the LAMA harness's ``--method``, the tests' id), its config class (a
    ``PromptConfig`` naming its ``PeftType`` member in ``method_type``) and its tuner class (a ``PromptTuner`` whose
    ``prefix`` is its state-dict prefix)."""

    name: str
    config_cls: type[PromptConfig]
    model_cls: type[PromptTuner]

    @property
    def peft_type(self) -> str:
        """The method's ``PeftType`` member name, e.g. ``"MIXTURE_PROMPT"``."""
        return self.config_cls.method_type


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


def register_method(method: Method) -> Method:
    """Register ``method`` with peft (idempotent): its ``PeftType`` member and peft's config / tuner / prefix
    mappings, so ``get_peft_model``, ``PeftModel.from_pretrained`` and ``AutoPeftModel*`` know it."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    member = extend_peft_type(method.peft_type)
    if member not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(name=method.peft_type.lower(), config_cls=method.config_cls, model_cls=method.model_cls,
                             prefix=method.model_cls.prefix)
    return method


def install_peft_patches(methods: Sequence[Method]) -> None:
    """Patch peft's loading, model cards, ``generate`` and per-row adapter hooks for adapters of prompt methods
    (idempotent: a second call changes nothing); other peft methods keep peft's behaviour.

    The prompt methods are ``methods``, then any registered later with ``register_method`` (a method written
    outside this package), found in peft's own mapping by their config's ``method_type``.
    """
    listed = tuple(method.peft_type for method in methods)

    def ours() -> tuple[str, ...]:
        """The peft types of the prompt methods registered now: ``methods``' in their order, then later ones."""
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        later = tuple(peft_type for peft_type, config_cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()
                      if peft_type not in listed and getattr(config_cls, "method_type", None) == peft_type)
        return listed + later

    _patch_peft_model_cards(ours)
    _patch_peft_generate(ours)
    _patch_peft_forward_hooks(ours)
    _patch_strict_loading(ours)


CARD_MARKER = "<!-- prompt-adapters usage -->"


def usage_card(config: PeftConfig, repo_id: str | None = None) -> str:
    """Model-card section telling a reader how to load this adapter (it needs ``import prompt_adapters``)."""
    base = config.base_model_name_or_path or "<base model id or path>"
    kind = {"masked": "AutoModelForMaskedLM", "causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}
    auto = kind.get(getattr(config, "lm_kind", None) or "", "AutoModel")
    templates = "\n".join(f"- `{t}`" for t in getattr(config, "templates", []))
    return f"""{CARD_MARKER}
## How to load this adapter

This is a **{PeftType(config.peft_type).value}** soft-prompt adapter made with
[prompt-adapters](https://pypi.org/project/prompt-adapters/) (library_name: peft). peft only knows the
method once `prompt_adapters` is imported:

```python
import prompt_adapters  # registers the method with peft
from peft import PeftModel
from transformers import {auto}, AutoTokenizer

base = {auto}.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{repo_id or '<this repo>'}")
collate = prompt_adapters.PromptCollator(AutoTokenizer.from_pretrained("{base}"), model)
```

Templates:
{templates}
"""


def _is_ours(model: PeftModel, ours: Callable[[], tuple[str, ...]]) -> bool:
    """Whether ``model`` holds an adapter of a prompt method (one of the peft types ``ours()`` gives)."""
    types = ours()
    return any(config.peft_type in types for config in model.peft_config.values())


def _write_card(model: PeftModel, directory: str, repo_id: str | None = None) -> None:
    path = os.path.join(directory, "README.md")
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    text = text.split(CARD_MARKER)[0].rstrip() + "\n\n" + usage_card(model.active_peft_config, repo_id)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _patch_strict_loading(ours: Callable[[], tuple[str, ...]]) -> None:
    """Prompt adapters load only from intact weights files, with every tensor present and finite, and configs name a
    known method (the checks live in ``prompt_adapters.adapter_files``; other peft methods load as peft loads them).
    ``PeftConfig.from_pretrained`` (used by ``AutoPeftModel*``) checks the ``peft_type`` of a local config too."""
    if getattr(PeftModel, "_prompt_adapters_strict", False):
        return
    PeftConfig.from_pretrained = classmethod(  # type: ignore[method-assign,assignment]
        strict_config_from_pretrained(PeftConfig.from_pretrained.__func__, ours)  # type: ignore[attr-defined]
    )
    PeftModel.load_adapter = strict_load_adapter(PeftModel.load_adapter, ours)  # type: ignore[method-assign]
    PeftModel.from_pretrained = classmethod(  # type: ignore[method-assign,assignment]
        strict_from_pretrained(PeftModel.from_pretrained.__func__, ours)  # type: ignore[attr-defined]
    )
    PeftModel._prompt_adapters_strict = True  # type: ignore[attr-defined]


def _patch_peft_model_cards(ours: Callable[[], tuple[str, ...]]) -> None:
    """Make saved and pushed cards of our adapters say how to load them.

    ``PeftModel.push_to_hub`` (transformers' mixin) replaces the saved README with a generic card, so after a push
    of one of our adapters the card is uploaded again with the usage section.
    """
    if getattr(PeftModel, "_prompt_adapters_patched", False):
        return
    original_card = PeftModel.create_or_update_model_card
    original_push = PeftModel.push_to_hub

    def create_or_update_model_card(self: PeftModel, output_dir: str) -> None:
        original_card(self, output_dir)
        if _is_ours(self, ours):
            _write_card(self, output_dir)

    def push_to_hub(self: PeftModel, repo_id: str, *args: Any, **kwargs: Any) -> Any:
        result = original_push(self, repo_id, *args, **kwargs)
        if _is_ours(self, ours):
            with tempfile.TemporaryDirectory() as directory:
                _write_card(self, directory, repo_id)
                HfApi().upload_file(
                    path_or_fileobj=os.path.join(directory, "README.md"),
                    path_in_repo="README.md",
                    repo_id=repo_id,
                    token=kwargs.get("token"),
                    commit_message="Add prompt-adapters usage to the model card",
                )
        return result

    PeftModel.create_or_update_model_card = create_or_update_model_card  # type: ignore[method-assign]
    PeftModel.push_to_hub = push_to_hub  # type: ignore[method-assign]
    PeftModel._prompt_adapters_patched = True  # type: ignore[attr-defined]


def _patch_peft_forward_hooks(ours: Callable[[], tuple[str, ...]]) -> None:
    """Hand ``adapter_names`` to our tuner under ``disable_adapter()`` too.

    peft enters the tuner's ``_enable_peft_forward_hooks`` only while an adapter is enabled (a disabled LoRA row is the
    base layer whatever its name). A disabled prompt adapter still reads each row's template words at its prompt
    positions (the hard-prompt baseline), so each row needs its own adapter's words even then.
    """
    if getattr(PeftModel, "_prompt_adapters_forward_hooks_patched", False):
        return
    original = PeftModel._enable_peft_forward_hooks

    @contextmanager
    def _enable_peft_forward_hooks(self: PeftModel, *args: Any, **kwargs: Any) -> Iterator[None]:
        if _is_ours(self, ours):
            with self.base_model._enable_peft_forward_hooks(*args, **kwargs):
                yield
            return
        with original(self, *args, **kwargs):
            yield

    PeftModel._enable_peft_forward_hooks = _enable_peft_forward_hooks  # type: ignore[method-assign]
    PeftModel._prompt_adapters_forward_hooks_patched = True  # type: ignore[attr-defined]


def _patch_peft_generate(ours: Callable[[], tuple[str, ...]]) -> None:
    """Route ``PeftModel.generate`` of our adapters through the tuner's ``generate``.

    peft's task-specific classes (``PeftModelForCausalLM``, ``...Seq2SeqLM``) already call ``base_model.generate``;
    the plain ``PeftModel`` (no ``task_type``, our default) calls the transformers model's ``generate`` directly, which
    would skip the one-off preparation of the method's inputs (PromptGen's generator inputs, ``prompt_ids``) and the
    check that the inputs carry prompt positions.
    """
    if getattr(PeftModel, "_prompt_adapters_generate_patched", False):
        return
    original_generate = PeftModel.generate

    def generate(self: PeftModel, *args: Any, **kwargs: Any) -> Any:
        if _is_ours(self, ours):
            return self.base_model.generate(*args, **kwargs)
        return original_generate(self, *args, **kwargs)

    PeftModel.generate = generate  # type: ignore[method-assign]
    PeftModel._prompt_adapters_generate_patched = True  # type: ignore[attr-defined]
