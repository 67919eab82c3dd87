"""Checks at the door: config field types, collator inputs, the tokenizer and base model an adapter was made for,
and strict adapter loading (a known method; intact safetensors, or tensors-only pickles read as peft reads them;
complete, finite tensors of the right method).

Every check raises at the first bad value with a message naming the value and what was expected, so a mistake
surfaces where it is made rather than as a traceback deep inside torch or as a silently wrong score.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import os
import pickle
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prompt_adapters.model_facts import detect_lm_kind, tokenizer_fingerprint

SAFETENSORS_NAME = "adapter_model.safetensors"
#: what ``save_pretrained(safe_serialization=False)`` writes; read, as peft reads it, with the weights-only unpickler
PICKLE_NAME = "adapter_model.bin"
OTHER_PICKLE_NAMES = ("adapter_model.pt", "pytorch_model.bin")
CONFIG_NAME = "adapter_config.json"
#: config fields only a prompt adapter has
PROMPT_ADAPTER_FIELDS = frozenset({"compiled_templates", "model_fingerprint", "tokenizer_fingerprint"})


# ------------------------------------------------------------------------------------------------ config types


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint is bool:
        return "a bool (True or False)"
    if hint is int:
        return "an int"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is list:
        args = typing.get_args(hint)
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or hint is dict:
        return "a dict"
    return str(hint)


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def check_field_types(config: Any, base: type) -> None:
    """Type-check the dataclass fields that ``base`` and its subclasses declare (peft's own fields are left alone).

    bool fields take only True/False (``bool("no")`` is True), int fields refuse bools and strings, float fields
    take ints; list fields check every item.
    """
    own: set[str] = set()
    for cls in type(config).__mro__:
        if isinstance(cls, type) and issubclass(cls, base):
            own.update(inspect.get_annotations(cls))
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        if item.name not in own or item.name not in hints:
            continue
        value = getattr(config, item.name)
        if not _matches(value, hints[item.name]):
            raise TypeError(
                f"{type(config).__name__}.{item.name} must be {_describe(hints[item.name])}, "
                f"got {value!r} ({type(value).__name__})"
            )


def check_positive(config: Any, *names: str) -> None:
    """Each named field is None or an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be >= 1 (or None), got {value!r}")


# ------------------------------------------------------------------------------------------------ tokenizer


def check_tokenizer(saved: Mapping[str, Any] | None, tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """Refuse ``tokenizer`` when it is not the one the templates were compiled with (``saved`` fingerprint)."""
    if not saved:
        return
    current = tokenizer_fingerprint(tokenizer)
    if saved.get("hash") != current["hash"]:
        raise ValueError(
            f"{where}: the adapter's templates were compiled with another tokenizer ({saved.get('class')} of "
            f"{saved.get('size')} tokens, hash {saved.get('hash')}) than {getattr(tokenizer, 'name_or_path', '')!r} "
            f"({current['class']} of {current['size']} tokens, hash {current['hash']}); its token ids would be read "
            "as other words. Expected the tokenizer of the base model the adapter was made for"
        )


def _local_tokenizer(model: nn.Module) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved next to a base model loaded from a local directory (None when there is none)."""
    from transformers import AutoTokenizer

    source = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    if not source or not os.path.isdir(source):
        return None
    if not any(os.path.exists(os.path.join(source, name)) for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(source)


# ------------------------------------------------------------------------------------------------ adapter vs model


def check_adapter_fits(name: str, config: Any, model: nn.Module) -> None:
    """The checks an adapter config must pass against the base model it is attached to.

    ``lm_kind`` must agree with the model's own kind; compiled template ids must exist in its vocabulary; an adapter
    saved with a ``model_type`` loads only into that type; and where the base model was loaded from a local
    directory holding a tokenizer, that tokenizer must be the one the templates were compiled with.
    """
    try:
        detected_lm_kind: str | None = detect_lm_kind(model)
    except ValueError:  # a model class outside transformers' auto mappings: trust the config
        detected_lm_kind = None
    if config.lm_kind is not None and detected_lm_kind is not None and config.lm_kind != detected_lm_kind:
        raise ValueError(
            f"adapter {name!r} has lm_kind={config.lm_kind!r}, but {type(model).__name__} is a {detected_lm_kind} "
            f"LM; expected lm_kind={detected_lm_kind!r} (or None to detect it)"
        )
    vocab = int(model.get_input_embeddings().weight.shape[0])
    saved = config.model_fingerprint or {}
    if saved and saved.get("vocab_size") != vocab:
        return  # the tuner's shape check reports this mismatch with both sizes
    for template in config.compiled_templates or []:
        ids = [i for piece in template["pieces"] if piece["kind"] in ("hard", "soft") for i in piece["ids"]]
        outside = sorted({i for i in ids if i >= vocab})
        if outside:
            raise ValueError(
                f"template {template['source']!r} of adapter {name!r} was compiled to token ids {outside[:5]} beyond "
                f"this model's vocabulary of {vocab}; expected templates compiled with this model's tokenizer"
            )
    current = getattr(getattr(model, "config", None), "model_type", None)
    if saved.get("model_type") and current and saved["model_type"] != current:
        raise ValueError(
            f"adapter {name!r} was made for a {saved['model_type']!r} model, but this model is {current!r}; load it "
            f"on a {saved['model_type']!r} base model"
        )
    if config.model_fingerprint is not None and getattr(config, "tokenizer_fingerprint", None):
        local = _local_tokenizer(model)
        if local is not None:
            check_tokenizer(config.tokenizer_fingerprint, local, f"adapter {name!r} on {model.name_or_path}")


def check_embedding_digest(name: str, saved: str | None, current: str | None) -> None:
    """Warn when an adapter is loaded onto another checkpoint than the one it was saved with: same architecture and
    shapes, other weights (``model_facts.embedding_digest`` of both differs).

    A warning, not an error: moving an adapter to a fine-tune of its base model is legitimate. Adapters saved without
    a digest, and digests taken in another precision class (float16 against the others), are not compared.
    """
    if not saved or not current or saved == current:
        return
    if saved.split(":")[0] != current.split(":")[0]:
        return
    warnings.warn(
        f"adapter {name!r} was saved with a base model whose input-embedding digest is {saved}, but this base model's "
        f"is {current}: it is another checkpoint of the same architecture and shape, with other weights. The soft "
        "prompts were trained for the other weights and may score differently here; expected the checkpoint the "
        "adapter was trained on (moving it to a fine-tune of that checkpoint on purpose is fine)",
        UserWarning,
        stacklevel=2,
    )


def warn_rows_after_answer(name: str, templates: Sequence[Any]) -> None:
    """Warn, naming the count, about soft rows after ``[Y]`` in an adapter trained on a causal LM.

    A causal LM reads only the tokens before ``[Y]``, so such rows are never in its input: they get no gradient,
    keep their initial values and change no score. A warning, not an error: the adapter works as one without them,
    and a template written for masked LMs (``[X] was born in [Y] .``) is reused on causal ones.
    """
    counts = {template.source: template.soft_after_answer() for template in templates}
    unreachable = {source: count for source, count in counts.items() if count}
    if not unreachable:
        return
    listed = "; ".join(f"{source!r}: {count}" for source, count in unreachable.items())
    warnings.warn(
        f"adapter {name!r} has {sum(unreachable.values())} soft row(s) after [Y] ({listed}), which a causal LM never "
        "reads: they get no gradient and stay as initialised. Expected soft tokens before [Y] on a causal LM; remove "
        "the ones after it (words after [Y] can be kept hard with [hard: ...] or words='hard')",
        UserWarning,
        stacklevel=2,
    )


def model_max_positions(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest row the model can take: its position table (less an offset for padding-based position ids, as
    RoBERTa counts from ``padding_idx + 1``) and the tokenizer's ``model_max_length``; None when unbounded."""
    limits = []
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            offset = 0
            for module in model.modules():
                padding = getattr(module, "padding_idx", None)
                if isinstance(padding, int) and isinstance(getattr(module, "position_embeddings", None), nn.Embedding):
                    offset = padding + 1
                    break
            limits.append(value - offset)
            break
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < 1_000_000:
        limits.append(length)
    return min(limits) if limits else None


# ------------------------------------------------------------------------------------------------ collator inputs


def check_text(value: Any, what: str) -> str:
    """A field or answer value must be a non-empty, non-blank string (None and NaN are refused)."""
    if not isinstance(value, str):
        hint = " (a missing value read as NaN)" if isinstance(value, float) and math.isnan(value) else ""
        raise TypeError(f"{what} must be a non-empty string, got {value!r} ({type(value).__name__}){hint}")
    if not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def control_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Special ids that text must not produce: every special id but the unknown token's (unknown text is judged
    apart), unless that id also marks structure (GPT-2's ``<|endoftext|>`` is unk, bos and eos; a pad token set to
    unk, as often for Llama, does not count)."""
    unk = tokenizer.unk_token_id
    roles = {getattr(tokenizer, f"{role}_token_id", None) for role in ("bos", "eos", "sep", "cls", "mask")}
    special = frozenset(tokenizer.all_special_ids)
    return special if unk in roles else special - {unk}


def check_no_special_tokens(ids: Sequence[int], value: str, what: str, tokenizer: PreTrainedTokenizerBase,
                            allow: frozenset[int] = frozenset()) -> None:
    """Refuse text that the tokenizer reads as a special token (e.g. a subject containing "[MASK]")."""
    special = control_token_ids(tokenizer) - allow
    found = [i for i in ids if i in special]
    if found:
        tokens = tokenizer.convert_ids_to_tokens(found)
        raise ValueError(
            f"{what} {value!r} contains the special token(s) {tokens}, which the model would read as control tokens; "
            "expected plain text (remove or rewrite them)"
        )


def check_known_tokens(ids: Sequence[int], value: str, what: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse text that tokenises to the unknown token (it cannot be predicted or matched)."""
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids:
        pieces = tokenizer.convert_ids_to_tokens(list(ids))
        raise ValueError(
            f"{what} {value!r} tokenises to {pieces}, with the unknown token {tokenizer.unk_token!r}; expected text "
            "this tokenizer knows (filter such examples)"
        )


def check_candidates(candidate_ids: torch.Tensor, vocab_size: int, tokenizer: PreTrainedTokenizerBase) -> None:
    """Candidate ids: a non-empty 1-D set of distinct ids inside the vocabulary."""
    if candidate_ids.dim() != 1 or candidate_ids.numel() == 0:
        raise ValueError(f"candidate_ids must be a non-empty 1-D list of token ids, got shape "
                         f"{tuple(candidate_ids.shape)}")
    values = candidate_ids.tolist()
    outside = sorted({i for i in values if not 0 <= i < vocab_size})
    if outside:
        raise ValueError(f"candidate_ids {outside[:5]} are outside the vocabulary [0, {vocab_size}); expected token "
                         "ids of this model")
    seen: set[int] = set()
    duplicates = sorted({i for i in values if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if duplicates:
        raise ValueError(
            f"candidate_ids repeat {duplicates[:5]} ({tokenizer.convert_ids_to_tokens(duplicates[:5])}); a repeated "
            "candidate would count an answer twice. Expected distinct ids"
        )


def check_template_words(templates: Sequence[Any], tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse templates whose words tokenise to the unknown token (they would read as ``[UNK]``)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for template in templates:
        ids = [i for piece in template.pieces if piece.kind in ("hard", "soft") for i in piece.ids]
        if unk in ids:
            words = [w for w in template.source.split() if not w.startswith("[")
                     and unk in tokenizer(w, add_special_tokens=False)["input_ids"]]
            raise ValueError(
                f"template {template.source!r} has word(s) {words or '?'} this tokenizer reads as "
                f"{tokenizer.unk_token!r}; expected words in its vocabulary"
            )


# ------------------------------------------------------------------------------------------------ adapter files


class AdapterFileError(ValueError):
    """An adapter directory that cannot be loaded safely."""


def adapter_directory(model_id: str | os.PathLike, subfolder: str | None = None) -> Path | None:
    """The local directory of an adapter (None for a Hub id that is not a local directory)."""
    path = Path(model_id) / subfolder if subfolder else Path(model_id)
    return path if path.is_dir() else None


def read_adapter_config(directory: Path) -> dict[str, Any]:
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


def strict_load_adapter(original: Any, known_types: Sequence[str]) -> Any:
    """Wrap ``PeftModel.load_adapter``: for prompt adapters, check the files before and the tensors after loading."""

    def load_adapter(self: Any, model_id: str, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        directory = _resolve_adapter(model_id, kwargs)
        if directory is not None:
            check_adapter_files(directory, known_types)
        result = original(self, model_id, adapter_name, *args, **kwargs)
        config = self.peft_config.get(adapter_name)
        if config is None or config.peft_type not in known_types:
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


def strict_from_pretrained(original: Any, known_types: Sequence[str]) -> Any:
    """Wrap ``PeftModel.from_pretrained`` so a damaged adapter_config.json or weights file is named before peft
    parses it."""

    def from_pretrained(cls: Any, model: nn.Module, model_id: str, *args: Any, **kwargs: Any) -> Any:
        directory = _resolve_adapter(model_id, kwargs)
        if directory is not None:
            check_adapter_files(directory, known_types)
        return original(cls, model, model_id, *args, **kwargs)

    return from_pretrained


def strict_config_from_pretrained(original: Any, known_types: Sequence[str]) -> Any:
    """Wrap ``PeftConfig.from_pretrained`` so a local adapter_config.json whose ``peft_type`` is misspelt, or names
    another method for a prompt adapter, is named before peft looks the type up."""

    def from_pretrained(cls: Any, model_id: str, subfolder: str | None = None, **kwargs: Any) -> Any:
        directory = adapter_directory(model_id, subfolder)
        if directory is not None and (directory / CONFIG_NAME).is_file():
            check_peft_type(read_adapter_config(directory), directory / CONFIG_NAME, known_types)
        return original(cls, model_id, subfolder=subfolder, **kwargs)

    return from_pretrained


#: reasons screen_facts drops a fact for, in the order they are checked
FACT_DROP_REASONS = ("blank_subject", "special_token_in_subject", "special_token_in_object", "unknown_object")


def screen_facts(facts: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase,
                 ) -> tuple[list[Mapping[str, Any]], dict[str, int]]:
    """Drop the facts a collator would refuse, counting each under the first reason it fails.

    ``blank_subject``: the subject is not text or is blank (None, NaN, ""); ``special_token_in_*``: the text holds
    a special token (e.g. "[MASK]"); ``unknown_object``: the object tokenises to the unknown token.
    """
    unk = tokenizer.unk_token_id
    special = control_token_ids(tokenizer)
    counts = dict.fromkeys(FACT_DROP_REASONS, 0)
    kept = []
    for fact in facts:
        subject, obj = fact.get("sub"), fact.get("obj")
        reason = None
        if not isinstance(subject, str) or not subject.strip():
            reason = "blank_subject"
        elif special & set(tokenizer(subject, add_special_tokens=False)["input_ids"]):
            reason = "special_token_in_subject"
        elif isinstance(obj, str):
            ids = tokenizer(obj, add_special_tokens=False)["input_ids"]
            if unk is not None and unk in ids:
                reason = "unknown_object"
            elif special & set(ids):
                reason = "special_token_in_object"
        if reason is None:
            kept.append(fact)
        else:
            counts[reason] += 1
    return kept, counts
