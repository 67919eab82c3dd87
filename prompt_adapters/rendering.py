"""Rendering: a compiled template filled with an example's fields and laid out as one input row of a masked,
causal or seq2seq LM.

``template`` defines the template language and compiles it with a tokenizer, the same for every model; this module
is where the kinds of LM differ: ``make_layout`` reads the special ids a model and tokenizer need, ``render`` places
the prompt's pseudo ids, the fields and the answer slot in the row that kind of LM reads (masks for a masked LM, the
text before the answer for a causal LM, an encoder row and a decoder row for a seq2seq LM).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedTokenizerBase

from prompt_adapters.model_facts import LMKind
from prompt_adapters.scoring import IGNORE
from prompt_adapters.template import CompiledTemplate, TemplateError, encode_fragment, special_affixes


@dataclass(frozen=True)
class Layout:
    """How rows are laid out for one model: its kind and the special ids rendering needs."""

    lm_kind: LMKind
    vocab_size: int
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    slot_id: int | None
    decoder_start_id: int | None = None
    seq2seq_copies_input: bool = False


def make_layout(tokenizer: PreTrainedTokenizerBase, model: nn.Module, lm_kind: LMKind) -> Layout:
    """The special ids rendering needs for this tokenizer and model."""
    vocab_size = int(model.get_input_embeddings().weight.shape[0])
    prefix, suffix = special_affixes(tokenizer)
    if lm_kind == "causal":
        return Layout("causal", vocab_size, prefix, (), None)
    if lm_kind == "masked":
        if tokenizer.mask_token_id is None:
            raise ValueError(f"masked LM scoring needs a mask token, but {type(tokenizer).__name__} has none")
        return Layout("masked", vocab_size, prefix, suffix, int(tokenizer.mask_token_id))
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        raise ValueError(f"{type(model).__name__} has no decoder_start_token_id in its config")
    if tokenizer.mask_token_id is not None:
        return Layout("seq2seq", vocab_size, prefix, suffix, int(tokenizer.mask_token_id), int(start), True)
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    if sentinel is None or sentinel == tokenizer.unk_token_id:
        raise ValueError("seq2seq scoring needs a mask token (BART) or the sentinel <extra_id_0> (T5)")
    return Layout("seq2seq", vocab_size, prefix, suffix, int(sentinel), int(start), False)


@dataclass
class RenderedInput:
    """One example under one template, laid out as one input row of a batch (before padding): ids with pseudo ids
    at the prompt positions, and where the answer is read.

    ``score_positions`` index ``decoder_input_ids`` for seq2seq models and ``input_ids`` otherwise; the logits at a
    score position give the distribution of the token at ``score_targets`` (for causal LMs the position before it).
    """

    input_ids: list[int]
    score_positions: list[int]
    score_targets: list[int]
    decoder_input_ids: list[int] | None = None
    truncated: int = 0


def render(
    template: CompiledTemplate,
    values: Mapping[str, str],
    tokenizer: PreTrainedTokenizerBase,
    layout: Layout,
    soft_offset: int = 0,
    answer_ids: Sequence[int] = (IGNORE,),
    max_length: int | None = None,
    score_fields: bool = False,
    encode: Callable[[str, bool], list[int]] | None = None,
) -> RenderedInput:
    """Fill ``template`` with field ``values`` and lay it out for ``layout``.

    Soft rows become pseudo ids ``vocab_size + soft_offset + j``. The answer slot holds ``len(answer_ids)`` tokens
    (IGNORE where unknown): one mask per token for masked LMs, teacher-forced answer tokens for causal and seq2seq
    decoders. Fields are truncated (longest first, from the end) to fit ``max_length``; prompt tokens and the answer
    slot are never cut. With ``score_fields`` the row scores the input field tokens instead of the answer (the query
    likelihood q_t(x) of the data-dependent mixture). ``encode(text, space_before)`` tokenises field values (the
    collator passes a per-batch cache so a field read by K templates is tokenised once).
    """
    missing = [name for name in template.fields if name not in values]
    if missing:
        raise KeyError(
            f"example has no value for field(s) {missing} of template {template.source!r}; "
            f"it has {sorted(values)}"
        )
    answer = list(answer_ids)
    width = len(answer)
    if width < 1:
        raise ValueError("the answer slot needs at least one token")
    if width > 1 and layout.lm_kind != "masked" and answer[0] == IGNORE:
        raise ValueError(f"a {layout.lm_kind} LM scores a multi-token answer by teacher forcing: give its tokens")
    encode = encode or (lambda text, space: encode_fragment(tokenizer, text, space))
    field_ids = {
        piece.name: list(encode(str(values[piece.name]), piece.space_before))
        for piece in template.pieces
        if piece.kind == "field"
    }
    fixed = sum(len(p.ids) for p in template.pieces if p.kind in ("hard", "soft")) + width
    truncated = _truncate(field_ids, fixed + len(layout.prefix) + len(layout.suffix), max_length, template)

    body: list[int] = []
    answer_at = -1
    field_at: list[tuple[int, int]] = []
    soft_row = layout.vocab_size + soft_offset
    slots = width if layout.lm_kind == "masked" else 1
    for piece in template.pieces:
        if piece.kind == "soft":
            body.extend(range(soft_row, soft_row + len(piece.ids)))
            soft_row += len(piece.ids)
        elif piece.kind == "field":
            ids = field_ids[piece.name]
            field_at.extend((len(layout.prefix) + len(body) + k, token) for k, token in enumerate(ids))
            body.extend(ids)
        elif piece.kind == "answer":
            answer_at = len(layout.prefix) + len(body)
            body.extend([layout.slot_id if layout.slot_id is not None else answer[0]] * slots)
        else:
            body.extend(piece.ids)
    sequence = [*layout.prefix, *body, *layout.suffix]
    span = list(range(width))
    forced = [token if token != IGNORE else answer[0] for token in answer[:-1]]  # padding: input is irrelevant

    if layout.lm_kind == "causal":
        if answer_at == 0:
            raise TemplateError(f"template {template.source!r} starts with [Y]; a causal LM needs a token before it")
        if score_fields:
            kept = [(p, t) for p, t in field_at if p > 0]
            positions, targets = [p - 1 for p, _ in kept], [t for _, t in kept]
            return RenderedInput(sequence[:answer_at], positions, targets, truncated=truncated)
        positions = [answer_at - 1 + j for j in span]
        return RenderedInput([*sequence[:answer_at], *forced], positions, answer, truncated=truncated)

    if score_fields:
        if layout.lm_kind != "masked":
            raise ValueError("scoring the input fields (data-dependent mixture weights) needs a masked or causal LM")
        for position, _ in field_at:
            sequence[position] = _needed(layout.slot_id, "slot_id", layout)
        return RenderedInput(sequence, [p for p, _ in field_at], [t for _, t in field_at], truncated=truncated)

    if layout.lm_kind == "masked":
        return RenderedInput(sequence, [answer_at + j for j in span], answer, truncated=truncated)
    start = _needed(layout.decoder_start_id, "decoder_start_id", layout)
    if layout.seq2seq_copies_input:
        decoder = [start, *sequence[:answer_at], *forced]
        return RenderedInput(sequence, [answer_at + j for j in span], answer, decoder, truncated)
    decoder = [start, _needed(layout.slot_id, "slot_id", layout), *forced]
    return RenderedInput(sequence, [1 + j for j in span], answer, decoder, truncated)


def _needed(value: int | None, what: str, layout: Layout) -> int:
    """``value``, a special id that a ``layout.lm_kind`` layout needs (``make_layout`` sets it)."""
    if value is None:
        raise ValueError(f"a {layout.lm_kind} layout needs {what}, got None; build layouts with make_layout")
    return int(value)


def _truncate(
    field_ids: dict[str, list[int]], fixed: int, max_length: int | None, template: CompiledTemplate
) -> int:
    """Cut tokens from the end of the longest field until the row fits; return how many were cut."""
    if max_length is None:
        return 0
    if fixed > max_length:
        raise ValueError(
            f"template {template.source!r} needs {fixed} tokens without its fields, more than max_length={max_length}"
        )
    cut = 0
    while fixed + sum(len(ids) for ids in field_ids.values()) > max_length:
        longest = max(field_ids, key=lambda name: len(field_ids[name]))
        field_ids[longest].pop()
        cut += 1
    return cut
