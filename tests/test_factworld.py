"""FactWorld: file formats, splits, tokenization, determinism and the measured quality of the small build."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from prompt_adapters import MixturePromptConfig, PromptCollator, PTuningEncoderConfig
from prompt_adapters.factworld import (
    PORTABLE_KERNELS,
    SIZES,
    World,
    build_world,
    cpu_identity,
    object_token_id,
    with_epochs,
)
from prompt_adapters.training import TrainSettings, fit, precision_at_1, rank_answers
from prompt_adapters.tuner import PromptConfig

SPLITS = ("train", "dev", "test")
MODEL_CLASSES = {"bert": AutoModelForMaskedLM, "gpt2": AutoModelForCausalLM, "bart": AutoModelForSeq2SeqLM}


@pytest.fixture(scope="session")
def factworld_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The small FactWorld (seed 0), built once per session: its directory and its report.

    ``FACTWORLD_SMALL`` may name a directory that ``build --size small --seed 0`` already wrote (CI builds it once
    for the README demo and the tests); anything else there is refused.
    """
    prebuilt = os.environ.get("FACTWORLD_SMALL")
    if prebuilt:
        report = json.loads((Path(prebuilt) / "report.json").read_text())
        if (report["size"], report["seed"], sorted(report["models"])) != ("small", 0, sorted(MODEL_CLASSES)):
            raise ValueError(f"FACTWORLD_SMALL={prebuilt} holds size={report['size']} seed={report['seed']} with "
                             f"models {sorted(report['models'])}; expected the small build with seed 0 and every model "
                             "(python benchmarks/factworld.py build --out DIR --size small --seed 0)")
        return Path(prebuilt), report
    out = tmp_path_factory.mktemp("factworld_small")
    return out, build_world(out, size="small", seed=0)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_exist_in_lama_formats(factworld_small: tuple[Path, dict]) -> None:
    out, report = factworld_small
    world = World.load(out / "world.json")
    relations = _read_jsonl(out / "lama" / "relations.jsonl")
    assert len(relations) >= 6
    assert all(set(r) == {"relation", "template", "label", "description", "type"} for r in relations)
    assert all(r["type"] in ("1-1", "N-1", "N-M") for r in relations)
    for r in relations:
        rel = r["relation"]
        for split in SPLITS:
            records = _read_jsonl(out / "lama" / "trex" / "autoprompt_original_subobj" / rel / f"{split}.jsonl")
            assert records and all(set(x) == {"sub", "obj"} for x in records)
        for kind in ("lpaqa_paraphrase", "lpaqa_mined"):
            prompts = _read_jsonl(out / "lama" / "prompts" / kind / f"{rel}.jsonl")
            assert prompts and all(set(p) == {"template", "weight"} for p in prompts)
            assert all(p["template"].count("[X]") == 1 and p["template"].count("[Y]") == 1 for p in prompts)
        assert _read_jsonl(out / "lama" / "prompts" / "qin_eisner" / "trex" / f"{rel}.jsonl") == [
            {"template": r["template"]}
        ]
    top1 = _read_jsonl(out / "lama" / "prompts" / "lpaqa_top1" / "LPAQA_relations.jsonl")
    assert [p["relation"] for p in top1] == [r["relation"] for r in relations]
    vocab = (out / "lama" / "vocab" / "common_vocab_cased.txt").read_text().split("\n")[:-1]
    assert vocab == world.all_objects()
    types = [spec.object_type for spec in world.relations]
    assert any(types.count(t) >= 2 for t in set(types)), "objects of different relations must share a type"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))


def test_models_and_tokenizers_load_with_auto_classes(factworld_small: tuple[Path, dict]) -> None:
    out, _ = factworld_small
    for kind, auto in MODEL_CLASSES.items():
        tokenizer = AutoTokenizer.from_pretrained(out / kind)
        model = auto.from_pretrained(out / kind)
        assert model.config.vocab_size == len(tokenizer)
    assert AutoTokenizer.from_pretrained(out / "bert").mask_token == "[MASK]"
    assert AutoTokenizer.from_pretrained(out / "bart").mask_token == "<mask>"


def test_splits_have_disjoint_subjects(factworld_small: tuple[Path, dict]) -> None:
    out, _ = factworld_small
    world = World.load(out / "world.json")
    for spec in world.relations:
        subjects = {s: {f["sub"] for f in world.split(spec.relation, s)} for s in SPLITS}
        assert not subjects["train"] & subjects["dev"]
        assert not subjects["train"] & subjects["test"]
        assert not subjects["dev"] & subjects["test"]


def test_every_object_is_one_token_for_every_tokenizer(factworld_small: tuple[Path, dict]) -> None:
    out, _ = factworld_small
    world = World.load(out / "world.json")
    for kind in MODEL_CLASSES:
        tokenizer = AutoTokenizer.from_pretrained(out / kind)
        for name in world.all_objects():
            object_token_id(tokenizer, name)
            object_token_id(tokenizer, name, leading_space=False)
    bert = AutoTokenizer.from_pretrained(out / "bert")
    manual_words = {w for spec in world.relations for w in spec.manual.split() if w not in ("[X]", "[Y]")}
    assert bert.unk_token_id not in bert.convert_tokens_to_ids(sorted(manual_words)), "manual words must be known"


def test_manual_template_is_not_in_the_corpus(factworld_small: tuple[Path, dict]) -> None:
    out, _ = factworld_small
    world = World.load(out / "world.json")
    corpus = (out / "corpus.txt").read_text()
    for spec in world.relations:
        assert spec.manual not in spec.paraphrases
        pattern = re.escape(spec.manual).replace(re.escape("[X]"), r"\S+ \S+").replace(re.escape("[Y]"), r"\S+")
        assert not re.search(rf"^{pattern}$", corpus, flags=re.MULTILINE), spec.manual
        paraphrases = _read_jsonl(out / "lama" / "prompts" / "lpaqa_paraphrase" / f"{spec.relation}.jsonl")
        assert spec.manual not in {p["template"] for p in paraphrases}
        weights = [p["weight"] for p in paraphrases]
        assert weights == sorted(weights, reverse=True) and weights[0] > weights[-1], "template mix must be skewed"


def test_same_seed_same_world_and_corpus(factworld_small: tuple[Path, dict], tmp_path: Path) -> None:
    out, report = factworld_small
    again = build_world(tmp_path / "again", size="small", seed=0, models=())
    assert again["hashes"] == report["hashes"]
    files = ("lama/relations.jsonl", "lama/prompts/lpaqa_mined/P19.jsonl", "bert/tokenizer.json", "bart/tokenizer.json")
    for path in files:
        assert _digest(tmp_path / "again" / path) == _digest(out / path), path
    other = build_world(tmp_path / "other", size="small", seed=1, models=())
    assert other["hashes"]["corpus.txt"] != report["hashes"]["corpus.txt"]


#: SHA-256 of model.safetensors, built under PORTABLE_KERNELS with torch 2.13.0, per CPU: the bytes are the same
#: whatever the caller's kernel settings, but not on every CPU (an AMD EPYC and an Intel Xeon differ within one epoch).
#: "one_epoch": one epoch of the small preset, seed 0, ``workers=1``; "small": the full small build, seed 0
#: (``benchmarks/factworld.py build --size small --seed 0``). An entry matches a build whose report.json has this
#: ``machine.cpu.vendor`` and ``model_name`` (``None``: any model of the vendor, the model name was not recorded).
#: A CPU not listed here gets its hashes from those two builds, added with its vendor and model name.
RECORDED_WEIGHTS: tuple[dict, ...] = (
    {
        "vendor": "AuthenticAMD",
        "model_name": None,  # an AMD EPYC with AVX2 and no AVX-512, torch's own choice being AVX2 there
        "one_epoch": {
            "bert": "815ea83a119ab1b725a6823654cf3f9b2986882ec2e865b16f658cafca639c58",
            "gpt2": "a36d882bf42a1cec1b22938b1800477da85de4f925de12a45e75cf1025bb839f",
        },
        "small": {
            "bert": "98e5b443b3c8aa66bc13e0c1731c2b95d277f2528ea837e7e2fe5b07d23e19ae",
            "gpt2": "7410dd97e727d5a534de9fe846a12a22ace4c449051bb95480e69fa99e60214c",
            "bart": "13796402373480613ae344e117c1aca5d07ec1091fe6859003da1a262780b7b6",
        },
    },
    {
        "vendor": "GenuineIntel",
        "model_name": "Intel(R) Xeon(R) Processor",  # family 6 model 167 under KVM, AVX-512, L2 2048K, L3 491520K
        "one_epoch": {
            "bert": "b16864c76b4694f51f754f70c0eea2a9b462dac41c8b9dbe29ff93de50d03ec9",
            "gpt2": "87f1ea789e5eb3af0a5aed36e27649e370de4d153506ddd5833373fa5edeeaa4",
        },
        "small": {
            "bert": "aeecbb3c71f431f3a210d1b8fce9a933bf64953b20835b6267484731a8e0c277",
            "gpt2": "ca83df62ce479b6d5d8b9bf3aeae895a67a9b6e62dde53b855996be834f6ca55",
            "bart": "6bf82074d67ca88855c15f334c752546b5cb39d841d6a538b3a6b67b61087b9c",
        },
    },
)
ODD_KERNEL_SETTINGS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "DEFAULT"}
"""What a caller might set: torch's non-vectorised kernels (other weights when they reach the training), MKL's AVX2
branch and oneDNN's widest instruction set."""


def _one_epoch_build(out: Path) -> dict:
    config = dataclasses.replace(with_epochs(SIZES["small"], 1), workers=1)
    return build_world(out, seed=0, config=config, models=("bert", "gpt2"))


@pytest.fixture(scope="module")
def one_epoch_under_odd_settings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One epoch of BERT and GPT-2 built with the caller's environment asking for other kernels."""
    out = tmp_path_factory.mktemp("one_epoch_odd")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ODD_KERNEL_SETTINGS.items():
            patch.setenv(name, value)
        return out, _one_epoch_build(out)


def _skip_without_avx2(report: dict) -> None:
    used = report["machine"]["kernels"]["aten_cpu_capability_used"]
    if used != ["AVX2"]:
        pytest.skip(f"the recorded weight hashes are those of torch's AVX2 kernels; this CPU ran {used}")


def _recorded_weights(report: dict, build: str) -> dict[str, str]:
    """The hashes recorded for ``build`` on the CPU that made ``report``'s weights; skip if that CPU has none."""
    _skip_without_avx2(report)
    cpu = report["machine"].get("cpu")
    if cpu is None:
        pytest.skip("this build's report.json does not say which CPU computed its weights (an older version built "
                    "it); rebuild it to compare its weights with the recorded hashes")
    for entry in RECORDED_WEIGHTS:
        if cpu["vendor"] == entry["vendor"] and entry["model_name"] in (None, cpu["model_name"]):
            return entry[build]
    pytest.skip(f"no weight hashes are recorded for the CPU {cpu['vendor']} {cpu['model_name']!r} (family "
                f"{cpu['family']}, model {cpu['model']}, caches {cpu['caches']}); weights differ between CPUs, so add "
                "its hashes of the one-epoch and the small build to RECORDED_WEIGHTS in tests/test_factworld.py")


def _weights(out: Path, kinds: Iterable[str]) -> dict[str, str]:
    return {kind: _digest(out / kind / "model.safetensors") for kind in kinds}


def test_weights_do_not_depend_on_the_callers_kernel_settings(
    one_epoch_under_odd_settings: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training processes force one kernel path whatever the caller's environment asks for: a build under
    ODD_KERNEL_SETTINGS and one under a plain environment give the same bytes, on any machine."""
    odd, report = one_epoch_under_odd_settings
    assert {k: v for k, v in report["machine"]["kernels"].items() if k in PORTABLE_KERNELS} == PORTABLE_KERNELS
    assert set(report["models"]) == {"bert", "gpt2"} and not (odd / "bart" / "model.safetensors").exists()
    assert report["machine"]["cpu"] == cpu_identity() and report["machine"]["cpu"]["vendor"]
    for name in PORTABLE_KERNELS:
        monkeypatch.delenv(name, raising=False)
    _one_epoch_build(tmp_path)
    assert _weights(tmp_path, ("bert", "gpt2")) == _weights(odd, ("bert", "gpt2"))


def test_one_epoch_weights_match_the_hashes_recorded_on_this_cpu(
    one_epoch_under_odd_settings: tuple[Path, dict],
) -> None:
    out, report = one_epoch_under_odd_settings
    recorded = _recorded_weights(report, "one_epoch")
    assert _weights(out, recorded) == recorded


def test_small_build_weights_match_the_hashes_recorded_on_its_cpu(factworld_small: tuple[Path, dict]) -> None:
    out, report = factworld_small
    recorded = _recorded_weights(report, "small")
    assert _weights(out, recorded) == recorded


def test_masked_lm_memorised_the_facts_but_not_the_manual_wording(factworld_small: tuple[Path, dict]) -> None:
    _, report = factworld_small
    scores = report["models"]["bert"]["p_at_1"]
    assert scores["top_paraphrase"]["train"]["type"]["macro"] >= 0.9
    assert scores["manual"]["test"]["type"]["macro"] <= 0.5
    assert report["targets"]["memorisation"]["met"] and report["targets"]["manual"]["met"]


def test_causal_and_seq2seq_models_know_the_facts(factworld_small: tuple[Path, dict]) -> None:
    _, report = factworld_small
    for kind in ("gpt2", "bart"):
        assert report["models"][kind]["p_at_1"]["top_paraphrase"]["train"]["type"]["macro"] >= 0.8, kind


def test_saved_masked_lm_reproduces_the_reported_score(factworld_small: tuple[Path, dict]) -> None:
    out, report = factworld_small
    world = World.load(out / "world.json")
    tokenizer = AutoTokenizer.from_pretrained(out / "bert")
    model = AutoModelForMaskedLM.from_pretrained(out / "bert").eval()
    spec = world.relations[0]
    facts = world.split(spec.relation, "train")
    names = world.objects_of_type(spec.object_type)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(n) for n in names])
    texts = [spec.paraphrases[0].replace("[X]", f["sub"]).replace("[Y]", tokenizer.mask_token) for f in facts]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    rows = torch.arange(len(facts))
    mask_pos = (enc["input_ids"] == tokenizer.mask_token_id).int().argmax(1)
    predicted = logits[rows, mask_pos][:, ids].argmax(1).tolist()
    p_at_1 = sum(names[i] == f["obj"] for i, f in zip(predicted, facts, strict=True)) / len(facts)
    reported = report["models"]["bert"]["p_at_1"]["top_paraphrase"]["train"]["type"]["per_relation"][spec.relation]
    assert p_at_1 == pytest.approx(reported)


def _macro_p_at_1(world: Path, config_for: Callable[[str], PromptConfig], settings: TrainSettings | None) -> float:
    """Macro P@1 on the test split over all objects, after tuning on train (early stopping on dev) if settings."""
    tokenizer = AutoTokenizer.from_pretrained(world / "bert")
    base = AutoModelForMaskedLM.from_pretrained(world / "bert").eval()
    candidates = tokenizer.convert_tokens_to_ids(World.load(world / "world.json").all_objects())
    scores = []
    for relation in _read_jsonl(world / "lama" / "relations.jsonl"):
        facts = {s: _read_jsonl(world / "lama" / "trex" / "autoprompt_original_subobj" / relation["relation"]
                                / f"{s}.jsonl") for s in SPLITS}
        torch.manual_seed(0)
        model = get_peft_model(base, config_for(relation["template"]))
        collate = PromptCollator(tokenizer, model, candidate_ids=candidates)
        if settings is not None:
            fit(model, collate, facts["train"], facts["dev"], settings, progress=False)
        scores.append(precision_at_1(rank_answers(model, collate, facts["test"])))
        base = model.unload()
    return sum(scores) / len(scores)


def test_tuned_prompts_beat_the_manual_prompt_on_held_out_facts(factworld_small: tuple[Path, dict]) -> None:
    """The project's regression test that the methods extract what the frozen model knows, not only that they run."""
    out, report = factworld_small
    tokenizer = AutoTokenizer.from_pretrained(out / "bert")

    def manual(template: str) -> MixturePromptConfig:
        return MixturePromptConfig(templates=[template], words="hard", learn_weights=False, tokenizer=tokenizer)

    def soft(template: str) -> MixturePromptConfig:
        return MixturePromptConfig(templates=[template], tokenizer=tokenizer)

    def ptuning(template: str) -> PTuningEncoderConfig:
        return PTuningEncoderConfig(templates=["[P*3] [X] [P*3] [Y] [P*3]"], tokenizer=tokenizer)

    manual_p1 = _macro_p_at_1(out, manual, None)
    assert manual_p1 == pytest.approx(report["models"]["bert"]["p_at_1"]["manual"]["test"]["all"]["macro"])
    soft_p1 = _macro_p_at_1(out, soft, TrainSettings(epochs=30, learning_rate=1e-2, patience=6, seed=42))
    ptuning_p1 = _macro_p_at_1(out, ptuning, TrainSettings(epochs=40, learning_rate=1e-3, patience=8, seed=34))
    assert manual_p1 <= 0.5
    assert soft_p1 >= manual_p1 + 0.3, (manual_p1, soft_p1)
    assert ptuning_p1 >= manual_p1 + 0.3, (manual_p1, ptuning_p1)


def test_promptgen_probe_measures_the_pristine_generator_and_the_prompt_space(
    factworld_small: tuple[Path, dict],
) -> None:
    """benchmarks/promptgen_probe.py (docs/promptgen.md, "What limits PromptGen"): both reports on the small world."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import promptgen_probe

    world, _ = factworld_small
    report = promptgen_probe.main(["prompts", "--world", str(world), "--stopping", "fixed", "--show", "1"])
    for split in ("train", "test"):
        assert set(report[split]) == {"macro P@1", "None P@1"}
        assert all(0 <= value <= 100 for value in report[split].values())
    # stopping="fixed" writes every soft token: m = 10 before the answer slot and n = 5 after it
    assert report["soft tokens"]["mean segment lengths"] == [10.0, 5.0]
    assert 0 < report["soft tokens"]["median max probability"] <= 1
    assert report["prompts"] and all("[MASK]" in line for line in report["prompts"])

    relation = json.loads((world / "world.json").read_text())["relations"][0]
    hull = promptgen_probe.main(["hull", "--world", str(world), "--relations", relation["relation"],
                                 "--lengths", "2+1", "--steps", "3"])[relation["relation"]]
    assert hull[relation["manual"]] >= 0
    learned = hull["learned, 2 + 1 soft tokens"]
    assert 0 <= learned["P@1"] <= 100
    assert len(learned["argmax words"].split()) == 3
