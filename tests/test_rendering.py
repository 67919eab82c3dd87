"""Rendering a compiled template as one input row per LM kind: pseudo ids, answer slot, truncation, fields."""

from __future__ import annotations

import pytest

from prompt_adapters.rendering import Layout, render
from prompt_adapters.template import TemplateError, compile_template
from prompt_adapters.testing import build_tokenizer


def _masked_layout(tok) -> Layout:  # type: ignore[no-untyped-def]
    return Layout("masked", len(tok), (tok.cls_token_id,), (tok.sep_token_id,), tok.mask_token_id)


def test_render_masked_places_pseudo_ids_and_mask() -> None:
    tok = build_tokenizer("bert")
    compiled = compile_template("[X] was born in [Y] .", tok)
    layout = _masked_layout(tok)
    row = render(compiled, {"X": "Dante"}, tok, layout, soft_offset=2, answer_ids=[7])
    vocab = len(tok)
    assert row.input_ids[0] == tok.cls_token_id and row.input_ids[-1] == tok.sep_token_id
    assert row.input_ids[row.score_positions[0]] == tok.mask_token_id
    assert [i - vocab for i in row.input_ids if i >= vocab] == [2, 3, 4, 5]
    assert row.score_targets == [7]


def test_truncation_cuts_only_fields_and_counts() -> None:
    tok = build_tokenizer("bert")
    compiled = compile_template("[P*3] [X] [P*3] [Y] [P*3]", tok)
    layout = _masked_layout(tok)
    long_subject = " ".join(["Dante"] * 40)
    row = render(compiled, {"X": long_subject}, tok, layout, max_length=16)
    assert len(row.input_ids) == 16
    assert sum(i >= len(tok) for i in row.input_ids) == 9
    assert tok.mask_token_id in row.input_ids
    assert row.truncated == 40 - 4
    with pytest.raises(ValueError, match="more than max_length"):
        render(compiled, {"X": "Dante"}, tok, layout, max_length=8)


def test_causal_render_scores_from_previous_position() -> None:
    tok = build_tokenizer("gpt2")
    compiled = compile_template("[X] was born in [Y] . [P*2]", tok, words="hard")
    layout = Layout("causal", len(tok), (), (), None)
    row = render(compiled, {"X": "Dante"}, tok, layout, answer_ids=[5])
    assert row.score_positions == [len(row.input_ids) - 1]
    assert tok.convert_ids_to_tokens([row.input_ids[-1]]) == ["Ġin"]
    with pytest.raises(TemplateError, match="starts with"):
        render(compile_template("[Y] is where [X] lives", tok), {"X": "Dante"}, tok, layout)


def test_a_missing_field_is_named() -> None:
    tok = build_tokenizer("bert")
    compiled = compile_template("[X] was born in [Y] .", tok)
    with pytest.raises(KeyError, match=r"\['X'\]"):
        render(compiled, {"subject": "Dante"}, tok, _masked_layout(tok))
