"""Template language: parsing and compilation with real tokenizer families (rendering: test_rendering.py)."""

from __future__ import annotations

import pytest

from prompt_adapters.template import TemplateError, answer_token_id, compile_template, encode_fragment, parse_template
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


def test_multi_token_answer_is_refused_where_one_token_is_required() -> None:
    tok = build_tokenizer("bert")
    compiled = compile_template("[X] was born in [Y] .", tok)
    with pytest.raises(ValueError, match="2 tokens"):
        answer_token_id(tok, compiled, "Paris London")
