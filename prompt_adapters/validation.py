"""Input checks at the door: config field types, collator inputs (field and answer text, candidate ids, template
words) and the tokenizer an adapter's templates were compiled with.

Every check raises at the first bad value with a message naming the value and what was expected, so a mistake
surfaces where it is made rather than as a traceback deep inside torch or as a silently wrong score. Adapter files
are checked apart, in ``prompt_adapters.adapter_files``; an adapter against its base model in
``prompt_adapters.tuner.fit``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from prompt_adapters.model_facts import tokenizer_fingerprint

# ------------------------------------------------------------------------------------------------ config types


def _describe(hint: Any) -> str:
    """How an error names the type ``hint`` asks for."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " or ".join(sorted({_describe(type(arg)) for arg in typing.get_args(hint)}))
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
    """Whether ``value`` has the type ``hint`` asks for. A ``Literal`` choice checks the type of its choices only: the
    config's own check names the choices when the value is not one of them."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return any(_matches(value, type(arg)) for arg in typing.get_args(hint))
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
    duplicates = sorted(i for i, count in Counter(values).items() if count > 1)
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
