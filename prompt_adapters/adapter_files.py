"""Adapter files, checked before and after peft reads them: a readable config naming a known method, intact
safetensors (or a tensors-only pickle read with torch's weights-only unpickler, as peft reads it), and complete,
finite tensors of the right method. Loading never runs code.

``prompt_adapters.peft_registry`` wraps peft's loading entry points with the ``strict_*`` functions here; their
``known_types`` gives the peft types of the prompt methods registered at the time of the call.
"""

from __future__ import annotations

import difflib
import json
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

SAFETENSORS_NAME = "adapter_model.safetensors"
#: what ``save_pretrained(safe_serialization=False)`` writes; read, as peft reads it, with the weights-only unpickler
PICKLE_NAME = "adapter_model.bin"
OTHER_PICKLE_NAMES = ("adapter_model.pt", "pytorch_model.bin")
CONFIG_NAME = "adapter_config.json"
#: config fields only a prompt adapter has
PROMPT_ADAPTER_FIELDS = frozenset({"compiled_templates", "model_fingerprint", "tokenizer_fingerprint"})



class AdapterFileError(ValueError):
    """An adapter directory that cannot be loaded safely."""


def adapter_directory(model_id: str | os.PathLike, subfolder: str | None = None) -> Path | None:
    """The local directory of an adapter (None for a Hub id that is not a local directory)."""
    path = Path(model_id) / subfolder if subfolder else Path(model_id)
    return path if path.is_dir() else None


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of ``directory``; a missing or unparsable file is named."""
    path = directory / CONFIG_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterFileError(f"{path} does not exist; expected an adapter directory saved by save_pretrained") \
            from None
    except (ValueError, UnicodeDecodeError) as error:
        raise AdapterFileError(f"{path} is not valid JSON ({error}); the file is truncated or corrupt") from None


def check_peft_type(config: Mapping[str, Any], path: Path, known_types: Sequence[str]) -> None:
    """The config's ``peft_type`` names a PEFT method, and a prompt adapter's config names one of ours.

    peft itself fails on a misspelt type with a bare ``KeyError``, and would build a LoRA with no target from a
    prompt adapter whose type was edited to ``LORA`` (the base model, silently).
    """
    from peft import PeftType

    found = config.get("peft_type")
    if found in known_types:
        return
    ours = list(known_types)
    ours_fields = sorted(PROMPT_ADAPTER_FIELDS & set(config))
    if found is None and not ours_fields:
        return  # peft reads a config without a type as the config class it is loaded with
    if not isinstance(found, str) or found not in PeftType.__members__:
        close = difflib.get_close_matches(str(found), [*ours, *PeftType.__members__], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AdapterFileError(
            f"{path} has peft_type {found!r}, which is not a PEFT method{hint}; expected one of the prompt-adapters "
            f"types {ours} (registered by 'import prompt_adapters') or a peft type such as 'LORA'"
        )
    if ours_fields:
        raise AdapterFileError(
            f"{path} has peft_type {found!r} but holds a prompt adapter (fields {ours_fields}); expected one of the "
            f"prompt-adapters types {ours}, the one it was saved with"
        )


def check_adapter_files(directory: Path, known_types: Sequence[str]) -> None:
    """Before peft reads anything: a readable config naming a known method, and intact weights: safetensors, or
    ``adapter_model.bin`` read as tensors only (``torch.load(weights_only=True)``, as peft reads it)."""
    from safetensors import SafetensorError, safe_open

    config = read_adapter_config(directory)
    check_peft_type(config, directory / CONFIG_NAME, known_types)
    if config.get("peft_type") not in known_types:
        return
    weights = directory / SAFETENSORS_NAME
    if not weights.is_file():
        if (directory / PICKLE_NAME).is_file():
            check_pickled_weights(directory / PICKLE_NAME)
            return
        others = [name for name in OTHER_PICKLE_NAMES if (directory / name).is_file()]
        found = f"; {others} are not adapter weights peft reads" if others else ""
        raise AdapterFileError(
            f"{weights} does not exist; expected the adapter weights saved by save_pretrained ({SAFETENSORS_NAME}, "
            f"or {PICKLE_NAME} with safe_serialization=False){found}"
        )
    try:
        with safe_open(str(weights), "pt") as handle:  # checks the header covers the file exactly
            handle.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"{weights} is truncated or corrupt ({error}); save the adapter again") from None


def check_pickled_weights(path: Path) -> None:
    """``adapter_model.bin`` holds only a dict of named tensors: it is read with torch's weights-only unpickler,
    which builds tensors and plain containers and refuses anything else, so reading it never runs code."""
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1]
        raise AdapterFileError(
            f"{path} holds objects other than tensors ({reason}); it was not unpickled, because that could run code. "
            f"Expected the tensors save_pretrained(safe_serialization=False) writes, or {SAFETENSORS_NAME}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise AdapterFileError(f"{path} is truncated or corrupt ({error}); save the adapter again") from None
    if not isinstance(tensors, dict) or not all(
        isinstance(key, str) and torch.is_tensor(value) for key, value in tensors.items()
    ):
        raise AdapterFileError(
            f"{path} holds a {type(tensors).__name__}, not a dict of named tensors; expected the weights "
            "save_pretrained(safe_serialization=False) writes"
        )


def weights_file(directory: Path) -> Path:
    """The adapter weights peft reads from ``directory``: safetensors when present, else the weights-only pickle."""
    pickled = directory / PICKLE_NAME
    if pickled.is_file() and not (directory / SAFETENSORS_NAME).is_file():
        return pickled
    return directory / SAFETENSORS_NAME


def check_loaded_adapter(name: str, peft_type: str, missing: Sequence[str], unexpected: Sequence[str],
                         parameters: Mapping[str, torch.Tensor], source: str) -> None:
    """After peft loaded the tensors: none missing, none unexpected, all finite."""
    if missing:
        raise AdapterFileError(
            f"{source} lacks tensor(s) {sorted(missing)[:5]} that a {peft_type} adapter has (adapter {name!r} would "
            "run untrained); expected the weights saved with this adapter_config.json (check its peft_type)"
        )
    if unexpected:
        raise AdapterFileError(
            f"{source} holds tensor(s) {sorted(unexpected)[:5]} that a {peft_type} adapter does not have; expected "
            "the weights saved with this adapter_config.json (check its peft_type)"
        )
    for key, tensor in parameters.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise AdapterFileError(
                f"{source}: tensor {key} of adapter {name!r} has {bad} non-finite value(s) (NaN or inf); expected "
                "finite weights (the run that saved it probably diverged)"
            )


def _resolve_adapter(model_id: str | os.PathLike, kwargs: Mapping[str, Any]) -> Path | None:
    """The local directory of an adapter, fetching its config and weights from the Hub when ``model_id`` is a repo.

    None when it cannot be resolved here (peft then reports the problem itself).
    """
    local = adapter_directory(model_id, kwargs.get("subfolder"))
    if local is not None:
        return local
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    options = {k: kwargs[k] for k in ("subfolder", "revision", "token", "cache_dir") if kwargs.get(k) is not None}
    try:
        config = Path(hf_hub_download(str(model_id), CONFIG_NAME, **options))
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return None
    if json.loads(config.read_text(encoding="utf-8")).get("peft_type") is None:
        return None
    for name in (SAFETENSORS_NAME, PICKLE_NAME):
        try:
            hf_hub_download(str(model_id), name, **options)
        except LocalEntryNotFoundError:  # offline and not cached: peft says so itself
            return None
        except EntryNotFoundError:  # the repo has no such file (a subclass of the HTTP error below)
            continue
        except (HfHubHTTPError, OSError):
            return None
        return config.parent
    raise AdapterFileError(
        f"{model_id} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}; expected the adapter weights saved by "
        "save_pretrained next to its adapter_config.json"
    )


def strict_load_adapter(original: Any, known_types: Callable[[], Sequence[str]]) -> Any:
    """Wrap ``PeftModel.load_adapter``: for prompt adapters, check the files before and the tensors after loading."""

    def load_adapter(self: Any, model_id: str, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        directory = _resolve_adapter(model_id, kwargs)
        if directory is not None:
            check_adapter_files(directory, known_types())
        result = original(self, model_id, adapter_name, *args, **kwargs)
        config = self.peft_config.get(adapter_name)
        if config is None or config.peft_type not in known_types():
            return result
        state = self.base_model.state
        parameters = {name: p for name, p in state.named_parameters() if adapter_name in name.split(".")}
        source = str(weights_file(directory)) if directory is not None else str(model_id)
        try:
            check_loaded_adapter(adapter_name, str(config.peft_type), list(result.missing_keys),
                                 list(result.unexpected_keys), parameters, source)
        except AdapterFileError:
            if len(self.peft_config) > 1:
                self.delete_adapter(adapter_name)  # leave the model as it was before the failed load
            raise
        return result

    return load_adapter


def strict_from_pretrained(original: Any, known_types: Callable[[], Sequence[str]]) -> Any:
    """Wrap ``PeftModel.from_pretrained`` so a damaged adapter_config.json or weights file is named before peft
    parses it."""

    def from_pretrained(cls: Any, model: nn.Module, model_id: str, *args: Any, **kwargs: Any) -> Any:
        directory = _resolve_adapter(model_id, kwargs)
        if directory is not None:
            check_adapter_files(directory, known_types())
        return original(cls, model, model_id, *args, **kwargs)

    return from_pretrained


def strict_config_from_pretrained(original: Any, known_types: Callable[[], Sequence[str]]) -> Any:
    """Wrap ``PeftConfig.from_pretrained`` so a local adapter_config.json whose ``peft_type`` is misspelt, or names
    another method for a prompt adapter, is named before peft looks the type up."""

    def from_pretrained(cls: Any, model_id: str, subfolder: str | None = None, **kwargs: Any) -> Any:
        directory = adapter_directory(model_id, subfolder)
        if directory is not None and (directory / CONFIG_NAME).is_file():
            check_peft_type(read_adapter_config(directory), directory / CONFIG_NAME, known_types())
        return original(cls, model_id, subfolder=subfolder, **kwargs)

    return from_pretrained
