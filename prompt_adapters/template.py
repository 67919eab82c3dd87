"""Template language: parse prompt templates and compile them to token pieces with a tokenizer.

A template is text with bracketed slots::

    "[X] was born in [Y] ."                       # LAMA style: input field X, answer slot Y
    "[P*3] [X] [P*3] [Y] [P*3]"                   # P-tuning: 3 soft tokens, subject, 3, answer, 3
    "[premise] Question: [hypothesis] ? [P] Answer: [Y] ."   # named fields, anchors, one soft token
    "[X] [soft: is a native of] [Y] ."            # explicit soft words inside a hard template

Slots:
* ``[Y]``: the answer slot (exactly one).
* ``[P]`` / ``[P*n]``: one / n soft tokens with no initial word (initialised by the method).
* ``[SEP]``: the tokenizer's separator token, kept hard.
* ``[name]``: an input field filled from the example (``[X]`` is the LAMA subject field).
* ``[soft: words]`` / ``[hard: words]``: words whose mode overrides the template default.

Plain words are *soft* (a trainable vector per word piece, initialised from that piece's embedding: the Qin &
Eisner setting) or *hard* anchors (kept as real tokens: the P-tuning setting), chosen by ``words``.

Compilation tokenises every text piece once, in context: a piece preceded by white space in the template gets the
tokenizer's word-initial form (``Ġwas`` for byte-level BPE, ``▁was`` for SentencePiece) and a piece glued to a slot
(``[Y].`` or ``[X]'s``) gets the word-internal form, so punctuation glued to a slot is never lost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

WordMode = Literal["soft", "hard"]
ANSWER_SLOT = "Y"
_SLOT_RE = re.compile(r"\[([^\[\]]*)\]")
_SOFT_COUNT_RE = re.compile(r"^P(?:\*(\d+))?$")
_MODE_RE = re.compile(r"^(soft|hard):(.*)$", re.DOTALL)
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TemplateError(ValueError):
    """A template string that cannot be parsed or compiled."""


@dataclass(frozen=True)
class Segment:
    """One parsed piece of a template, before tokenisation."""

    kind: Literal["text", "soft", "field", "answer", "sep"]
    text: str = ""
    mode: WordMode = "soft"
    count: int = 0
    space_before: bool = False


def parse_template(template: str, words: WordMode = "soft") -> list[Segment]:
    """Split a template string into segments; raise TemplateError on malformed slots."""
    if not isinstance(template, str) or not template.strip():
        raise TemplateError(f"a template must be a non-empty string, got {template!r}")
    if words not in ("soft", "hard"):
        raise TemplateError(f"words must be 'soft' or 'hard', got {words!r}")
    stray = _SLOT_RE.sub("", template)
    if "[" in stray or "]" in stray:
        raise TemplateError(f"unbalanced bracket in template {template!r}")
    segments: list[Segment] = []
    cursor = 0
    for match in _SLOT_RE.finditer(template):
        _append_text(segments, template, cursor, match.start(), words)
        space = match.start() > 0 and template[match.start() - 1].isspace()
        segments.append(_parse_slot(match.group(1).strip(), template, words, space))
        cursor = match.end()
    _append_text(segments, template, cursor, len(template), words)
    answers = sum(segment.kind == "answer" for segment in segments)
    if answers != 1:
        raise TemplateError(
            f"template {template!r} has {answers} answer slots [Y]; exactly one is required"
        )
    return segments


def _append_text(segments: list[Segment], template: str, start: int, end: int, words: WordMode) -> None:
    chunk = template[start:end]
    if not chunk.strip():
        return
    leading = len(chunk) - len(chunk.lstrip())
    space = leading > 0 or (start > 0 and template[start - 1].isspace())
    segments.append(Segment("text", chunk.strip(), mode=words, space_before=space))


def _parse_slot(body: str, template: str, words: WordMode, space: bool) -> Segment:
    if body == ANSWER_SLOT:
        return Segment("answer", space_before=space)
    if body == "SEP":
        return Segment("sep", space_before=space)
    soft = _SOFT_COUNT_RE.match(body)
    if soft:
        count = int(soft.group(1) or 1)
        if count < 1:
            raise TemplateError(f"[{body}] in {template!r} asks for {count} soft tokens; use at least 1")
        return Segment("soft", count=count, space_before=space)
    mode = _MODE_RE.match(body)
    if mode:
        text = mode.group(2).strip()
        if not text:
            raise TemplateError(f"[{body}] in {template!r} has no words")
        return Segment("text", text, mode="soft" if mode.group(1) == "soft" else "hard", space_before=space)
    if _FIELD_RE.match(body):
        return Segment("field", body, space_before=space)
    raise TemplateError(
        f"unknown slot [{body}] in template {template!r}; expected [Y], [P], [P*n], [SEP], "
        "[soft: words], [hard: words] or a field name such as [X]"
    )


# ----------------------------------------------------------------------------------------------- tokenisation


@lru_cache(maxsize=64)
def _anchor_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """A special token that splits the text cleanly in front of a fragment (see encode_fragment)."""
    for name in ("unk_token", "eos_token", "pad_token", "sep_token", "bos_token", "cls_token"):
        token = getattr(tokenizer, name, None)
        if token:
            return str(token)
    raise TemplateError(f"tokenizer {type(tokenizer).__name__} has no special token to anchor fragments on")


@lru_cache(maxsize=64)
def _anchor_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return list(tokenizer(_anchor_token(tokenizer), add_special_tokens=False)["input_ids"])


def encode_fragment(tokenizer: PreTrainedTokenizerBase, text: str, space_before: bool) -> list[int]:
    """Token ids of ``text`` as it reads in the middle of a sentence.

    The text is tokenised behind a special token, which every HF tokenizer splits off before pre-tokenisation, so
    ``space_before`` yields the word-initial form (``Ġwas``/``▁was``) and no space yields the glued form (``'s``).
    """
    if not text:
        return []
    anchor = _anchor_token(tokenizer)
    anchored = tokenizer(anchor + (" " if space_before else "") + text, add_special_tokens=False)["input_ids"]
    anchor_ids = _anchor_ids(tokenizer)
    if anchored[: len(anchor_ids)] != anchor_ids:
        raise TemplateError(f"tokenizer merged the anchor token {anchor!r} into {text!r}")
    return list(anchored[len(anchor_ids) :])


@lru_cache(maxsize=64)
def special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids the tokenizer adds before and after a single sequence (e.g. [CLS] / [SEP], <s> / </s>)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start]), tuple(full[start + len(plain) :])
    raise TemplateError(f"cannot locate the special tokens {type(tokenizer).__name__} adds around a sequence")


@lru_cache(maxsize=64)
def adds_prefix_space(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer gives the first word of a text its word-initial form (SentencePiece ``▁``)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    return plain == encode_fragment(tokenizer, "hello", True) != encode_fragment(tokenizer, "hello", False)


# ----------------------------------------------------------------------------------------------- compiled form


@dataclass(frozen=True)
class Piece:
    """A compiled template piece.

    kind: ``hard`` (fixed ids), ``soft`` (trainable rows; ``ids`` are the initial word pieces, -1 for none),
    ``field`` (input text named ``name``), ``answer`` or ``sep``.
    """

    kind: Literal["hard", "soft", "field", "answer", "sep"]
    ids: tuple[int, ...] = ()
    name: str = ""
    space_before: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The piece as saved in ``adapter_config.json``."""
        return {"kind": self.kind, "ids": list(self.ids), "name": self.name, "space_before": self.space_before}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Piece:
        """A piece read back from ``adapter_config.json``."""
        return cls(data["kind"], tuple(data.get("ids", ())), data.get("name", ""), data.get("space_before", False))


@dataclass(frozen=True)
class CompiledTemplate:
    """A template tokenised once: its pieces and the number of soft rows it owns."""

    source: str
    pieces: tuple[Piece, ...]
    fields: tuple[str, ...] = field(default=())

    @property
    def num_soft(self) -> int:
        """How many soft rows the template owns."""
        return sum(len(piece.ids) for piece in self.pieces if piece.kind == "soft")

    def soft_after_answer(self) -> int:
        """How many soft rows come after the answer slot (a causal LM never reads them)."""
        answer = next(index for index, piece in enumerate(self.pieces) if piece.kind == "answer")
        return sum(len(piece.ids) for piece in self.pieces[answer + 1 :] if piece.kind == "soft")

    def soft_init_ids(self) -> list[int]:
        """Initial word-piece id of every soft row in order (-1: no word, the method initialises it)."""
        return [i for piece in self.pieces if piece.kind == "soft" for i in piece.ids]

    def to_dict(self) -> dict[str, Any]:
        """The compiled template as saved in ``adapter_config.json``."""
        return {"source": self.source, "pieces": [piece.to_dict() for piece in self.pieces]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompiledTemplate:
        """A compiled template read back from ``adapter_config.json``."""
        pieces = tuple(Piece.from_dict(p) for p in data["pieces"])
        return cls(data["source"], pieces, tuple(p.name for p in pieces if p.kind == "field"))


def compile_template(
    template: str, tokenizer: PreTrainedTokenizerBase, words: WordMode = "soft"
) -> CompiledTemplate:
    """Parse ``template`` and tokenise its text pieces with ``tokenizer`` (one soft row per word piece)."""
    pieces: list[Piece] = []
    for index, segment in enumerate(parse_template(template, words)):
        space = segment.space_before if index > 0 else adds_prefix_space(tokenizer)
        if segment.kind == "text":
            ids = encode_fragment(tokenizer, segment.text, space)
            if not ids:
                raise TemplateError(f"words {segment.text!r} of template {template!r} tokenise to nothing")
            pieces.append(Piece("soft" if segment.mode == "soft" else "hard", tuple(ids), space_before=space))
        elif segment.kind == "soft":
            pieces.append(Piece("soft", tuple([-1] * segment.count), space_before=space))
        elif segment.kind == "sep":
            if tokenizer.sep_token_id is None:
                raise TemplateError(f"template {template!r} uses [SEP] but the tokenizer has no sep_token")
            pieces.append(Piece("hard", (int(tokenizer.sep_token_id),)))
        elif segment.kind == "field":
            pieces.append(Piece("field", name=segment.text, space_before=space))
        else:
            # answers take their word-initial form unless glued to text (LAMA's "Ġ" + object convention)
            pieces.append(Piece("answer", space_before=segment.space_before or index == 0))
    fields = tuple(p.name for p in pieces if p.kind == "field")
    if len(set(fields)) != len(fields):
        raise TemplateError(f"template {template!r} uses a field twice: {fields}")
    return CompiledTemplate(template, tuple(pieces), fields)


def compile_templates(
    templates: Sequence[str], tokenizer: PreTrainedTokenizerBase, words: WordMode = "soft"
) -> list[CompiledTemplate]:
    """Compile several templates; they must all read the same input fields."""
    compiled = [compile_template(t, tokenizer, words) for t in templates]
    if not compiled:
        raise TemplateError("at least one template is required")
    first = set(compiled[0].fields)
    for template in compiled[1:]:
        if set(template.fields) != first:
            raise TemplateError(
                f"template {template.source!r} reads fields {sorted(template.fields)} but "
                f"{compiled[0].source!r} reads {sorted(first)}; all templates of one adapter must read the same"
            )
    return compiled


def answer_token_id(tokenizer: PreTrainedTokenizerBase, template: CompiledTemplate, answer: str) -> int:
    """The single token id of ``answer`` as it reads at the template's answer slot; error if it is several."""
    piece = next(p for p in template.pieces if p.kind == "answer")
    ids = encode_fragment(tokenizer, answer, piece.space_before)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"answer {answer!r} is {len(ids)} tokens {pieces} for this tokenizer where one token is required "
            f"(template {template.source!r}); filter such facts or use a multi-token scorer"
        )
    return ids[0]
