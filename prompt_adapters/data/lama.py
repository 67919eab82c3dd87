"""LAMA knowledge-probing data: relations, facts, prompt lists and candidate vocabularies.

Everything is read from a local data directory (``relations.jsonl``, ``trex/``, ``prompts/``, ``vocab/``, ...; the
layout is in ``docs/lama-data-and-metrics.md``), which ``download_lama`` fills from the public sources. Which file a
corpus, prompt kind or candidate set comes from is declared once in the tables ``CORPORA``, ``PROMPT_SOURCES`` and
``CANDIDATE_SETS`` below, so adding a variant means adding a row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from prompt_adapters.data.download import DownloadFailed, Expected, default_cache_dir, fetch
from prompt_adapters.validation import control_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PathLike = str | os.PathLike
RELATION_TYPES = ("1-1", "N-1", "N-M")
DROP_REASONS = ("not_in_candidates", "not_single_token", "duplicate")
SUBJECT_SLOT = "[X]"
OBJECT_SLOT = "[Y]"
BPE_SPACE = "Ġ"


# --------------------------------------------------------------------------------------------------------------
# Relations
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """One row of LAMA's ``relations.jsonl``: the manual template and the 1-1 / N-1 / N-M type."""

    id: str
    template: str
    label: str
    type: str
    description: str


def _require_dir(data_dir: PathLike) -> Path:
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"LAMA data directory {str(path)!r} does not exist; pass the folder that holds relations.jsonl, "
            "trex/, prompts/ and vocab/ (docs/lama-data-and-metrics.md shows the layout), or fetch it with "
            "download_lama() / benchmarks/lama.py --download"
        )
    return path


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSON-lines file into (1-based line number, record) pairs, skipping blank lines."""
    records = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append((line_no, record))
    return records


def load_relations(data_dir: PathLike) -> dict[str, Relation]:
    """Read ``relations.jsonl`` into ``{relation id: Relation}``, in file order.

    The file lists 46 relations; 41 form the T-REx probe (P102, P166, P1923, P54 and P69 have no facts).
    """
    path = _require_dir(data_dir) / "relations.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected LAMA's relations.jsonl in the data directory")
    relations: dict[str, Relation] = {}
    for line_no, r in read_jsonl(path):
        missing = [k for k in ("relation", "template", "label", "type") if k not in r]
        if missing:
            raise ValueError(f"{path}:{line_no}: relation record lacks {missing}")
        if r["type"] not in RELATION_TYPES:
            raise ValueError(f"{path}:{line_no}: relation type {r['type']!r} is not one of {RELATION_TYPES}")
        relations[r["relation"]] = Relation(
            id=r["relation"],
            template=r["template"],
            label=r["label"],
            type=r["type"],
            description=r.get("description", ""),
        )
    return relations


# --------------------------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Where one fact corpus lives: for each split, path patterns tried in order (first existing file wins).

    Patterns are relative to the data directory and may use ``{relation}``. ``extra_columns`` are source fields
    kept unchanged next to ``sub``/``obj``/``relation`` (e.g. SQuAD's masked sentences, which are its only prompt).
    """

    splits: Mapping[str, tuple[str, ...]]
    description: str
    extra_columns: tuple[str, ...] = ()


def _splits(*patterns: str, splits: Sequence[str] = ("train", "dev", "test")) -> dict[str, tuple[str, ...]]:
    return {s: tuple(p.replace("{split}", s) for p in patterns) for s in splits}


CORPORA: dict[str, Corpus] = {
    "autoprompt": Corpus(
        _splits(
            "trex/autoprompt_original_subobj/{relation}/{split}.jsonl",
            "trex/autoprompt_original_full/{relation}/{split}.jsonl",
        ),
        "T-REx, AutoPrompt 'original': test = LAMA-34k (34,039 facts), train/dev = AutoPrompt's extra T-REx facts "
        "(<= 800/200 per relation). Used by LAMA, AutoPrompt, OptiPrompt, P-tuning, Qin & Eisner 'T-REx original'.",
    ),
    "autoprompt_full": Corpus(
        _splits("trex/autoprompt_original_full/{relation}/{split}.jsonl"),
        "The same facts in the LAMA record format (uris, evidences); download_lama() fetches LAMA's test files and "
        "AutoPrompt's train/dev in this format.",
    ),
    "qin_eisner_extend": Corpus(
        _splits("trex/qin_eisner_extend/{relation}/{split}.jsonl"),
        "Qin & Eisner 'T-REx extended': AutoPrompt train+dev re-split about 60/20/20 per relation.",
    ),
    "qin_eisner_distinct": Corpus(
        _splits("trex/qin_eisner_distinct/{relation}/{split}.jsonl"),
        "Undocumented soft-prompts split: LAMA-34k re-split so that no test object occurs in train.",
    ),
    "lpaqa_train": Corpus(
        _splits("trex/lpaqa_train/{relation}.jsonl", splits=("train",)),
        "LPAQA 'TREx_train' pool (<= 1,000 facts per relation), a different pool from AutoPrompt's.",
    ),
    "pararel": Corpus(
        _splits("trex/pararel_lms_vocab/{relation}.jsonl", splits=("test",)),
        "ParaRel: the LAMA-34k test facts whose object is one token for BERT, RoBERTa and ALBERT (29,411).",
        extra_columns=("uuid",),
    ),
    "google_re": Corpus(
        _splits("google_re/lama_original/{relation}_test.jsonl", splits=("test",)),
        "LAMA Google-RE (date_of_birth, place_of_birth, place_of_death), original files with masked sentences.",
        extra_columns=("uuid", "masked_sentences"),
    ),
    "google_re_qin_eisner": Corpus(
        _splits("google_re/qin_eisner_splits/{relation}/{split}.jsonl"),
        "Qin & Eisner train/dev/test split of the 5,528 LAMA Google-RE facts.",
    ),
    "conceptnet_qin_eisner": Corpus(
        _splits("conceptnet/qin_eisner_splits/{relation}/{split}.jsonl"),
        "Qin & Eisner train/dev/test split of LAMA ConceptNet (16 relations, 29,774 facts).",
    ),
    "squad": Corpus(
        _splits("squad/lama_original/test.jsonl", splits=("test",)),
        "LAMA SQuAD probe: 305 cloze questions; the masked sentence is the prompt (relation column 'squad').",
        extra_columns=("id", "masked_sentences"),
    ),
}


def _corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise ValueError(f"unknown LAMA corpus {name!r}; expected one of {sorted(CORPORA)}")
    return CORPORA[name]


def _patterns(corpus: str, split: str) -> tuple[str, ...]:
    spec = _corpus(corpus)
    if split not in spec.splits:
        raise ValueError(f"corpus {corpus!r} has no split {split!r}; it has {sorted(spec.splits)}")
    return spec.splits[split]


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort P17 < P19 < P101 (numbers compared as numbers)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def available_relations(data_dir: PathLike, corpus: str = "autoprompt", split: str = "test") -> list[str]:
    """Relations that have a file for ``split`` of ``corpus`` under ``data_dir``, naturally sorted."""
    root = _require_dir(data_dir)
    found: set[str] = set()
    for pattern in _patterns(corpus, split):
        if "{relation}" not in pattern:
            if (root / pattern).is_file():
                found.add(corpus)
            continue
        head, tail = pattern.split("{relation}", 1)
        regex = re.compile(re.escape(head) + r"(?P<relation>[^/]+?)" + re.escape(tail) + "$")
        for path in root.glob(pattern.replace("{relation}", "*")):
            match = regex.match(path.relative_to(root).as_posix())
            if match:
                found.add(match.group("relation"))
    return sorted(found, key=natural_key)


def _normalise(record: dict[str, Any], path: Path, line_no: int) -> tuple[str, str]:
    """Return (sub, obj): LAMA format (``sub_label``/``obj_label``) if present, else ``sub``/``obj``.

    The LAMA format wins because Google-RE records carry both, with Freebase ids in ``sub``/``obj``.
    """
    if "sub_label" in record and "obj_label" in record:
        sub, obj = record["sub_label"], record["obj_label"]
    elif "sub" in record and "obj" in record:
        sub, obj = record["sub"], record["obj"]
    else:
        raise ValueError(f"{path}:{line_no}: fact has fields {sorted(record)}; expected sub_label/obj_label or sub/obj")
    if not isinstance(sub, str) or not isinstance(obj, str):
        raise ValueError(f"{path}:{line_no}: subject and object must be strings, got {sub!r} and {obj!r}")
    return sub, obj


def _read_facts(path: Path, relation: str | None, extra_columns: Sequence[str], columns: dict[str, list[Any]]) -> None:
    """Append the facts of one file to ``columns`` (sub, obj, relation and the extra columns)."""
    for line_no, record in read_jsonl(path):
        sub, obj = _normalise(record, path, line_no)
        rel = relation if relation is not None else record.get("predicate_id")
        if rel is None:
            raise ValueError(f"{path}:{line_no}: no predicate_id in the record; pass relation= for this file")
        columns["sub"].append(sub)
        columns["obj"].append(obj)
        columns["relation"].append(rel)
        for c in extra_columns:
            if c not in record:
                raise ValueError(f"{path}:{line_no}: expected field {c!r} in every record of this corpus")
            columns[c].append(record[c])


def _empty_columns(extra_columns: Sequence[str]) -> dict[str, list[Any]]:
    return {"sub": [], "obj": [], "relation": [], **{c: [] for c in extra_columns}}


def _resolve(root: Path, corpus: str, relation: str, split: str) -> Path:
    tried = []
    for pattern in _patterns(corpus, split):
        path = root / pattern.format(relation=relation)
        if path.is_file():
            return path
        tried.append(str(path))
    raise FileNotFoundError(
        f"no {split!r} file for relation {relation!r} in corpus {corpus!r}; looked for {tried}. "
        f"Relations available there: {available_relations(root, corpus, split)}"
    )


def load_facts(
    path_or_dir: PathLike,
    relation: str | Sequence[str] | None = None,
    split: str = "test",
    corpus: str = "autoprompt",
) -> Dataset:
    """Load facts as a Dataset with columns ``sub``, ``obj``, ``relation`` (+ the corpus's extra columns).

    ``path_or_dir`` is either a data directory (then ``corpus`` and ``split`` pick the files from ``CORPORA``) or a
    single ``.jsonl`` file in either record format. ``relation`` may be one id, several (concatenated in the given
    order), or None for every relation the corpus has for ``split``. Facts are returned in file order, unfiltered.
    """
    path = Path(path_or_dir)
    if path.is_file():
        if relation is not None and not isinstance(relation, str):
            raise ValueError(f"a single file holds one relation; got relation={relation!r} for {path}")
        columns = _empty_columns(())
        _read_facts(path, relation, (), columns)
        return Dataset.from_dict(columns)
    root = _require_dir(path)
    spec = _corpus(corpus)
    if relation is None:
        relations = available_relations(root, corpus, split)
        if not relations:
            raise FileNotFoundError(f"corpus {corpus!r} has no {split!r} files under {root}")
    elif isinstance(relation, str):
        relations = [relation]
    else:
        relations = list(relation)
    columns = _empty_columns(spec.extra_columns)
    for rel in relations:
        file = _resolve(root, corpus, rel, split)
        # Corpora whose pattern has no {relation} (SQuAD) are one file: name the relation after the corpus.
        label = rel if any("{relation}" in p for p in _patterns(corpus, split)) else corpus
        _read_facts(file, label, spec.extra_columns, columns)
    return Dataset.from_dict(columns)


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFile:
    """One place a prompt list can come from.

    ``pattern`` is relative to the data directory (may use ``{relation}``); ``field`` names the template field of
    a JSON-lines record (None for a plain ``.txt`` file, one template per line); ``keyed`` means one file holds all
    relations and records are selected by their ``relation`` field.
    """

    pattern: str
    field: str | None = "template"
    keyed: bool = False


PROMPT_SOURCES: dict[str, tuple[PromptFile, ...]] = {
    "manual": (
        PromptFile("relations.jsonl", keyed=True),
        PromptFile("prompts/qin_eisner/google_re/{relation}.jsonl"),
    ),
    "lpaqa_mined": (
        PromptFile("prompts/lpaqa_mined/{relation}.jsonl"),
        PromptFile("prompts/qin_eisner/google_re_mine/{relation}.jsonl"),
    ),
    "lpaqa_paraphrase": (
        PromptFile("prompts/lpaqa_paraphrase/{relation}.jsonl"),
        PromptFile("prompts/qin_eisner/google_re_paraphrase/{relation}.jsonl"),
    ),
    "lpaqa_manual_paraphrase": (PromptFile("prompts/lpaqa_manual_paraphrase/{relation}.txt", field=None),),
    "lpaqa_top1": (PromptFile("prompts/lpaqa_top1/LPAQA_relations.jsonl", keyed=True),),
    "autoprompt_bert": (PromptFile("prompts/autoprompt/fact_retrieval_bert_prompts.jsonl", keyed=True),),
    "autoprompt_roberta": (PromptFile("prompts/autoprompt/fact_retrieval_roberta_prompts.jsonl", keyed=True),),
    "autoprompt_relation_extraction_bert": (
        PromptFile("prompts/autoprompt/relation_extraction_bert_prompts.jsonl", keyed=True),
    ),
    "autoprompt_relation_extraction_roberta": (
        PromptFile("prompts/autoprompt/relation_extraction_roberta_prompts.jsonl", keyed=True),
    ),
    "pararel": (PromptFile("prompts/pararel/{relation}.jsonl", field="pattern"),),
    "qin_eisner": (
        PromptFile("prompts/qin_eisner/trex/{relation}.jsonl"),
        PromptFile("prompts/qin_eisner/google_re/{relation}.jsonl"),
        PromptFile("prompts/qin_eisner/conceptnet/{relation}.jsonl"),
    ),
}


def validate_template(template: str, where: str) -> str:
    """Return ``template`` if it has exactly one [X] and one [Y]; otherwise raise a ValueError naming ``where``."""
    n_x, n_y = template.count(SUBJECT_SLOT), template.count(OBJECT_SLOT)
    if n_x != 1 or n_y != 1:
        raise ValueError(
            f"{where}: template {template!r} must contain exactly one {SUBJECT_SLOT} and one {OBJECT_SLOT} "
            f"(found {n_x} and {n_y})"
        )
    return template


def _read_prompt_file(path: Path, source: PromptFile, relation: str) -> list[str] | None:
    """Templates for ``relation`` in one file, or None if a keyed file has no row for it."""
    if source.field is None:
        templates = []
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    templates.append(validate_template(text, f"{path}:{line_no}"))
        return templates
    templates = []
    for line_no, record in read_jsonl(path):
        if source.keyed and record.get("relation") != relation:
            continue
        if source.field not in record:
            raise ValueError(f"{path}:{line_no}: prompt record has fields {sorted(record)}, not {source.field!r}")
        templates.append(validate_template(record[source.field], f"{path}:{line_no}"))
    if source.keyed and not templates:
        return None
    return templates


def load_prompts(data_dir: PathLike, kind: str, relation: str) -> list[str]:
    """Prompt templates of ``kind`` for ``relation``, exactly as written in the files (spacing untouched).

    Kinds are the keys of ``PROMPT_SOURCES``. Every template is checked to hold one [X] and one [Y]; a bad one
    raises a ValueError naming the file, line and template.
    """
    root = _require_dir(data_dir)
    if kind not in PROMPT_SOURCES:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {sorted(PROMPT_SOURCES)}")
    tried = []
    for source in PROMPT_SOURCES[kind]:
        path = root / source.pattern.format(relation=relation)
        tried.append(str(path))
        if not path.is_file():
            continue
        templates = _read_prompt_file(path, source, relation)
        if templates is not None:
            return templates
    raise ValueError(f"no {kind!r} prompts for relation {relation!r}; looked in {tried}")


# --------------------------------------------------------------------------------------------------------------
# Candidate sets
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateSet:
    """A candidate vocabulary: a text file (one word per line) or a JSON file with one list per model."""

    path: str | None
    description: str
    per_model: bool = False


CANDIDATE_SETS: dict[str, CandidateSet] = {
    "common_vocab_cased": CandidateSet(
        "vocab/common_vocab_cased.txt",
        "LAMA common vocabulary (21,018 words; intersection of the cased BERT, RoBERTa, GPT, ELMo and "
        "Transformer-XL vocabularies). Used by LAMA, AutoPrompt, OptiPrompt.",
    ),
    "common_vocab_cased_be_ro_al": CandidateSet(
        "vocab/common_vocab_cased_be_ro_al.txt",
        "OptiPrompt's BERT/RoBERTa/ALBERT intersection (17,230 words; the file's leading spaces are stripped "
        "as OptiPrompt's load_vocab does).",
    ),
    "29k": CandidateSet(
        "vocab/29k-vocab.json",
        "P-tuning 'shared' vocabulary (18,154 words; the LAMA-29k test set is LAMA-34k filtered by it).",
        per_model=True,
    ),
    "34k": CandidateSet(
        "vocab/34k-vocab.json",
        "P-tuning 'lama' vocabulary (LAMA-34k). Not downloadable on its own: read only if you add "
        "34k-vocab.json from P-tuning's packed data to vocab/.",
        per_model=True,
    ),
    "full": CandidateSet(None, "No restriction: rank over the model's whole vocabulary (soft-prompts default)."),
}


def load_candidates(data_dir: PathLike, name: str, model_name: str | None = None) -> list[str] | None:
    """Candidate object words for ``name`` (a key of ``CANDIDATE_SETS``); None for "full" (whole vocabulary).

    Words are returned without tokenizer markers: the ``Ġ`` prefix of the RoBERTa / GPT-2 lists in the JSON files
    is removed, because the leading-space form is produced per tokenizer by ``single_token_id``. For "29k" and
    "34k", ``model_name`` picks the file's list (default: the first); the four 29k lists hold the same words.
    """
    if name not in CANDIDATE_SETS:
        raise ValueError(f"unknown candidate set {name!r}; expected one of {sorted(CANDIDATE_SETS)}")
    spec = CANDIDATE_SETS[name]
    if spec.path is None:
        return None
    path = _require_dir(data_dir) / spec.path
    if not path.is_file():
        hint = (
            " P-tuning's 34k-vocab.json was never published outside its packed data archive, so download_lama() "
            "cannot fetch it; use 'common_vocab_cased' (which keeps all 34,039 LAMA-34k test facts) or 'full' instead"
            if name == "34k"
            else ""
        )
        raise FileNotFoundError(f"candidate set {name!r} needs {path}, which does not exist.{hint}")
    if not spec.per_model:
        with path.open(encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    with path.open(encoding="utf-8") as f:
        lists = json.load(f)
    if not isinstance(lists, dict) or not lists:
        raise ValueError(f"{path}: expected a JSON object mapping model names to token lists")
    key = model_name if model_name is not None else next(iter(lists))
    if key not in lists:
        raise ValueError(f"{path} has no list for model {key!r}; it has {sorted(lists)}")
    return [w[len(BPE_SPACE) :] if w.startswith(BPE_SPACE) else w for w in lists[key]]


# --------------------------------------------------------------------------------------------------------------
# Tokenizer-dependent filtering
# --------------------------------------------------------------------------------------------------------------


def single_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int | None:
    """The id of ``word`` as one token of ``tokenizer``, or None if it needs several pieces or maps to UNK.

    The word is looked up in its word-initial form, as it appears after a space in a template ("born in [Y]"):
    when ``tokenize(" " + word)`` differs from ``tokenize(word)`` (byte-level BPE: ``ĠParis`` vs ``Paris``),
    the leading-space form is used; WordPiece and SentencePiece tokenizers give the same pieces either way.
    """
    if not word or word != word.strip():
        return None
    pieces = tokenizer.tokenize(word)
    spaced = tokenizer.tokenize(" " + word)
    if spaced != pieces:
        pieces = spaced
    if len(pieces) != 1:
        return None
    token_id = tokenizer.convert_tokens_to_ids(pieces[0])
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id)


def candidate_ids(tokenizer: PreTrainedTokenizerBase, candidates: Iterable[str]) -> dict[str, int]:
    """Map candidate words to token ids, dropping words that are not a single non-UNK token.

    The result keeps the candidates' order; column ``j`` of a score matrix restricted to ``list(result.values())``
    is word ``list(result)[j]``. Two words that map to the same id keep only the first.
    """
    mapping: dict[str, int] = {}
    seen: set[int] = set()
    for word in candidates:
        token_id = single_token_id(tokenizer, word)
        if token_id is not None and token_id not in seen and word not in mapping:
            mapping[word] = token_id
            seen.add(token_id)
    return mapping


@dataclass
class FilterResult:
    """Facts kept by ``filter_facts`` and how many were dropped for each reason in ``DROP_REASONS``."""

    kept: Dataset
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        """How many facts were dropped, for every reason together."""
        return sum(self.dropped.values())


def filter_facts(
    facts: Dataset,
    tokenizer: PreTrainedTokenizerBase | None = None,
    candidates: Iterable[str] | None = None,
    dedupe: bool = True,
) -> FilterResult:
    """Apply the LAMA / OptiPrompt fact filters and count what each one removed.

    Checks run in this order, each fact counted under the first reason that drops it:

    1. ``not_in_candidates``: the object is not in ``candidates`` (skipped when None, i.e. full vocabulary);
    2. ``not_single_token``: the object is not one token of ``tokenizer`` (skipped when None); kept facts get an
       ``obj_id`` column with that token id;
    3. ``duplicate``: the (relation, sub, obj) triple already occurred among the kept facts (when ``dedupe``).
    """
    allowed = set(candidates) if candidates is not None else None
    dropped = dict.fromkeys(DROP_REASONS, 0)
    seen: set[tuple[str, str, str]] = set()
    keep: list[int] = []
    obj_ids: list[int] = []
    id_cache: dict[str, int | None] = {}
    columns = facts.select_columns(["sub", "obj", "relation"]).to_dict()
    for i, (sub, obj, rel) in enumerate(zip(columns["sub"], columns["obj"], columns["relation"], strict=True)):
        if allowed is not None and obj not in allowed:
            dropped["not_in_candidates"] += 1
            continue
        if tokenizer is not None:
            if obj not in id_cache:
                id_cache[obj] = single_token_id(tokenizer, obj)
            if id_cache[obj] is None:
                dropped["not_single_token"] += 1
                continue
        if dedupe:
            key = (rel, sub, obj)
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
        keep.append(i)
        if tokenizer is not None:
            obj_ids.append(id_cache[obj])
    kept = facts.select(keep)
    if tokenizer is not None:
        if "obj_id" in kept.column_names:  # re-filtering an already filtered Dataset
            kept = kept.remove_columns("obj_id")
        kept = kept.add_column("obj_id", obj_ids)
    return FilterResult(kept=kept, dropped=dropped)


def valid_objects(facts: Dataset | Iterable[Dataset]) -> dict[tuple[str, str], frozenset[str]]:
    """For each (relation, sub), every object seen in ``facts`` (one Dataset or several splits).

    This is the set LAMA §4.4 removes from the ranking ("other valid objects") for N-M relations; pass the
    splits you consider known, e.g. train, dev and test of one corpus.
    """
    parts = [facts] if isinstance(facts, Dataset) else list(facts)
    objects: dict[tuple[str, str], set[str]] = {}
    for part in parts:
        columns = part.select_columns(["relation", "sub", "obj"]).to_dict()
        for rel, sub, obj in zip(columns["relation"], columns["sub"], columns["obj"], strict=True):
            objects.setdefault((rel, sub), set()).add(obj)
    return {key: frozenset(objs) for key, objs in objects.items()}


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


# --------------------------------------------------------------------------------------------------------------
# Download (online users only)
# --------------------------------------------------------------------------------------------------------------


LAMA_DATA_URL = "https://dl.fbaipublicfiles.com/LAMA/data.zip"
OPTIPROMPT_DATA_URL = "https://nlp.cs.princeton.edu/projects/optiprompt/data.tar.gz"
AUTOPROMPT_DATA_URL = "https://drive.google.com/drive/folders/1vVhgnSXmbuJb6GLPn_FErY1xDTh1xyv-"
_RAW = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class Download:
    """One remote file, what it must be, and where its content goes.

    For an archive, ``members`` maps a regular expression over member paths (matched at a path boundary, so any
    top-level folder is accepted) to a target pattern using the expression's named groups. For a plain file,
    ``members`` is ``{"": target}``. ``expected`` holds the size and SHA-256 where they are known: the plain files
    come from commit-pinned GitHub addresses, so their content is fixed; the two archives' publishers give no
    checksum, so only their length (``Content-Length``) and each member's CRC are checked.
    """

    url: str
    members: Mapping[str, str]
    expected: Expected = field(default_factory=Expected)


def _pinned(repo_at_commit: str, source: str, target: str, size: int, sha256: str) -> Download:
    return Download(f"{_RAW}/{repo_at_commit}/{source}", {"": target}, Expected(size, sha256))


_OPTIPROMPT = "princeton-nlp/OptiPrompt/9450bc96f28ac3df01337c79be079a2ac3defb5c"
_AUTOPROMPT = "ucinlp/autoprompt/d637675999adf057a581c3d1084d64f3a247fda5"
_FACTLM = "salesforce/FactLM/e631878829cb3ba938fa0ea209ecdb711a07fb2a"

DOWNLOADS: tuple[Download, ...] = (
    Download(
        LAMA_DATA_URL,
        {
            r"relations\.jsonl": "relations.jsonl",
            r"TREx/(?P<relation>P\d+)\.jsonl": "trex/autoprompt_original_full/{relation}/test.jsonl",
            r"Google_RE/(?P<name>\w+)_test\.jsonl": "google_re/lama_original/{name}_test.jsonl",
            r"Squad/test\.jsonl": "squad/lama_original/test.jsonl",
        },
    ),
    Download(
        OPTIPROMPT_DATA_URL,
        {
            r"autoprompt_data/(?P<relation>P\d+)/(?P<split>train|dev)\.jsonl": (
                "trex/autoprompt_original_full/{relation}/{split}.jsonl"
            ),
        },
    ),
    _pinned(_OPTIPROMPT, "common_vocabs/common_vocab_cased.txt", "vocab/common_vocab_cased.txt", 161894,
            "81e6879ca2f794256a5a97f79def6b230dd314bf127f13aeb8f8f42d6f4a21df"),
    _pinned(_OPTIPROMPT, "common_vocabs/common_vocab_cased_be_ro_al.txt", "vocab/common_vocab_cased_be_ro_al.txt",
            166817, "44380080ff08ca64de6efe566ef82d497ff81416bf3c1a472a99b2f427c043f6"),
    _pinned(_OPTIPROMPT, "relation_metainfo/LPAQA_relations.jsonl", "prompts/lpaqa_top1/LPAQA_relations.jsonl",
            2555, "5a488533be9a12253ef21fea10f9e8f5e26692d0741a2e9e8b1c22d280d6a586"),
    _pinned(_FACTLM, "data/LAMA/29k-vocab.json", "vocab/29k-vocab.json", 846699,
            "58c1da7f8f87c0a15cf652db3d91276ec6d6e4ccd6cbf4c6054fddc077bf3524"),
    *(
        _pinned(_AUTOPROMPT, f"prompts/{name}", f"prompts/autoprompt/{name}", size, sha256)
        for name, size, sha256 in (
            ("fact_retrieval_bert_prompts.jsonl", 3360,
             "1fa516dd4ca8a89b9d03a6c16bdccdf1cc43effebf5da7023ad075c3adcc2c2a"),
            ("fact_retrieval_roberta_prompts.jsonl", 3489,
             "403b6ca61d31182ffb56c87e67ba30a0de04f155446f378a6a6a1b66206786ce"),
            ("relation_extraction_bert_prompts.jsonl", 3184,
             "b7191d92aa1c360ed1e7dc2108b9ac60c2bfc2a4dbb67683c4367868d7f8809f"),
            ("relation_extraction_roberta_prompts.jsonl", 3417,
             "7ae12c3c7a5209c348f080e1cedd1b5b490a715a21d7ed0a100aeb48e0d60485"),
        )
    ),
)


def default_lama_dir() -> Path:
    """Where ``download_lama`` puts the data and the benchmarks look for it by default: ``<cache>/lama``."""
    return default_cache_dir() / "lama"


class LamaDataUnavailable(RuntimeError):
    """The LAMA data cannot be fetched (offline mode or no network); use a local copy instead."""


_TRUE = {"1", "true", "yes", "on"}


def _offline() -> str | None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def _unavailable(what: str, reason: str) -> LamaDataUnavailable:
    return LamaDataUnavailable(
        f"cannot download {what} ({reason}). Pass --data-dir (data_dir=...) pointing at a local copy of the LAMA "
        "data (relations.jsonl, trex/<corpus>/P*/{train,dev,test}.jsonl, prompts/, vocab/); "
        "docs/lama-data-and-metrics.md shows the layout and where each file comes from"
    )


def _install_archive(archive: Path, download: Download, target: Path) -> list[Path]:
    """Copy the archive members that ``download.members`` selects into ``target``; return the written paths.

    Each member is written to a temporary name and renamed, so a crash never leaves a truncated data file.
    Reading a member checks its CRC (zip) or the stream's (gzip).
    """
    rules = [(re.compile(r"(?:^|/)" + regex + "$"), dst) for regex, dst in download.members.items()]
    written = []

    def place(member: str, read: Any) -> None:
        for regex, dst in rules:
            match = regex.search(member)
            if match:
                out = target / dst.format(**match.groupdict())
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(out.name + ".tmp")
                with read() as src, tmp.open("wb") as f:
                    shutil.copyfileobj(src, f)
                os.replace(tmp, out)
                written.append(out)
                return

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    place(info.filename, lambda info=info: z.open(info))
    else:
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                if member.isfile():
                    place(member.name, lambda member=member: t.extractfile(member))
    return written


def _archive_name(url: str) -> str:
    """A cache file name for ``url``: its last path part, prefixed by a short hash of the whole address."""
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{url.rstrip('/').rsplit('/', 1)[-1]}"


def download_lama(
    target_dir: PathLike | None = None, downloads: Sequence[Download] = DOWNLOADS, *, cache_dir: PathLike | None = None
) -> Path:
    """Fetch the public LAMA files into ``target_dir`` (default ``default_lama_dir()``); return the directory.

    Gets LAMA's ``data.zip`` (relations, T-REx test in LAMA format, Google-RE, SQuAD), OptiPrompt's
    ``data.tar.gz`` (AutoPrompt's T-REx train/dev), the common vocabularies, P-tuning's 29k list and the
    AutoPrompt / LPAQA top-1 prompts. The T-REx facts land in ``trex/autoprompt_original_full``, which the
    default "autoprompt" corpus falls back to. The archives are kept in ``<cache_dir>/downloads`` (default: the
    folder of ``default_cache_dir()``), so a second call downloads nothing; an interrupted call resumes.

    Raises LamaDataUnavailable offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set) or when a file cannot be
    fetched, and ``ChecksumMismatch`` when a file differs from its known size or SHA-256.
    """
    flag = _offline()
    if flag is not None:
        raise _unavailable("the LAMA data", f"offline mode: {flag}")
    target = Path(target_dir) if target_dir is not None else default_lama_dir()
    archives = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "downloads"
    target.mkdir(parents=True, exist_ok=True)
    for download in downloads:
        plain = set(download.members) == {""}
        dest = target / download.members[""] if plain else archives / _archive_name(download.url)
        try:
            fetch(download.url, dest, download.expected)
        except DownloadFailed as e:
            raise _unavailable(download.url, str(e)) from e
        if not plain and not _install_archive(dest, download, target):
            raise ValueError(f"{download.url}: none of the expected files {list(download.members)} found in {dest}")
    return target
