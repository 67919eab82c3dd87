"""LAMA loaders: behaviour on the excerpts in tests/fixtures/data/lama, and the published counts on the full data
(PROMPT_ADAPTERS_DATA; skipped without it)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prompt_adapters.data.lama import (
    DROP_REASONS,
    available_relations,
    candidate_ids,
    filter_facts,
    load_candidates,
    load_facts,
    load_prompts,
    load_relations,
    single_token_id,
    valid_objects,
)


@pytest.fixture(scope="module")
def lama_dir(full_data: Path) -> Path:
    return full_data / "lama"


@pytest.fixture(scope="module")
def excerpt(fixture_data: Path) -> Path:
    return fixture_data / "lama"


@pytest.fixture(scope="module")
def trex_relations(lama_dir: Path) -> list[str]:
    return available_relations(lama_dir, "autoprompt", "test")


def word_level_tokenizer(words: list[str], byte_level: bool = False) -> PreTrainedTokenizerFast:
    """A tiny whitespace (or byte-level, GPT-2-like) word-level tokenizer over ``words``."""
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


# ---------------------------------------------------------------------------------------------- relations, facts


def test_relations_and_types(lama_dir: Path, trex_relations: list[str]) -> None:
    relations = load_relations(lama_dir)
    assert len(relations) == 46
    p19 = relations["P19"]
    assert (p19.template, p19.label, p19.type) == ("[X] was born in [Y] .", "place of birth", "N-1")
    assert len(trex_relations) == 41
    assert set(relations) - set(trex_relations) == {"P102", "P166", "P1923", "P54", "P69"}
    types = Counter(relations[r].type for r in trex_relations)
    assert types == {"1-1": 2, "N-1": 23, "N-M": 16}
    assert {r for r in trex_relations if relations[r].type == "1-1"} == {"P36", "P1376"}


def test_autoprompt_split_sizes(lama_dir: Path) -> None:
    assert len(load_facts(lama_dir, "P19", "test")) == 944
    assert len(load_facts(lama_dir, "P19", "train")) == 800
    assert len(load_facts(lama_dir, "P19", "dev")) == 200
    test = load_facts(lama_dir, None, "test")
    assert len(test) == 34_039
    assert test.column_names == ["sub", "obj", "relation"]
    assert len(set(test["relation"])) == 41
    assert len(load_facts(lama_dir, None, "train")) == 29_029
    assert len(load_facts(lama_dir, None, "dev")) == 7_255


@pytest.mark.parametrize(
    ("corpus", "split", "relation", "expected"),
    [
        ("qin_eisner_extend", "test", "P19", 200),
        ("qin_eisner_distinct", "train", "P36", 562),
        ("lpaqa_train", "train", "P101", 893),
        ("pararel", "test", "P19", 779),
        ("google_re", "test", "place_of_birth", 2_937),
        ("google_re_qin_eisner", "test", None, 556),
        ("conceptnet_qin_eisner", "train", None, 23_816),
        ("squad", "test", None, 305),
    ],
)
def test_other_corpora(lama_dir: Path, corpus: str, split: str, relation: str | None, expected: int) -> None:
    assert len(load_facts(lama_dir, relation, split, corpus=corpus)) == expected


def test_fixture_relations_and_corpora(excerpt: Path) -> None:
    relations = load_relations(excerpt)
    assert list(relations) == ["P19", "P20", "P101", "P102", "P1376", "P36"]  # file order
    p19 = relations["P19"]
    assert (p19.template, p19.label, p19.type) == ("[X] was born in [Y] .", "place of birth", "N-1")
    assert relations["P1376"].type == "1-1"
    assert available_relations(excerpt, "autoprompt", "test") == ["P19", "P20", "P1376"]  # natural order
    assert available_relations(excerpt, "autoprompt_full", "test") == ["P19"]
    assert len(load_facts(excerpt, "P19", "train")) == 24
    assert len(load_facts(excerpt, "place_of_birth", "dev", corpus="google_re_qin_eisner")) == 4
    assert len(load_facts(excerpt, "IsA", "test", corpus="conceptnet_qin_eisner")) == 4


def test_google_re_and_squad_columns(excerpt: Path) -> None:
    assert available_relations(excerpt, "google_re") == ["place_of_birth"]
    google = load_facts(excerpt, "place_of_birth", "test", corpus="google_re")
    # The LAMA-format labels win over the Freebase ids in sub/obj.
    assert google[0]["sub"] == "Khatchig Mouradian" and google[0]["obj"] == "Lebanon"
    assert "masked_sentences" in google.column_names
    squad = load_facts(excerpt, corpus="squad")
    assert set(squad["relation"]) == {"squad"}
    assert squad[0]["obj"] == "gold" and "[MASK]" in squad[0]["masked_sentences"][0]


def test_both_record_formats_agree(excerpt: Path) -> None:
    """The fixture's LAMA-format file holds the first facts of P19's test split, in the same order."""
    subobj = load_facts(excerpt, "P19", "test", corpus="autoprompt")
    full = load_facts(excerpt, "P19", "test", corpus="autoprompt_full")
    pairs = list(zip(subobj["sub"], subobj["obj"], strict=True))
    assert len(full) == 3 and pairs[:3] == list(zip(full["sub"], full["obj"], strict=True))
    one_file = load_facts(excerpt / "trex/autoprompt_original_full/P19/test.jsonl")
    assert set(one_file["relation"]) == {"P19"}  # taken from predicate_id
    assert one_file["obj"] == full["obj"]


def test_several_relations_and_full_counts(lama_dir: Path) -> None:
    both = load_facts(lama_dir, ["P36", "P1376"], "test")
    assert Counter(both["relation"]) == {"P36": 703, "P1376": 234}
    assert available_relations(lama_dir, "google_re") == ["date_of_birth", "place_of_birth", "place_of_death"]


def test_several_relations_and_errors(excerpt: Path) -> None:
    lama_dir = excerpt
    both = load_facts(lama_dir, ["P1376", "P19"], "test")
    assert both["relation"] == ["P1376"] * 24 + ["P19"] * 24  # concatenated in the given order
    with pytest.raises(FileNotFoundError, match="P102"):
        load_facts(lama_dir, "P102", "test")
    with pytest.raises(ValueError, match="unknown LAMA corpus 'trex_nope'"):
        load_facts(lama_dir, "P19", corpus="trex_nope")
    with pytest.raises(ValueError, match="has no split 'dev'"):
        load_facts(lama_dir, "P19", "dev", corpus="pararel")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_facts(lama_dir / "missing", "P19")


def test_single_file_without_relation_needs_one(tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_text('{"sub": "a", "obj": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="pass relation="):
        load_facts(path)
    assert load_facts(path, "P1")[0] == {"sub": "a", "obj": "b", "relation": "P1"}
    path.write_text('{"subject": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"facts\.jsonl:1"):
        load_facts(path, "P1")


# ---------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    ("kind", "total", "n_relations"),
    [
        ("lpaqa_mined", 1_166, 41),
        ("lpaqa_paraphrase", 1_073, 41),
        ("lpaqa_manual_paraphrase", 1_018, 41),
        ("lpaqa_top1", 41, 41),
        ("autoprompt_bert", 41, 41),
        ("autoprompt_roberta", 41, 41),
        ("manual", 41, 41),
        ("qin_eisner", 41, 41),
    ],
)
def test_trex_prompt_counts(lama_dir: Path, trex_relations: list[str], kind: str, total: int, n_relations: int) -> None:
    lists = {rel: load_prompts(lama_dir, kind, rel) for rel in trex_relations}
    assert sum(map(len, lists.values())) == total
    assert sum(bool(v) for v in lists.values()) == n_relations


def test_pararel_and_other_prompt_sets(lama_dir: Path, trex_relations: list[str]) -> None:
    pararel = {}
    for rel in trex_relations:
        if rel in ("P31", "P527"):
            with pytest.raises(ValueError, match="no 'pararel' prompts for relation"):
                load_prompts(lama_dir, "pararel", rel)
        else:
            pararel[rel] = load_prompts(lama_dir, "pararel", rel)
    assert len(pararel) == 39 and sum(map(len, pararel.values())) == 329
    assert pararel["P19"][0] == "[X] was born in [Y]."
    assert load_prompts(lama_dir, "manual", "date_of_birth") == ["[X] (born [Y])."]
    assert len(load_prompts(lama_dir, "qin_eisner", "IsA")) > 1
    # Google-RE mined prompts fall back to the LPAQA lists kept by Qin & Eisner.
    assert load_prompts(lama_dir, "lpaqa_mined", "place_of_birth") == load_prompts(lama_dir, "lpaqa_mined", "P19")


def test_every_prompt_file_format_reads(excerpt: Path) -> None:
    """One relation per prompt source: JSON lines with "template" or "pattern", keyed files, plain text, fallbacks."""
    assert load_prompts(excerpt, "manual", "P19") == ["[X] was born in [Y] ."]
    assert load_prompts(excerpt, "manual", "date_of_birth") == ["[X] (born [Y])."]
    assert load_prompts(excerpt, "lpaqa_mined", "P19")[:2] == ["[X] was born in [Y] .", "[Y] native [X] ."]
    assert len(load_prompts(excerpt, "lpaqa_paraphrase", "P19")) == 4
    assert load_prompts(excerpt, "lpaqa_top1", "P1376") and load_prompts(excerpt, "autoprompt_bert", "P20")
    assert load_prompts(excerpt, "pararel", "P19")[:2] == ["[X] was born in [Y].", "[X] is originally from [Y]."]
    assert load_prompts(excerpt, "qin_eisner", "IsA")[0] == "A [X] is a [Y]."
    # Google-RE mined prompts fall back to the LPAQA lists kept by Qin & Eisner.
    assert load_prompts(excerpt, "lpaqa_mined", "place_of_birth") == load_prompts(excerpt, "lpaqa_mined", "P19")
    with pytest.raises(ValueError, match="no 'autoprompt_bert' prompts for relation 'P36'"):
        load_prompts(excerpt, "autoprompt_bert", "P36")


def test_prompts_keep_spacing(excerpt: Path) -> None:
    roberta = load_prompts(excerpt, "autoprompt_roberta", "P1001")
    assert roberta == [" [X]\u00a2List unsu rivers spanning [Y] ."]
    paraphrases = load_prompts(excerpt, "lpaqa_manual_paraphrase", "P19")
    assert paraphrases[:2] == ["[X] was born in [Y] .", "[X] was born in [Y]."]


def test_bad_template_names_file_line_and_template(tmp_path: Path) -> None:
    folder = tmp_path / "prompts" / "lpaqa_manual_paraphrase"
    folder.mkdir(parents=True)
    (folder / "P19.txt").write_text("[X] was born in [Y] .\n[X] was born in .\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"P19\.txt:2: template '\[X\] was born in \.'") as err:
        load_prompts(tmp_path, "lpaqa_manual_paraphrase", "P19")
    assert "found 1 and 0" in str(err.value)
    mined = tmp_path / "prompts" / "lpaqa_mined"
    mined.mkdir(parents=True)
    (mined / "P19.jsonl").write_text(json.dumps({"template": "[X] [X] [Y]"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"P19\.jsonl:1: template '\[X\] \[X\] \[Y\]'"):
        load_prompts(tmp_path, "lpaqa_mined", "P19")
    with pytest.raises(ValueError, match="unknown prompt kind 'mined'"):
        load_prompts(tmp_path, "mined", "P19")


# ---------------------------------------------------------------------------------------------- candidates


def test_candidate_files(excerpt: Path) -> None:
    common = load_candidates(excerpt, "common_vocab_cased")
    assert common[:3] == ["#", "%", "&"] and "Paris" in common
    assert load_candidates(excerpt, "common_vocab_cased_be_ro_al") == ["#", "$", "&", "*", "+"]  # spaces stripped
    lists = {m: load_candidates(excerpt, "29k", m) for m in ("bert-base-cased", "roberta-large", "gpt2-xl")}
    assert len({frozenset(v) for v in lists.values()}) == 1  # same words, BPE marker removed
    assert all(not w.startswith("Ġ") for w in lists["roberta-large"])
    assert load_candidates(excerpt, "29k") == lists["bert-base-cased"]
    assert load_candidates(excerpt, "full") is None
    with pytest.raises(FileNotFoundError, match=r"34k-vocab\.json, which does not exist") as err:
        load_candidates(excerpt, "34k", "bert-base-cased")
    assert "never published outside its packed data archive" in str(err.value)
    with pytest.raises(ValueError, match="no list for model 'gpt2'"):
        load_candidates(excerpt, "29k", "gpt2")
    with pytest.raises(ValueError, match="unknown candidate set '21k'"):
        load_candidates(excerpt, "21k")


def test_candidate_sets(lama_dir: Path) -> None:
    common = load_candidates(lama_dir, "common_vocab_cased")
    assert len(common) == 21_018 and common[:3] == ["#", "%", "&"]
    # 17,229 newlines: the file has no final newline, so it holds 17,230 words (README counts newlines).
    be_ro_al = load_candidates(lama_dir, "common_vocab_cased_be_ro_al")
    assert len(be_ro_al) == 17_230 and be_ro_al[0] == "#"
    lists = {m: load_candidates(lama_dir, "29k", m) for m in ("bert-base-cased", "roberta-large", "gpt2-xl")}
    assert {len(v) for v in lists.values()} == {18_154}
    assert len({frozenset(v) for v in lists.values()}) == 1  # same words, BPE marker removed
    assert load_candidates(lama_dir, "29k") == lists["bert-base-cased"]
    assert load_candidates(lama_dir, "full") is None
    with pytest.raises(FileNotFoundError, match=r"34k-vocab\.json"):
        load_candidates(lama_dir, "34k", "bert-base-cased")
    with pytest.raises(ValueError, match="no list for model 'gpt2'"):
        load_candidates(lama_dir, "29k", "gpt2")
    with pytest.raises(ValueError, match="unknown candidate set '21k'"):
        load_candidates(lama_dir, "21k")


def test_lama_29k_and_34k_fact_counts(lama_dir: Path) -> None:
    test = load_facts(lama_dir, None, "test")
    lama29k = filter_facts(test, candidates=load_candidates(lama_dir, "29k", "bert-base-cased"), dedupe=False)
    assert len(lama29k.kept) == 29_521
    assert lama29k.dropped == {"not_in_candidates": 34_039 - 29_521, "not_single_token": 0, "duplicate": 0}
    per_rel = Counter(lama29k.kept.to_dict()["relation"])
    assert (per_rel["P19"], per_rel["P264"], per_rel["P1376"]) == (780, 53, 180)
    common = filter_facts(test, candidates=load_candidates(lama_dir, "common_vocab_cased"))
    assert common.dropped == {"not_in_candidates": 0, "not_single_token": 0, "duplicate": 22}


# ---------------------------------------------------------------------------------------------- tokenizer filters


def test_single_token_id_wordpiece_style() -> None:
    tok = word_level_tokenizer(["Paris", "New", "York"])
    assert single_token_id(tok, "Paris") == tok.convert_tokens_to_ids("Paris")
    assert single_token_id(tok, "New York") is None
    assert single_token_id(tok, "Rome") is None  # UNK
    assert single_token_id(tok, "") is None


def test_single_token_id_uses_leading_space_form_for_byte_level() -> None:
    tok = word_level_tokenizer(["Paris", "ĠParis", "ĠRome", "London"], byte_level=True)
    assert tok.tokenize("Paris") != tok.tokenize(" Paris")
    assert single_token_id(tok, "Paris") == tok.convert_tokens_to_ids("ĠParis")
    assert single_token_id(tok, "Rome") == tok.convert_tokens_to_ids("ĠRome")
    assert single_token_id(tok, "London") is None  # only the word-internal form exists
    assert candidate_ids(tok, ["Rome", "London", "Paris", "Rome"]) == {
        "Rome": tok.convert_tokens_to_ids("ĠRome"),
        "Paris": tok.convert_tokens_to_ids("ĠParis"),
    }


def test_filter_facts_counts_each_reason() -> None:
    facts = Dataset.from_dict(
        {
            "sub": ["A", "B", "A", "C", "D", "E", "A"],
            "obj": ["Paris", "Paris", "Paris", "Atlantis", "Rome", "New York", "Paris"],
            "relation": ["P19", "P19", "P19", "P19", "P19", "P19", "P20"],
        }
    )
    tok = word_level_tokenizer(["Paris", "London", "New", "York"])
    result = filter_facts(facts, tok, candidates=["Paris", "Rome", "New York", "London"])
    assert result.dropped == {"not_in_candidates": 1, "not_single_token": 2, "duplicate": 1}
    assert set(result.dropped) == set(DROP_REASONS)
    assert result.n_dropped == 4
    kept = list(zip(result.kept["relation"], result.kept["sub"], strict=True))
    assert kept == [("P19", "A"), ("P19", "B"), ("P20", "A")]
    assert result.kept["obj_id"] == [tok.convert_tokens_to_ids("Paris")] * 3
    assert filter_facts(result.kept, tok).dropped == dict.fromkeys(DROP_REASONS, 0)  # idempotent
    no_dedupe = filter_facts(facts, tok, dedupe=False)
    assert no_dedupe.dropped == {"not_in_candidates": 0, "not_single_token": 3, "duplicate": 0}
    assert len(no_dedupe.kept) == 4


def test_filter_real_relation_with_tiny_tokenizer(lama_dir: Path) -> None:
    facts = load_facts(lama_dir, "P1376", "test")
    top = [obj for obj, _ in Counter(facts["obj"]).most_common(3)]
    tok = word_level_tokenizer(top)
    result = filter_facts(facts, tok, candidates=load_candidates(lama_dir, "common_vocab_cased"))
    expected_kept = len({(s, o) for s, o in zip(facts["sub"], facts["obj"], strict=True) if o in top})
    assert len(result.kept) == expected_kept
    assert result.dropped["not_single_token"] == sum(o not in top for o in facts["obj"])
    assert len(result.kept) + result.n_dropped == 234


def test_valid_objects_pools_splits() -> None:
    train = Dataset.from_dict({"sub": ["X", "X"], "obj": ["a", "b"], "relation": ["P1", "P1"]})
    test = Dataset.from_dict({"sub": ["X", "X"], "obj": ["c", "a"], "relation": ["P1", "P2"]})
    valid = valid_objects([train, test])
    assert valid == {("P1", "X"): frozenset("abc"), ("P2", "X"): frozenset("a")}
    assert valid_objects(test)[("P1", "X")] == frozenset("c")
