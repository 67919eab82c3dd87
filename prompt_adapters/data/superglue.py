"""FewGLUE / SuperGLUE data with P-tuning's few-shot pattern-verbalizer pairs (methods-spec §3.2).

Each of the seven tasks is one declarative ``Task`` entry in ``TASKS``: the P-tuning pattern of the default pattern id
written in the library's template language (plain words are hard anchors, ``[P]`` is a prompt token, ``[Y]`` the
answer), the verbalizer, the field preprocessing, the metric names and the reference hyper-parameters. The loaders
read a local FewGLUE / SuperGLUE folder (``load_task``; ``download_fewglue`` fetches one, layout in ``SPLIT_FILES``)
or the Hub copy (``load_task_from_hub``) into one ``datasets.Dataset`` row per example (per answer option for
MultiRC) with normalised labels, and ``example_fields`` / ``gold_answer`` turn a row into template field values and
the answer text.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets import Dataset

from prompt_adapters.data.download import DownloadFailed, Expected, default_cache_dir, fetch
from prompt_adapters.data.lama import read_jsonl
from prompt_adapters.model_facts import LMKind
from prompt_adapters.template import WordMode, parse_template

PathLike = str | os.PathLike
AnswerKind = Literal["verbalizer", "copa", "wsc"]
HUB_PATH = "super_glue"
SPLIT_FILES: dict[str, str] = {
    "train": "fewglue_32dev/{task}/train.jsonl",
    "dev32": "fewglue_32dev/{task}/dev32.jsonl",
    "val": "val/{task}/val.jsonl",
    "unlabeled": "fewglue_unlabeled/{task}/unlabeled.jsonl",
}
"""Where each split lives under the data directory (FewGLUE 32 train / dev32, the full SuperGLUE dev set, the PET
unlabeled pools, which exist only for COPA, MultiRC, WiC and WSC)."""
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
"""Our split name -> the Hub split; the Hub "train" is the full SuperGLUE training set, not FewGLUE's 32."""


@lru_cache(maxsize=32)
def _template_fields(template: str) -> tuple[str, ...]:
    return tuple(segment.text for segment in parse_template(template) if segment.kind == "field")


@dataclass(frozen=True)
class PTuningHParams:
    """P-tuning's few-shot run settings for one task (``PT-Fewshot/scripts/<task>_pt_few_shot.sh``).

    ``batch_size`` is the effective batch (per-GPU batch x GPUs under DataParallel); ``eval_batch_size`` is per GPU.
    The LM itself is trained with ``lm_lr``, which the reference hard-codes; ``prompt_encoder_lr`` is its CLI lr.
    """

    pattern_id: int
    max_seq_len: int
    batch_size: int
    max_steps: int
    prompt_encoder_lr: float
    warmup_steps: int
    eval_batch_size: int
    lm_lr: float = 1e-5


@dataclass(frozen=True)
class MarkWord:
    """Wrap one whitespace-separated word of ``field`` in ``*...*`` (WSC's pronoun marking).

    ``index`` and ``word`` are record paths to the word's position and text. As in the reference loader, a position
    that is off by one is moved onto the word, and a word glued to punctuation (``him,"``) is split off it first.
    """

    field: str
    index: str
    word: str


@dataclass(frozen=True)
class Task:
    """One SuperGLUE task as P-tuning's few-shot setup reads it.

    ``template`` is a template string, or for COPA a mapping from the value of the record field ``template_key``
    ("cause" / "effect") to its template. ``labels`` maps each raw label of the jsonl files to the normalised label,
    in the Hub's ClassLabel order. Preprocessing is applied by ``example_fields`` in this order: ``sources`` (where a
    template field is read from when it is not the record key of the same name), ``mark_word``,
    ``strip_final_punct`` then ``lowercase_first``. ``shortenable`` lists the fields the reference truncates to fit
    ``max_seq_len``, in the order it cuts them (from the end of each); the other fields are never cut.

    ``answer`` says what fills ``[Y]``: a verbalizer word ("verbalizer"), the choice named by the label among
    ``choices`` ("copa"), or the record's ``answer_source`` ("wsc"). ``metrics`` are the result keys of the task's
    metric (``prompt_adapters.metrics.superglue``). ``one_row_per_answer`` flattens MultiRC's passages into answer
    options; ``hub_columns`` maps a record path of ours to the Hub column holding it where the two differ.
    ``merged_template`` is the single template a prompt adapter uses for a task with several (COPA), where the word
    that differs is the field ``[connective]``, filled from ``switch_words`` by the record's ``template_key``.
    """

    name: str
    template: str | Mapping[str, str]
    answer: AnswerKind
    labels: Mapping[Any, Any]
    metrics: tuple[str, ...]
    hparams: PTuningHParams
    verbalizer: Mapping[str, str] | None = None
    words: WordMode = "hard"
    template_key: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    shortenable: tuple[str, ...] = ()
    strip_final_punct: tuple[str, ...] = ()
    lowercase_first: tuple[str, ...] = ()
    mark_word: MarkWord | None = None
    choices: tuple[str, ...] = ()
    answer_source: str | None = None
    one_row_per_answer: bool = False
    hub_columns: Mapping[str, str] = field(default_factory=dict)
    switch_words: Mapping[str, str] = field(default_factory=dict)
    merged_template: str | None = None
    causal_template: str | Mapping[str, str] | None = None
    causal_merged_template: str | None = None

    def __post_init__(self) -> None:
        if (self.answer == "verbalizer") != (self.verbalizer is not None):
            raise ValueError(f"task {self.name!r}: a verbalizer is required exactly when answer == 'verbalizer'")
        if self.verbalizer is not None and set(self.verbalizer) != set(self.labels.values()):
            raise ValueError(
                f"task {self.name!r}: verbalizer keys {sorted(self.verbalizer)} differ from the normalised labels "
                f"{sorted(self.labels.values())}"
            )
        if isinstance(self.template, str) == (self.template_key is not None):
            raise ValueError(f"task {self.name!r}: template_key is needed exactly when template is a mapping")
        known = {name for template in self.templates for name in _template_fields(template)}
        causal = self.causal_templates
        for template in causal:
            fields = set(_template_fields(template))
            if fields != known or not template.rstrip().endswith("[Y]") or "[SEP]" in template:
                raise ValueError(
                    f"task {self.name!r}: causal template {template!r} must end at [Y], use no [SEP] and read the "
                    f"fields {sorted(known)}"
                )
        if causal and isinstance(self.causal_template, str) != isinstance(self.template, str):
            raise ValueError(f"task {self.name!r}: causal_template must be a mapping exactly when template is one")
        for option in ("sources", "shortenable", "strip_final_punct", "lowercase_first", "choices"):
            unknown = sorted(set(getattr(self, option)) - known)
            if unknown:
                raise ValueError(
                    f"task {self.name!r}: {option} names {unknown}, not fields of its template {sorted(known)}"
                )

    @property
    def adapter_template(self) -> str:
        """One template for a prompt adapter: where records pick one of several templates (COPA's "because" /
        "so"), the word that differs becomes the hard field ``[connective]``, so every record shares the soft rows."""
        if isinstance(self.template, str):
            return self.template
        if self.merged_template is None or not self.switch_words:
            raise ValueError(f"task {self.name!r} has several templates but no merged_template / switch_words")
        return self.merged_template

    @property
    def templates(self) -> tuple[str, ...]:
        """Every template of the task (one, or COPA's two)."""
        return (self.template,) if isinstance(self.template, str) else tuple(self.template.values())

    @property
    def causal_templates(self) -> tuple[str, ...]:
        """Every left-to-right form of the task's templates (empty when it has none)."""
        if self.causal_template is None:
            return ()
        if isinstance(self.causal_template, str):
            return (self.causal_template,)
        return tuple(self.causal_template.values())

    def adapter_template_for(self, lm_kind: LMKind) -> str:
        """The adapter template for an LM of ``lm_kind``: the masked pattern for masked LMs, its left-to-right form
        (ending at ``[Y]``, no ``[SEP]``) for causal and seq2seq LMs, which predict the answer after the text."""
        if lm_kind == "masked":
            return self.adapter_template
        if lm_kind not in ("causal", "seq2seq"):
            raise ValueError(f"lm_kind must be 'masked', 'causal' or 'seq2seq', got {lm_kind!r}")
        if self.causal_template is None:
            raise ValueError(f"task {self.name!r} has no causal_template, so it cannot run on a {lm_kind} LM")
        if isinstance(self.causal_template, str):
            return self.causal_template
        if self.causal_merged_template is None:
            raise ValueError(f"task {self.name!r} has several causal templates but no causal_merged_template")
        return self.causal_merged_template

    def template_for(self, record: Mapping[str, Any]) -> str:
        """The template that renders ``record`` (COPA picks "because" or "so" by its question)."""
        if isinstance(self.template, str):
            return self.template
        key = record.get(self.template_key or "")
        if key not in self.template:
            raise ValueError(
                f"{self.name} record field {self.template_key!r} is {key!r}; expected one of {sorted(self.template)}"
            )
        return self.template[key]


_BOOL_LABELS = {False: "False", True: "True"}
_COPA = "[choice1] or [choice2] ? [premise] {connective} [P] [Y] ."
_COPA_CAUSAL = "[choice1] or [choice2] ? [premise] {connective} [P] [Y]"

TASKS: dict[str, Task] = {
    "BoolQ": Task(
        name="BoolQ",
        template="[passage] . [P] Question: [question] ? Answer: [Y] .",
        causal_template="[passage] . [P] Question: [question] ? Answer: [Y]",
        answer="verbalizer",
        labels=_BOOL_LABELS,
        verbalizer={"False": "No", "True": "Yes"},
        shortenable=("question", "passage"),
        metrics=("accuracy",),
        hparams=PTuningHParams(1, 256, 16, 250, 1e-4, 0, 8),
    ),
    "CB": Task(
        name="CB",
        template="[premise] [SEP] [hypothesis] ? [P] answer: [Y]",
        causal_template="[premise] [hypothesis] ? [P] answer: [Y]",
        answer="verbalizer",
        labels={label: label for label in ("entailment", "contradiction", "neutral")},
        verbalizer={"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"},
        shortenable=("premise",),
        metrics=("accuracy", "f1_macro"),
        hparams=PTuningHParams(1, 256, 16, 250, 1e-5, 0, 16),
    ),
    "COPA": Task(
        name="COPA",
        template={"cause": _COPA.format(connective="because"), "effect": _COPA.format(connective="so")},
        switch_words={"cause": "because", "effect": "so"},
        merged_template=_COPA.format(connective="[connective]"),
        causal_template={"cause": _COPA_CAUSAL.format(connective="because"),
                         "effect": _COPA_CAUSAL.format(connective="so")},
        causal_merged_template=_COPA_CAUSAL.format(connective="[connective]"),
        template_key="question",
        answer="copa",
        labels={0: 0, 1: 1},
        choices=("choice1", "choice2"),
        shortenable=("premise",),
        strip_final_punct=("premise", "choice1", "choice2"),
        lowercase_first=("choice1", "choice2"),
        metrics=("accuracy",),
        hparams=PTuningHParams(1, 96, 16, 3500, 1e-5, 0, 1),
    ),
    "MultiRC": Task(
        name="MultiRC",
        template="[passage] . Question: [question] ? Is it [answer] ? [P] [Y] .",
        causal_template="[passage] . Question: [question] ? Is it [answer] ? [P] [Y]",
        answer="verbalizer",
        labels={0: "0", 1: "1"},
        verbalizer={"0": "No", "1": "Yes"},
        shortenable=("passage",),
        one_row_per_answer=True,
        hub_columns={
            "passage": "paragraph",
            "passage_idx": "idx.paragraph",
            "question_idx": "idx.question",
            "answer_idx": "idx.answer",
        },
        metrics=("accuracy", "f1a", "em"),
        hparams=PTuningHParams(1, 512, 16, 250, 1e-4, 0, 8),
    ),
    "RTE": Task(
        name="RTE",
        template="[premise] Question: [hypothesis] ? [P] Answer: [Y] .",
        causal_template="[premise] Question: [hypothesis] ? [P] Answer: [Y]",
        answer="verbalizer",
        labels={label: label for label in ("entailment", "not_entailment")},
        verbalizer={"entailment": "Yes", "not_entailment": "No"},
        shortenable=("hypothesis", "premise"),
        strip_final_punct=("hypothesis",),
        metrics=("accuracy",),
        hparams=PTuningHParams(1, 256, 16, 3500, 1e-4, 150, 16),
    ),
    "WiC": Task(
        name="WiC",
        template="[sentence1] [SEP] [sentence2] [P] *[word] *? [Y]",
        causal_template="[sentence1] [sentence2] [P] *[word] *? [Y]",
        answer="verbalizer",
        labels={False: "F", True: "T"},
        verbalizer={"F": "No", "T": "Yes"},
        shortenable=("sentence2", "sentence1"),
        metrics=("accuracy",),
        hparams=PTuningHParams(1, 256, 16, 3500, 1e-5, 0, 16),
    ),
    "WSC": Task(
        name="WSC",
        template="[P] [text] [P] pronoun '* [pronoun] *' refers to [Y] .",
        causal_template="[P] [text] [P] pronoun '* [pronoun] *' refers to [Y]",
        answer="wsc",
        labels={False: False, True: True},
        sources={"pronoun": "target.span2_text"},
        mark_word=MarkWord("text", index="target.span2_index", word="target.span2_text"),
        answer_source="target.span1_text",
        shortenable=("text",),
        hub_columns={f"target.{key}": key for key in ("span1_index", "span1_text", "span2_index", "span2_text")},
        metrics=("accuracy",),
        hparams=PTuningHParams(2, 128, 16, 3500, 1e-4, 0, 1),
    ),
}


def get_task(task: str | Task) -> Task:
    """The ``Task`` named ``task`` (case-insensitive: "rte", "RTE"), or ``task`` itself."""
    if isinstance(task, Task):
        return task
    by_lower = {name.lower(): spec for name, spec in TASKS.items()}
    if not isinstance(task, str) or task.lower() not in by_lower:
        raise ValueError(f"unknown SuperGLUE task {task!r}; expected one of {sorted(TASKS)}")
    return by_lower[task.lower()]


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


class SuperGlueDataUnavailable(RuntimeError):
    """SuperGLUE cannot be loaded from the Hub (offline mode or no network); use a local copy instead."""


def _normalise_label(task: Task, raw: Any) -> Any:
    if raw not in task.labels:
        raise ValueError(f"{task.name} label {raw!r} is not one of the expected raw labels {list(task.labels)}")
    return task.labels[raw]


def _rows(task: Task, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The dataset rows of one jsonl record: itself with a normalised label, or MultiRC's answer options."""
    if not task.one_row_per_answer:
        row = dict(record)
        if "label" in row:
            row["label"] = _normalise_label(task, row["label"])
        yield row
        return
    passage = record["passage"]
    for question in passage["questions"]:
        for answer in question["answers"]:
            row = {
                "passage": passage["text"],
                "question": question["question"],
                "answer": answer["text"],
                "passage_idx": record["idx"],
                "question_idx": question["idx"],
                "answer_idx": answer["idx"],
            }
            if "label" in answer:
                row["label"] = _normalise_label(task, answer["label"])
            yield row


def load_task(data_dir: PathLike, task: str | Task, split: str) -> Dataset:
    """Read ``split`` of ``task`` from a FewGLUE / SuperGLUE folder (``SPLIT_FILES`` gives its layout).

    Splits: "train" (FewGLUE's 32 examples), "dev32" (32 more for model selection), "val" (the full SuperGLUE dev
    set, where P-tuning reports) and "unlabeled" (PET's pools, COPA / MultiRC / WiC / WSC only). MultiRC becomes
    one row per answer option with ``passage_idx``, ``question_idx`` and ``answer_idx``. Labels are mapped to the
    task's normalised labels (``Task.labels``: verbalizer keys, COPA's choice index, WSC's bool); unlabeled rows
    have no label column.
    """
    spec = get_task(task)
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_FILES)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"SuperGLUE data directory {str(root)!r} does not exist; pass the folder holding fewglue_32dev/, val/ "
            "and fewglue_unlabeled/ (docs/superglue-tasks.md shows the layout), or fetch it with download_fewglue()"
        )
    path = root / SPLIT_FILES[split].format(task=spec.name)
    if not path.is_file():
        hint = " (unlabeled pools exist only for COPA, MultiRC, WiC and WSC)" if split == "unlabeled" else ""
        if (root / "superglue").is_dir():
            hint += f"; did you mean {str(root / 'superglue')!r}?"
        raise FileNotFoundError(f"{path} not found: {spec.name} has no {split!r} split under {str(root)!r}{hint}")
    return Dataset.from_list([row for _, record in read_jsonl(path) for row in _rows(spec, record)])


def _offline_flag() -> str | None:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{var}={os.environ[var]}"
    return None


def _hub_record(task: Task, row: dict[str, Any], raw_labels: list[Any]) -> dict[str, Any]:
    """A Hub row in the jsonl record shape (MultiRC: already one row per answer), with a normalised label."""
    moved = {column.split(".")[0] for column in task.hub_columns.values()}
    record = {key: value for key, value in row.items() if key not in moved and key != "label"}
    for target, column in task.hub_columns.items():
        *parents, leaf = target.split(".")
        node = record
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _lookup(row, column)
    if row.get("label", -1) >= 0:  # the test split has label -1
        record["label"] = _normalise_label(task, raw_labels[row["label"]])
    return record


def load_task_from_hub(task: str | Task, split: str, path: str = HUB_PATH) -> Dataset:
    """Load ``split`` ("train", "val" or "test") of ``task`` from the Hub's ``super_glue`` into ``load_task``'s schema.

    The Hub has the full SuperGLUE train set, not FewGLUE's 32 examples, and neither dev32 nor the unlabeled pools;
    use ``load_task`` with a local copy for those. Offline (or with no network) this raises
    ``SuperGlueDataUnavailable`` naming the local alternative.
    """
    spec = get_task(task)
    if split not in HUB_SPLITS:
        raise ValueError(
            f"split {split!r} is not on the Hub; expected one of {list(HUB_SPLITS)} (FewGLUE's train / dev32 and the "
            "unlabeled pools are only in the local data: use load_task)"
        )
    try:
        hub = datasets.load_dataset(path, spec.name.lower(), split=HUB_SPLITS[split])
    except (ConnectionError, FileNotFoundError) as e:
        flag = _offline_flag()
        reason = f"offline mode: {flag}" if flag else f"{type(e).__name__}: {e}"
        raise SuperGlueDataUnavailable(
            f"cannot load {path}/{spec.name.lower()} split {HUB_SPLITS[split]!r} from the Hugging Face Hub ({reason}). "
            f"Pass a local copy instead: load_task(data_dir, {spec.name!r}, {split!r}) with data_dir holding "
            "fewglue_32dev/<TASK>/{train,dev32}.jsonl and val/<TASK>/val.jsonl (download_fewglue() fetches them "
            "when online); see docs/superglue-tasks.md"
        ) from e
    raw_labels = list(spec.labels)
    return Dataset.from_list([_hub_record(spec, dict(row), raw_labels) for row in hub])


# --------------------------------------------------------------------------------------------------------------
# Download (online users only)
# --------------------------------------------------------------------------------------------------------------

_RAW = "https://raw.githubusercontent.com"
_PTUNING = f"{_RAW}/THUDM/P-tuning/f4225d4d8003868b31ed659dfe9732a351ad42d9/FewGLUE_32dev"
_PET = f"{_RAW}/timoschick/fewglue/f52d9515de38cad663869c9e25b79107cda1d345/FewGLUE"
FEWGLUE_FILES: dict[str, tuple[str, Expected]] = {
    path: (url, Expected(size, sha256))
    for path, url, size, sha256 in (
        ("fewglue_32dev/BoolQ/train.jsonl", f"{_PTUNING}/BoolQ/train.jsonl", 24840,
         "317245ba0842129234a368274701dfc196139aa627eff44aefc827c6888935e1"),
        ("fewglue_32dev/BoolQ/dev32.jsonl", f"{_PTUNING}/BoolQ/dev32.jsonl", 21820,
         "0af324b658a72fdd7767aa3c27c1dfafbc03e8e987a148b29e42a72d84b9f9e3"),
        ("fewglue_32dev/CB/train.jsonl", f"{_PTUNING}/CB/train.jsonl", 13510,
         "e6f446e5f117cbfbcd156d8221d163cc370924fa594a1d67f44a151ce5c171b2"),
        ("fewglue_32dev/CB/dev32.jsonl", f"{_PTUNING}/CB/dev32.jsonl", 11703,
         "ec7e1bfe37a7ea4514fc2335bfa3b35be77bfe084aae2e7ca55f765aaee41337"),
        ("fewglue_32dev/COPA/train.jsonl", f"{_PTUNING}/COPA/train.jsonl", 5818,
         "9955ae6e0ee109c96c00c0957d5873c0cb4ea9aced83b6a15b15258bb64b7dd5"),
        ("fewglue_32dev/COPA/dev32.jsonl", f"{_PTUNING}/COPA/dev32.jsonl", 5874,
         "eb43b015d061738467f284c60049ef0afcaf707ec8e528ab3c5c4285a5f5618a"),
        ("fewglue_32dev/MultiRC/train.jsonl", f"{_PTUNING}/MultiRC/train.jsonl", 64111,
         "e584db1b55f7da7c1e6a2d0a6b56eb6edcaff26e69393d628390e70c39ccb561"),
        ("fewglue_32dev/MultiRC/dev32.jsonl", f"{_PTUNING}/MultiRC/dev32.jsonl", 65041,
         "3734d2cac8d1e8d13e2f5e13bec727be7576b45453e9fd765e2075e163f9653d"),
        ("fewglue_32dev/RTE/train.jsonl", f"{_PTUNING}/RTE/train.jsonl", 12775,
         "91a83197e3a286a8bf102e483646f87cd8b1e4c9c5ccd893bc0b9dba0643d580"),
        ("fewglue_32dev/RTE/dev32.jsonl", f"{_PTUNING}/RTE/dev32.jsonl", 14751,
         "a3ba6200d2f27691d927ab97d387292b045316956f877fbfccc9a4658af2b351"),
        ("fewglue_32dev/WiC/train.jsonl", f"{_PTUNING}/WiC/train.jsonl", 7477,
         "b82c0c3f79d2f19bdd3c894f90f9deff0ebff787822a99ff6420db733c2a88f0"),
        ("fewglue_32dev/WiC/dev32.jsonl", f"{_PTUNING}/WiC/dev32.jsonl", 7328,
         "3df4ca565f109be9476caa51884ba13c5f2a33c939898cf80bb53e09fdc73062"),
        ("fewglue_32dev/WSC/train.jsonl", f"{_PTUNING}/WSC/train.jsonl", 7947,
         "e814e1a9a781c1e4b1ad98151f09f2e9326a3db51f9c52639cb0f8b1f428ad47"),
        ("fewglue_32dev/WSC/dev32.jsonl", f"{_PTUNING}/WSC/dev32.jsonl", 8368,
         "2bbaca5c995778e7e14f389f1fe9a4be9a58d99e66db0d73d868ab66564b9da7"),
        ("val/BoolQ/val.jsonl", f"{_PTUNING}/BoolQ/val.jsonl", 2254565,
         "0c86a5045886e5795fe9052003873f7d94b88ed3028a33007c51d99e44fd66d9"),
        ("val/CB/val.jsonl", f"{_PTUNING}/CB/val.jsonl", 24598,
         "c6125587e9601560cb16ea223c33964c5a915568d2af68a81f651b6ef25395ec"),
        ("val/COPA/val.jsonl", f"{_PTUNING}/COPA/val.jsonl", 18169,
         "fa61467cc251010178ed72f8ca82a0fceefc4ca9a85f87ec3b6102955e1a1f1a"),
        ("val/MultiRC/val.jsonl", f"{_PTUNING}/MultiRC/val.jsonl", 550086,
         "d2b480195b15574ac00d52c4479f630bc161a7ab2de77e970fd00652846953ee"),
        ("val/RTE/val.jsonl", f"{_PTUNING}/RTE/val.jsonl", 104895,
         "ab990507bf5f35dc176cba7770a72bfa2c50a88ed72b8cc95cfbf9db95ab1af1"),
        ("val/WiC/val.jsonl", f"{_PTUNING}/WiC/val.jsonl", 146302,
         "9f7207c88beba42cbc139de4c62ce05b23bffc189b3d561594b160e0c3920c0b"),
        ("val/WSC/val.jsonl", f"{_PTUNING}/WSC/val.jsonl", 31167,
         "e5c685ea4bdc347354036a28176459f6feeb0b6870375ecfb3d6ddb1f0e28bef"),
        ("fewglue_unlabeled/COPA/unlabeled.jsonl", f"{_PET}/COPA/unlabeled.jsonl", 67523,
         "4764a452673174ba9f5059b39c3df194e911554c38f897c8aeabdd610acfbf20"),
        ("fewglue_unlabeled/MultiRC/unlabeled.jsonl", f"{_PET}/MultiRC/unlabeled.jsonl", 2767425,
         "1c6bf514ca657ad0c818b199d15aee8a3d6af8bca9a8ebc80d616878290c29b8"),
        ("fewglue_unlabeled/WiC/unlabeled.jsonl", f"{_PET}/WiC/unlabeled.jsonl", 1127280,
         "2c11fee2419b9555cd3013f636f9ad6048c75c486137d98bf3ad77128b55da04"),
        ("fewglue_unlabeled/WSC/unlabeled.jsonl", f"{_PET}/WSC/unlabeled.jsonl", 132379,
         "cd5c70455431960497f58139ef28d233ab1b7e64498203beb397524320302998"),
    )
}
"""Every file ``load_task`` reads: path under the data directory -> (commit-pinned public address, size and
SHA-256). FewGLUE's 32 train / dev32 examples and the SuperGLUE dev sets come from P-tuning's repository, the
unlabeled pools from PET's FewGLUE repository."""


def default_superglue_dir() -> Path:
    """Where ``download_fewglue`` puts the data and the benchmark looks for it by default: ``<cache>/superglue``."""
    return default_cache_dir() / "superglue"


def download_fewglue(
    target_dir: PathLike | None = None, files: Mapping[str, tuple[str, Expected]] | None = None
) -> Path:
    """Fetch the FewGLUE / SuperGLUE files of ``FEWGLUE_FILES`` (or ``files``) into ``target_dir`` (default
    ``default_superglue_dir()``), each checked against its size and SHA-256; return the directory.

    Files already there and intact are not fetched again; an interrupted download resumes. Raises
    ``SuperGlueDataUnavailable`` offline (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE set) or when a file cannot be
    fetched, and ``ChecksumMismatch`` when a file differs from the published one.
    """
    flag = _offline_flag()
    if flag is not None:
        raise SuperGlueDataUnavailable(
            f"cannot download FewGLUE (offline mode: {flag}); pass a local copy to load_task instead"
        )
    target = Path(target_dir) if target_dir is not None else default_superglue_dir()
    for path, (url, expected) in (FEWGLUE_FILES if files is None else files).items():
        try:
            fetch(url, target / path, expected)
        except DownloadFailed as e:
            raise SuperGlueDataUnavailable(f"cannot download FewGLUE: {e}") from e
    return target


# --------------------------------------------------------------------------------------------------------------
# Examples -> template fields and answers
# --------------------------------------------------------------------------------------------------------------


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for the path "a.b", with an error naming the missing key."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(f"record has no {path!r} (keys: {sorted(record)})")
        value = value[key]
    return value


def _mark(text: str, index: int, word: str) -> str:
    """``text`` with the whitespace-separated word at ``index`` wrapped in ``*...*`` (after the index repairs)."""
    words = text.split()
    if not 0 <= index < len(words):
        raise ValueError(f"word index {index} is outside {text!r} ({len(words)} words)")
    if words[index] != word:
        for offset in (-1, 1):
            if 0 <= index + offset < len(words) and words[index + offset] == word:
                index += offset
                break
        else:
            if words[index].startswith(word):
                words[index : index + 1] = [word, words[index][len(word) :]]
    if words[index] != word:
        raise ValueError(f"cannot find {word!r} at or next to word {index} of {text!r}")
    words[index] = f"*{word}*"
    return " ".join(words)


def example_fields(task: str | Task, record: Mapping[str, Any]) -> dict[str, str]:
    """The values of the template fields of ``record`` (a ``load_task`` row) after the task's preprocessing.

    Surrounding white space is removed, as the reference tokenises every pattern part on its own.
    """
    spec = get_task(task)
    names = dict.fromkeys(name for template in spec.templates for name in _template_fields(template))
    values = {name: str(_lookup(record, spec.sources.get(name, name))) for name in names}
    if spec.mark_word is not None:
        mark = spec.mark_word
        values[mark.field] = _mark(values[mark.field], int(_lookup(record, mark.index)), _lookup(record, mark.word))
    for name in spec.strip_final_punct:
        values[name] = values[name].rstrip(string.punctuation)
    for name in spec.lowercase_first:
        values[name] = values[name][:1].lower() + values[name][1:]
    if spec.switch_words:
        values["connective"] = spec.switch_words[str(_lookup(record, spec.template_key or ""))]
    return {name: value.strip() for name, value in values.items()}


def gold_answer(task: str | Task, record: Mapping[str, Any]) -> str:
    """The answer text at ``[Y]``: the label's verbalizer word, COPA's correct choice (preprocessed like the
    pattern's choices) or WSC's candidate referent ``span1_text`` (the label says whether it is the right one)."""
    spec = get_task(task)
    if spec.answer == "wsc":
        return str(_lookup(record, spec.answer_source or "")).strip()
    if "label" not in record or record["label"] is None:
        raise ValueError(f"{spec.name} record has no label (an unlabeled split?); keys: {sorted(record)}")
    label = record["label"]
    if spec.answer == "copa":
        if label not in range(len(spec.choices)):
            raise ValueError(f"COPA label {label!r} is not a choice index in {list(range(len(spec.choices)))}")
        return example_fields(spec, record)[spec.choices[label]]
    verbalizer = spec.verbalizer or {}
    if label not in verbalizer:
        raise ValueError(f"{spec.name} label {label!r} has no verbalizer word; expected one of {list(verbalizer)}")
    return verbalizer[label]


def render_text(template: str, fields: Mapping[str, str], prompt: str = "[P]", answer: str = "[MASK]") -> str:
    """``template`` as readable text: fields filled, each soft token as ``prompt``, ``[Y]`` as ``answer``.

    ``[SEP]`` stays "[SEP]" and ``[hard: ..]`` / ``[soft: ..]`` become their words; pieces are joined with a space
    where the template has one. For inspection and golden tests, not for model input.
    """
    out: list[str] = []
    for segment in parse_template(template):
        if segment.kind == "field":
            if segment.text not in fields:
                raise KeyError(f"no value for field [{segment.text}] of {template!r}; got fields {sorted(fields)}")
            text = fields[segment.text]
        elif segment.kind == "soft":
            text = " ".join([prompt] * segment.count)
        elif segment.kind == "answer":
            text = answer
        elif segment.kind == "sep":
            text = "[SEP]"
        else:
            text = segment.text
        out.append((" " if segment.space_before and out else "") + text)
    return "".join(out)
