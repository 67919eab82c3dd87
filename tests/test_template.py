"""Template language: parsing, compilation with real tokenizer families, rendering and truncation."""

from __future__ import annotations

import pytest

from prompt_adapters.template import (
    Layout,
    TemplateError,
    answer_token_id,
    compile_template,
    encode_fragment,
    parse_template,
    render,
)
from prompt_adapters.testing import build_tokenizer


def test_parse_lama_template() -> None:
    kinds = [(s.kind, s.text) for s in parse_template("[X] was born in [Y] .")]
    assert kinds == [("field", "X"), ("text", "was born in"), ("answer", ""), ("text", ".")]


def test_parse_soft_counts_fields_and_modes() -> None:
    segments = parse_template("[P*3] [premise] [hard: Question:] [hypothesis] ? [P] [Y] .", words="soft")
    assert [(s.kind, s.count, s.mode) for s in segments if s.kind in ("soft", "text")] == [
        ("soft", 3, "soft"),
        ("text", 0, "hard"),
        ("text", 0, "soft"),
        ("soft", 1, "soft"),
        ("text", 0, "soft"),
    ]
    assert [s.text for s in segments if s.kind == "field"] == ["premise", "hypothesis"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("[X] was born in .", "0 answer slots"),
        ("[Y] and [Y]", "2 answer slots"),
        ("[X] was [born in [Y]", "unbalanced"),
        ("[X] is [1abc] [Y]", "unknown slot"),
        ("[X] is [P*0] [Y]", "at least 1"),
        ("", "non-empty"),
    ],
)
def test_parse_errors_name_the_problem(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_template(template)


def test_glued_punctuation_is_kept_bert() -> None:
    tok = build_tokenizer("bert")
    compiled = compile_template("[X]'s capital is [Y].", tok)
    soft = [tok.convert_ids_to_tokens(list(p.ids)) for p in compiled.pieces if p.kind == "soft"]
    assert soft == [["'", "s", "capital", "is"], ["."]]
    assert compiled.num_soft == 5


@pytest.mark.parametrize("family", ["roberta", "gpt2", "bart"])
def test_byte_level_word_initial_forms(family: str) -> None:
    tok = build_tokenizer(family)
    compiled = compile_template("[X] was born in [Y].", tok)
    words = tok.convert_ids_to_tokens(list(compiled.pieces[1].ids))
    assert words == ["Ġwas", "Ġborn", "Ġin"]
    assert tok.convert_ids_to_tokens(list(compiled.pieces[3].ids)) == ["."]
    answer = answer_token_id(tok, compiled, "Paris")
    assert tok.convert_ids_to_tokens([answer]) == ["ĠParis"]


@pytest.mark.parametrize("family", ["llama", "t5", "albert"])
def test_sentencepiece_word_initial_forms(family: str) -> None:
    tok = build_tokenizer(family)
    compiled = compile_template("[X] was born in [Y] .", tok)
    assert tok.convert_ids_to_tokens(list(compiled.pieces[1].ids))[0].startswith("▁")
    subject = encode_fragment(tok, "Dante", compiled.pieces[0].space_before)
    assert subject == tok("Dante", add_special_tokens=False)["input_ids"]


def test_hard_words_keep_ids_and_soft_words_get_rows() -> None:
    tok = build_tokenizer("bert")
    hard = compile_template("[X] was born in [Y] .", tok, words="hard")
    assert hard.num_soft == 0
    mixed = compile_template("[X] [soft: was born] in [P*2] [Y] .", tok, words="hard")
    assert mixed.num_soft == 4
    assert mixed.soft_init_ids()[-2:] == [-1, -1]


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


def test_multi_token_answer_and_missing_field_errors() -> None:
    tok = build_tokenizer("bert")
    compiled = compile_template("[X] was born in [Y] .", tok)
    with pytest.raises(ValueError, match="2 tokens"):
        answer_token_id(tok, compiled, "Paris London")
    with pytest.raises(KeyError, match=r"\['X'\]"):
        render(compiled, {"subject": "Dante"}, tok, _masked_layout(tok))
