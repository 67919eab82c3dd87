"""SuperGLUE loaders and P-tuning patterns: behaviour on the excerpts in tests/fixtures/data/superglue, split sizes
on the full FewGLUE / SuperGLUE data (PROMPT_ADAPTERS_DATA; skipped without it)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from datasets import ClassLabel, Dataset, Features, Value

from prompt_adapters.data import superglue
from prompt_adapters.data.superglue import (
    TASKS,
    PTuningHParams,
    SuperGlueDataUnavailable,
    Task,
    example_fields,
    get_task,
    gold_answer,
    load_task,
    load_task_from_hub,
    render_text,
)
from prompt_adapters.template import answer_token_id, compile_template
from prompt_adapters.testing import build_tokenizer


@pytest.fixture(scope="module")
def data_dir(fixture_data: Path) -> Path:
    """The excerpts: each task's first train / dev32 / val records, WSC val idx 42, two unlabeled records."""
    return fixture_data / "superglue"


@pytest.fixture(scope="module")
def full_dir(full_data: Path) -> Path:
    return full_data / "superglue"


@pytest.fixture(params=["excerpt", "full"])
def any_dir(request: pytest.FixtureRequest) -> Path:
    """The excerpts, then the full data (the second is skipped without PROMPT_ADAPTERS_DATA)."""
    return request.getfixturevalue("data_dir" if request.param == "excerpt" else "full_dir")


# ---------------------------------------------------------------------------------------------- golden patterns

# The first train.jsonl record of each task rendered with its default P-tuning pattern (methods-spec §3.2 table),
# checked by hand: anchors and prompt positions as in the table, RTE's hypothesis without its final ".", COPA's
# choices lower-cased at the first character and (as in the reference code) its premise without the final ".",
# WSC's pronoun at span2_index marked as *it*, WiC's "*word *?" anchor.
GOLDEN = {
    "BoolQ": (
        "Ghost in the Shell -- Animation studio Production I.G has produced several different anime "
        "adaptations of Ghost in the Shell, starting with the 1995 film of the same name, telling the story "
        "of Section 9's investigation of the Puppet Master. The television series Ghost in the Shell: Stand "
        "Alone Complex followed in 2002, telling an alternate story from the manga and first film, "
        "featuring Section 9's investigations of government corruption in the Laughing Man and Individual "
        "Eleven incidents. A sequel to the 1995 film, Ghost in the Shell 2: Innocence, was released in "
        "2004. In 2006, the film Ghost in the Shell: Stand Alone Complex - Solid State Society retook the "
        "story of the television series. 2013 saw the start of the Ghost in the Shell: Arise original video "
        "animation (OVA) series, consisting of four parts through mid-2014. The series was recompiled in "
        "early 2015 as a television series titled Ghost in the Shell: Arise - Alternative Architecture, "
        "airing with an additional two episodes (one part). An animated feature film produced by most of "
        "the Arise staff, titled Ghost in the Shell: The New Movie, was released on June 20, 2015. A "
        "live-action American film of the same name was released on March 31, 2017. . [P] Question: is "
        "ghost in the shell based on the anime ? Answer: [MASK] ."
    ),
    "CB": (
        "Nevertheless, her heart sank at the thought of spending an evening with him in his present state "
        "of mind, and she was tempted to invent a sore throat in order to get out of it. But he had been "
        "very helpful over the Puddephat business, she admitted to herself, and his moods were "
        "unpredictable - he might be on top of the world by the time he arrived at the cinema. ``I'm still "
        "keen if you are '' she said brightly pretending she had not noticed anything was amiss. [SEP] "
        "something was amiss ? [P] answer: [MASK]"
    ),
    "COPA": (
        "the chandelier dropped from the ceiling or the chandelier's lights flickered on and off ? The "
        "chandelier shattered on the floor because [P] [MASK] ."
    ),
    "MultiRC": (
        "A stranger in town meets pretty young Susan Martinez De La Cruz and accompanies her to a barbecue "
        ", where wealthy Jason Carberry is saying a few words for the recently departed Robin Randall , a "
        "citizen who got shot .  Jason objects to the stranger's presence , being Susan's guardian and "
        "protective of her .  He challenges him to a shootout , but the stranger pulls his pistol before "
        "Jason's can even clear the holster .  Calaveras Kate , a saloon singer who's in love with Jason , "
        "is relieved when the stranger declines to pull the trigger .  Rafael Moreno suddenly rides into "
        "town and picks a fight with the stranger .  Their brawl continues until the arrival of Judge "
        "Wallace Wintrop and his niece , Sheila , who have come to town from back East and deplore all this "
        "random violence out West .  The stranger is recognized as Reb Randall , the dead man's brother .  "
        "He is looking for the killer , who could be Rafael , or could be Jason , or could even be Billy "
        "Buckett , the coward of the county .  The women hold their breath to see if the men they love will "
        "survive . . Question: How does Jason react to the stranger who arrives with Susan? ? Is it He "
        "welcomes him with open arm ? [P] [MASK] ."
    ),
    "RTE": (
        "Even the most draconian proposal — to reinstate flight limits to ease the bottlenecks at Kennedy — "
        "might backfire, industry analysts say, because airlines would end up shifting flights to Newark "
        'Airport, which is already strained. "Kennedy is the perfect example of putting 10 pounds in a '
        '5-pound bag," said Darryl Jenkins, a longtime airline consultant. "J.F.K. was never set up to be a '
        'hub for anybody; its been a gateway," he said. But in recent years it became a hub for JetBlue and '
        "Delta. These days, delays at Kennedy are so bad, he said, that \"it's backing up the whole "
        'country.". Question: JFK airport is in New York ? [P] Answer: [MASK] .'
    ),
    "WiC": "You make me feel naked. [SEP] She felt small and insignificant. [P] *feel *? [MASK]",
    "WSC": (
        "[P] The actress used to be named Terpsichore , but she changed it to Tina a few years ago, because "
        "she figured *it* was easier to pronounce. [P] pronoun '* it *' refers to [MASK] ."
    ),
}
GOLD = {"BoolQ": "No", "CB": "Yes", "COPA": "the chandelier dropped from the ceiling", "MultiRC": "No"}
GOLD |= {"RTE": "No", "WiC": "Yes", "WSC": "Tina"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_default_pattern_renders_first_train_record(data_dir: Path, name: str) -> None:
    task = TASKS[name]
    record = load_task(data_dir, name, "train")[0]
    assert render_text(task.template_for(record), example_fields(task, record)) == GOLDEN[name]
    assert gold_answer(task, record) == GOLD[name]


def test_templates_are_the_reference_patterns() -> None:
    assert TASKS["RTE"].template == "[premise] Question: [hypothesis] ? [P] Answer: [Y] ."
    assert TASKS["CB"].template == "[premise] [SEP] [hypothesis] ? [P] answer: [Y]"
    assert TASKS["BoolQ"].template == "[passage] . [P] Question: [question] ? Answer: [Y] ."
    assert TASKS["MultiRC"].template == "[passage] . Question: [question] ? Is it [answer] ? [P] [Y] ."
    assert TASKS["WiC"].template == "[sentence1] [SEP] [sentence2] [P] *[word] *? [Y]"
    assert TASKS["WSC"].template == "[P] [text] [P] pronoun '* [pronoun] *' refers to [Y] ."
    assert TASKS["COPA"].template == {
        "cause": "[choice1] or [choice2] ? [premise] because [P] [Y] .",
        "effect": "[choice1] or [choice2] ? [premise] so [P] [Y] .",
    }
    assert all(task.words == "hard" for task in TASKS.values())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_templates_compile_with_one_prompt_token_per_pattern_id(name: str) -> None:
    """P-tuning's pattern id is its number of prompt tokens; anchors compile to hard ids with tiny BERT."""
    task = TASKS[name]
    tok = build_tokenizer("bert")
    for template in task.templates:
        compiled = compile_template(template, tok, words="hard")
        assert compiled.num_soft == task.hparams.pattern_id
        assert {p.kind for p in compiled.pieces} <= {"hard", "soft", "field", "answer"}


@pytest.mark.parametrize("name", ["BoolQ", "CB", "MultiRC", "RTE", "WiC"])
def test_verbalizer_words_are_single_tokens(name: str) -> None:
    """The reference model albert-xxlarge-v2 lower-cases its input, so its verbalizer ids are those of "yes", "no",
    "maybe". The tiny BERT tokenizer is cased and splits "Yes" into Y ##es; its lower-cased forms are one token."""
    task = TASKS[name]
    tok = build_tokenizer("bert")
    compiled = compile_template(task.templates[0], tok, words="hard")
    assert task.verbalizer is not None
    ids = {label: answer_token_id(tok, compiled, word.lower()) for label, word in task.verbalizer.items()}
    assert len(set(ids.values())) == len(ids)


def test_copa_effect_questions_use_so(data_dir: Path) -> None:
    copa = TASKS["COPA"]
    records = load_task(data_dir, "COPA", "val")
    effect = next(r for r in records if r["question"] == "effect")
    assert " so [P] [MASK] ." in render_text(copa.template_for(effect), example_fields(copa, effect))
    with pytest.raises(ValueError, match=r"'question' is 'why'; expected one of \['cause', 'effect'\]"):
        copa.template_for({**effect, "question": "why"})


def test_copa_gold_is_the_processed_choice() -> None:
    record = {"premise": "I hid it.", "choice1": "A cat came.", "choice2": "Rain fell!", "question": "cause"}
    assert gold_answer("COPA", {**record, "label": 1}) == "rain fell"
    assert gold_answer("copa", {**record, "label": 0}) == "a cat came"
    with pytest.raises(ValueError, match="no label"):
        gold_answer("COPA", record)
    with pytest.raises(ValueError, match="not a choice index"):
        gold_answer("COPA", {**record, "label": 2})


def test_wsc_pronoun_index_repairs(data_dir: Path) -> None:
    """An index one word off (val idx 42) moves onto the pronoun; a pronoun glued to punctuation (train idx 137,
    'him,"') is split off it before marking, as the reference loader does."""
    val = {r["idx"]: r for r in load_task(data_dir, "WSC", "val")}
    assert "might want to use *it* , but" in example_fields("WSC", val[42])["text"]
    train = {r["idx"]: r for r in load_task(data_dir, "WSC", "train")}
    assert example_fields("WSC", train[137])["text"].endswith('"Good for *him* ," he said.')
    bad = {"text": "a b c d", "target": {"span1_text": "a", "span2_index": 3, "span2_text": "x"}, "label": True}
    with pytest.raises(ValueError, match="cannot find 'x' at or next to word 3"):
        example_fields("WSC", bad)


# ---------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("name", ["BoolQ", "CB", "COPA", "RTE", "WiC", "WSC"])
def test_fewglue_splits_have_32_examples(full_dir: Path, name: str) -> None:
    assert len(load_task(full_dir, name, "train")) == 32
    assert len(load_task(full_dir, name, "dev32")) == 32


@pytest.mark.parametrize(
    ("name", "size"), [("BoolQ", 3270), ("CB", 56), ("COPA", 100), ("RTE", 277), ("WiC", 638), ("WSC", 104)]
)
def test_val_sizes(full_dir: Path, name: str, size: int) -> None:
    assert len(load_task(full_dir, name, "val")) == size


def test_multirc_sizes(full_dir: Path) -> None:
    for split, passages, questions, answers in [("train", 32, 32, 154), ("dev32", 32, 32, 167), ("val", 83, 953, 4848)]:
        rows = load_task(full_dir, "MultiRC", split)
        assert (len(set(rows["passage_idx"])), len(set(rows["question_idx"])), len(rows)) == (
            passages,
            questions,
            answers,
        )


def test_multirc_is_one_row_per_answer_option(data_dir: Path) -> None:
    record = json.loads((data_dir / "fewglue_32dev/MultiRC/train.jsonl").read_text().splitlines()[0])
    rows = load_task(data_dir, "MultiRC", "train")
    first_record = [row for row in rows if row["passage_idx"] == record["idx"]]
    assert len(first_record) == sum(len(q["answers"]) for q in record["passage"]["questions"])
    second = load_task(data_dir, "MultiRC", "train")[1]
    assert second["passage"].startswith("A stranger in town meets pretty young Susan")
    assert {key: value for key, value in second.items() if key != "passage"} == {
        "question": "How does Jason react to the stranger who arrives with Susan?",
        "answer": "He objects to the stranger's presence and challenges him to a shootout",
        "passage_idx": 6,
        "question_idx": 56,
        "answer_idx": 334,
        "label": "1",
    }
    assert gold_answer("MultiRC", second) == "Yes"


def test_unlabeled_pools(full_dir: Path) -> None:
    for name, size in [("COPA", 400), ("WSC", 554), ("WiC", 5428)]:
        rows = load_task(full_dir, name, "unlabeled")
        assert len(rows) == size
        assert "label" not in rows.column_names


def test_unlabeled_rows_have_no_label(data_dir: Path) -> None:
    for name in ("COPA", "WSC", "WiC"):
        rows = load_task(data_dir, name, "unlabeled")
        assert len(rows) == 2 and "label" not in rows.column_names
    with pytest.raises(FileNotFoundError, match=r"BoolQ has no 'unlabeled' split.*only for COPA, MultiRC, WiC"):
        load_task(data_dir, "BoolQ", "unlabeled")


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("BoolQ", {"False", "True"}),
        ("CB", {"entailment", "contradiction", "neutral"}),
        ("COPA", {0, 1}),
        ("MultiRC", {"0", "1"}),
        ("RTE", {"entailment", "not_entailment"}),
        ("WiC", {"F", "T"}),
        ("WSC", {False, True}),
    ],
)
def test_labels_are_normalised(full_dir: Path, name: str, labels: set[Any]) -> None:
    found = set(load_task(full_dir, name, "val")["label"])
    assert found == labels
    task = TASKS[name]
    if task.verbalizer is not None:
        assert set(task.verbalizer) == labels


def test_every_val_record_renders(any_dir: Path) -> None:
    """Preprocessing never fails on the real dev sets, and every rendering has its prompt tokens and one answer."""
    for name, task in TASKS.items():
        counts = Counter()
        for record in load_task(any_dir, name, "val"):
            text = render_text(task.template_for(record), example_fields(task, record))
            counts[(text.count("[P]"), text.count("[MASK]"))] += 1
            gold_answer(task, record)
        assert set(counts) == {(task.hparams.pattern_id, 1)}, name


def test_loader_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown SuperGLUE task 'ReCoRD'; expected one of \['BoolQ'"):
        load_task(data_dir, "ReCoRD", "train")
    with pytest.raises(ValueError, match=r"unknown split 'test'; expected one of \['train', 'dev32', 'val'"):
        load_task(data_dir, "RTE", "test")
    with pytest.raises(FileNotFoundError, match="does not exist; pass the folder holding fewglue_32dev/"):
        load_task(tmp_path / "nowhere", "RTE", "train")
    with pytest.raises(FileNotFoundError, match=r"did you mean .*superglue"):
        load_task(data_dir.parent, "RTE", "train")
    (tmp_path / "fewglue_32dev/RTE").mkdir(parents=True)
    (tmp_path / "fewglue_32dev/RTE/train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"RTE label 'maybe' is not one of .*\['entailment', 'not_entailment'\]"):
        load_task(tmp_path, "RTE", "train")


# ---------------------------------------------------------------------------------------------- task table


def test_hyper_parameters_match_the_reference_scripts() -> None:
    table = {  # methods-spec §3.2 "Per-task hyper-parameters"
        "BoolQ": (1, 256, 16, 250, 1e-4, 0, 8),
        "CB": (1, 256, 16, 250, 1e-5, 0, 16),
        "COPA": (1, 96, 16, 3500, 1e-5, 0, 1),
        "MultiRC": (1, 512, 16, 250, 1e-4, 0, 8),
        "RTE": (1, 256, 16, 3500, 1e-4, 150, 16),
        "WiC": (1, 256, 16, 3500, 1e-5, 0, 16),
        "WSC": (2, 128, 16, 3500, 1e-4, 0, 1),
    }
    assert {name: task.hparams for name, task in TASKS.items()} == {
        name: PTuningHParams(*row) for name, row in table.items()
    }


def test_task_declarations_are_checked() -> None:
    rte = TASKS["RTE"]
    assert get_task("rte") is rte and get_task(rte) is rte
    with pytest.raises(ValueError, match="verbalizer keys"):
        Task("X", rte.template, "verbalizer", {0: "a"}, ("accuracy",), rte.hparams, verbalizer={"b": "Yes"})
    with pytest.raises(ValueError, match="template_key is needed"):
        Task("X", {"a": rte.template}, "wsc", {}, ("accuracy",), rte.hparams)
    with pytest.raises(ValueError, match=r"shortenable names \['premis'\], not fields"):
        Task("X", rte.template, "wsc", {}, ("accuracy",), rte.hparams, shortenable=("premis",))


def test_render_text_slots() -> None:
    fields = {"X": "Dante", "Z": "x"}
    assert render_text("[P*3] [X] [soft: was born in] [Y][hard: .]", fields) == "[P] [P] [P] Dante was born in [MASK]."
    assert render_text("[X] [SEP] [Y]", fields, answer="<mask>") == "Dante [SEP] <mask>"
    assert render_text("[P] [X] [P*2] [Y]", fields, prompt="<p>") == "<p> Dante <p> <p> [MASK]"
    with pytest.raises(KeyError, match=r"no value for field \[W\]"):
        render_text("[W] [Y]", fields)


# ---------------------------------------------------------------------------------------------- Hub


def test_hub_offline_error_says_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SuperGlueDataUnavailable, match=r"offline mode: HF_DATASETS_OFFLINE=1") as err:
        load_task_from_hub("RTE", "val")
    assert "load_task(data_dir, 'RTE', 'val')" in str(err.value)
    assert "fewglue_32dev/<TASK>/{train,dev32}.jsonl" in str(err.value) and "download_fewglue()" in str(err.value)
    with pytest.raises(ValueError, match="split 'dev32' is not on the Hub"):
        load_task_from_hub("RTE", "dev32")


def test_hub_rows_take_the_local_schema(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub-shaped WSC and MultiRC rows (flat spans, ClassLabel ints, test label -1) become load_task rows."""
    wsc = Dataset.from_list(
        [
            {"text": "A b it.", "span1_index": 0, "span2_index": 2, "span1_text": "A", "span2_text": "it",
             "idx": 7, "label": 1},
            {"text": "A b it.", "span1_index": 0, "span2_index": 2, "span1_text": "A", "span2_text": "it",
             "idx": 8, "label": -1},
        ]
    )  # fmt: skip
    multirc = Dataset.from_list(
        [{"paragraph": "P", "question": "Q?", "answer": "A", "idx": {"paragraph": 1, "question": 2, "answer": 3},
          "label": 0}],
        features=Features(
            {"paragraph": Value("string"), "question": Value("string"), "answer": Value("string"),
             "idx": {"paragraph": Value("int32"), "question": Value("int32"), "answer": Value("int32")},
             "label": ClassLabel(names=["False", "True"])}
        ),
    )  # fmt: skip
    calls = []

    def fake_load(path: str, name: str, split: str) -> Dataset:
        calls.append((path, name, split))
        return {"wsc": wsc, "multirc": multirc}[name]

    monkeypatch.setattr(superglue.datasets, "load_dataset", fake_load)
    rows = load_task_from_hub("WSC", "val")
    assert calls == [("super_glue", "wsc", "validation")]
    target = {"span1_index": 0, "span1_text": "A", "span2_index": 2, "span2_text": "it"}
    assert rows[0] == {"text": "A b it.", "idx": 7, "target": target, "label": True}
    assert rows[1]["label"] is None  # the Hub test split has no labels
    assert example_fields("WSC", rows[0]) == {"text": "A b *it* .", "pronoun": "it"}
    row = load_task_from_hub("MultiRC", "train")[0]
    assert row == {"question": "Q?", "answer": "A", "passage": "P", "passage_idx": 1, "question_idx": 2,
                   "answer_idx": 3, "label": "0"}  # fmt: skip
    local = load_task(data_dir, "MultiRC", "train")
    assert set(row) == set(local.column_names)


@pytest.mark.parametrize("name", list(TASKS))
def test_causal_form_reads_the_masked_fields_and_ends_at_the_answer(name: str, data_dir: Path) -> None:
    task = TASKS[name]
    record = load_task(data_dir, name, "train")[0]
    fields = example_fields(task, record)
    template = task.causal_template
    causal = render_text(template if isinstance(template, str) else template[record["question"]], fields)
    masked = render_text(task.template_for(record), fields).replace("[SEP] ", "")
    assert causal.endswith("[MASK]") and "[SEP]" not in causal
    assert masked.startswith(causal)  # the masked pattern up to its answer, without the separator
    assert task.adapter_template_for("causal") == task.adapter_template_for("seq2seq")


def test_a_causal_form_with_text_after_the_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="must end at \\[Y\\]"):
        Task(name="T", template="[premise] ? [Y] .", causal_template="[premise] ? [Y] .", answer="verbalizer",
             labels={0: "a"}, verbalizer={"a": "Yes"}, metrics=("accuracy",),
             hparams=PTuningHParams(1, 16, 1, 1, 1e-4, 0, 1))
