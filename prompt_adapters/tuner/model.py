"""``PromptTuner``: the peft ``BaseTuner`` of every prompt method (adapter state in one headless ``PromptLayer``,
behaviour through the hooks of ``prompt_adapters.injection``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTuner, cast_adapter_dtype
from torch import nn
from transformers import AutoTokenizer

from prompt_adapters.injection import PromptHooks, attached_hooks
from prompt_adapters.model_facts import detect_lm_kind
from prompt_adapters.sharding import check_shardable, gathered_embeddings, is_sharded
from prompt_adapters.tuner.config import PromptConfig
from prompt_adapters.tuner.fit import check_adapter_fits, warn_rows_after_answer
from prompt_adapters.tuner.layer import BASE_ROW, PromptLayer


class PromptTuner(BaseTuner):
    """BaseTuner of every prompt method: adapter state in one headless layer, behaviour through hooks.

    A method's tuner subclasses it and sets ``prefix`` (peft's state-dict prefix, unique per method), ``layer_cls``
    and ``tuner_layer_cls`` (its ``PromptLayer`` subclass) and ``deep`` (whether the hooks add per-depth deltas).
    """

    prefix: str = "prompt_"
    tuner_layer_cls = PromptLayer
    layer_cls: ClassVar[type[PromptLayer[Any]]] = PromptLayer
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}
    uses_shared_state = True
    deep: ClassVar[bool] = False

    @property
    def state(self) -> PromptLayer[Any]:
        """The headless layer holding every adapter of this tuner (saved under ``<prefix>state``)."""
        return getattr(self, self.prefix + "state")

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """peft's ``inject_adapter``; an adapter added in inference mode starts frozen."""
        self._adapter_being_added = adapter_name
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        if self.peft_config[adapter_name].inference_mode:
            self.state.set_requires_grad(adapter_name, requires_grad=False)

    def _prepare_model(self, peft_config: PromptConfig, model: nn.Module) -> None:
        """Compile templates, check the config fits the model, then create the adapter and the hooks."""
        adapter_name = self._adapter_being_added
        self._prepare_config(adapter_name, peft_config, model)
        if not hasattr(self, self.prefix + "state"):
            self._replace_earlier_hooks(model)
            setattr(self, self.prefix + "state", self.layer_cls())
            self.hooks = PromptHooks(model, self.state, deep=self.deep)
            self.hooks.attach()
        if is_sharded(model):
            check_shardable(self.state)
        with self.hooks.paused(), gathered_embeddings(model):  # a sharded base: the adapter starts from whole rows
            self.state.add(adapter_name, peft_config, model)
        self.state.track_base(model)
        self.state.set_adapter(self.active_adapters)
        # rows that are parameters of their own (not computed from every row by an encoder or a generator)
        if peft_config.lm_kind == "causal" and not peft_config.inference_mode and adapter_name in self.state.table:
            warn_rows_after_answer(adapter_name, self.state.templates[adapter_name])

    @staticmethod
    def _replace_earlier_hooks(model: nn.Module) -> None:
        """A model wrapped a second time runs the new adapter: the earlier PeftModel's hooks are removed, with peft's
        warning (its layers sit inside the model, so peft sees them; ours are hooks, so we look for them)."""
        earlier = attached_hooks(model)
        if not earlier:
            return
        warnings.warn(
            "You are trying to modify a model with PEFT for a second time. If you want to reload the model with a "
            "different config, make sure to call `.unload()` before. The prompt hooks of the earlier PeftModel are "
            "removed from this model: the new adapter is the one that runs, and the earlier PeftModel no longer "
            "applies its prompts.",
            UserWarning,
            stacklevel=4,
        )
        for hooks in earlier:
            hooks.detach()

    def _prepare_config(self, adapter_name: str, config: PromptConfig, model: nn.Module) -> None:
        """Complete ``config`` for ``model`` (its LM kind, its compiled templates), check the adapter fits the model
        (``check_adapter_fits``), and record the model's fingerprint in a new adapter's config."""
        if config.lm_kind is None:
            config.lm_kind = detect_lm_kind(model)
        if config.compiled_templates is None:
            source = config.tokenizer_name_or_path or getattr(model, "name_or_path", None)
            if not source:
                raise ValueError(
                    "cannot compile the templates: pass tokenizer= to the config or set tokenizer_name_or_path"
                )
            config.compile(AutoTokenizer.from_pretrained(source))
        fingerprint = check_adapter_fits(adapter_name, config, model)
        if config.model_fingerprint is None:
            config.model_fingerprint = fingerprint

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """Drop the adapter name from ``...<prefix>state.<attr>.<adapter>[.<rest>]`` keys, nested modules included.

        peft's default only handles the name as the last or second-to-last segment; encoders (ModuleDicts of
        modules) have it deeper, and would otherwise load under another adapter name with random weights.
        """
        head, marker, tail = key.partition(cls.prefix + "state.")
        parts = tail.split(".")
        if marker and len(parts) >= 2 and parts[1] == adapter_name:
            return head + marker + ".".join([parts[0], *parts[2:]])
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        """Never called: the method targets no module (its state is the headless layer)."""

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for _name, param in model.named_parameters():
            param.requires_grad = False
        if hasattr(self, self.prefix + "state") and self.active_adapters:
            self.state.set_adapter(self.active_adapters)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        """peft's ``set_requires_grad``: the adapter state lives in the headless layer, outside ``self.model``."""
        super().set_requires_grad(adapter_names, requires_grad)
        self.state.set_requires_grad(adapter_names, requires_grad)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """Enable or disable every adapter at once (disabled: prompt positions read the template's words)."""
        self.state.enable_adapters(enabled)

    def disable_adapter_layers(self) -> None:
        """peft's ``disable_adapter_layers``: the hard-prompt baseline."""
        self._enable_adapter_layers(False)

    def enable_adapter_layers(self) -> None:
        """peft's ``enable_adapter_layers``."""
        self._enable_adapter_layers(True)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """peft's ``set_adapter``, for one adapter (prompt adapters run one at a time, or one per input row)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(f"prompt adapters run one adapter at a time, got {names}")
        if names[0] not in self.peft_config:
            raise ValueError(f"adapter {names[0]!r} not found; available: {sorted(self.peft_config)}")
        self.state.set_adapter(names, inference_mode=inference_mode)
        self.active_adapter = names[0]

    def delete_adapter(self, adapter_name: str) -> None:
        """peft's ``delete_adapter``; after the last one the hooks stay but the model runs as the base model."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} does not exist; available: {sorted(self.peft_config)}")
        del self.peft_config[adapter_name]
        self.state.delete_adapter(adapter_name)
        remaining = self.state.active_adapters
        self.active_adapter = remaining[0] if len(remaining) == 1 else list(remaining)

    def _check_merge_allowed(self) -> None:
        raise ValueError(
            f"{type(self).__name__} cannot be merged: soft prompts are input vectors, not weight updates, so there "
            "is nothing to add to the base weights. Keep the adapter and load it with PeftModel.from_pretrained, "
            "or call unload() to get the untouched base model back."
        )

    def merge_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: soft prompts are input vectors, not weight updates (see ``_check_merge_allowed``)."""
        self._check_merge_allowed()

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        self.hooks.detach()
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """peft's rule: adapters follow the base weight's dtype, and ``autocast_adapter_dtype=True`` (the default)
        upcasts fp16 / bf16 adapter weights to fp32. The state layer sits outside ``self.model``, hence ``self``."""
        cast_adapter_dtype(self, adapter_name=adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """peft's per-row adapters: ``adapter_names`` gives one adapter per input row (``"__base__"``: the bare
        model), so adapters with different templates and soft-row counts run in one batch. PeftModel enters this
        around ``forward`` and ``generate`` and drops ``adapter_names`` from the kwargs itself."""
        names = kwargs.get("adapter_names")
        if names is None:
            yield
            return
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise TypeError(f"adapter_names must be a list of adapter names, one per input row, got {names!r}")
        if not self.state.supports_adapter_names:
            raise ValueError(
                f"{type(self).__name__} runs one adapter per batch, so adapter_names is not supported: its prompt "
                "table is generated from each input by the adapter's own generator model; group rows by adapter and "
                "call set_adapter() between batches"
            )
        unknown = sorted({name for name in names if name != BASE_ROW} - set(self.peft_config))
        if unknown:
            raise ValueError(
                f"adapter_names has unknown adapter(s) {unknown}; available: {sorted(self.peft_config)} "
                f"and {BASE_ROW!r} for the base model"
            )
        previous, self.state.row_adapters = self.state.row_adapters, list(names)
        try:
            yield
        finally:
            self.state.row_adapters = previous

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward with the hooks active (``adapter_names``: one adapter per input row)."""
        with self._enable_peft_forward_hooks(**kwargs):
            kwargs.pop("adapter_names", None)
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's ``generate()``, with the method's extra inputs (PromptGen's generator inputs) consumed
        once, before decoding starts. Warns once per adapter when the inputs carry no prompt position."""
        ids = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("input_ids")
        checked = (ids, kwargs.get("decoder_input_ids"), kwargs.get("prompt_ids"))
        with self._enable_peft_forward_hooks(**kwargs):
            kwargs.pop("adapter_names", None)
            with self.hooks.generation(*checked), self.state.generation(self.hooks, kwargs) as inputs:
                return self.model.generate(*args, **inputs)
