"""Bad input is refused at the door: every case asserts the exception type and that the message names the bad value
and what was expected.

Cases cover config fields (wrong types, out-of-range values), training settings, collator construction (tokenizer,
candidates, max_length, template words), every kind of collator input (blank / None / NaN / non-text fields,
special-token text, unknown or multi-token answers, duplicate choices, malformed examples), attaching an adapter to a
model it does not fit, and loading damaged or mismatched adapter files.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from prompt_adapters import (
    DeepPerturbConfig,
    MixturePromptConfig,
    PromptCollator,
    PromptGenConfig,
    PTuningEncoderConfig,
)
from prompt_adapters.adapter_files import AdapterFileError
from prompt_adapters.run_dir import CheckpointStore
from prompt_adapters.testing import build_tiny_model, build_tokenizer, save_tiny_model
from prompt_adapters.training import TrainSettings, fit

TEMPLATE = "[X] was born in [Y] ."


@dataclass(frozen=True)
class Case:
    """One bad input: what to call, the exception it must raise and the fragments its message must hold."""

    make: Callable[[], Any]
    error: type[BaseException]
    bad: str  # the bad value as the message shows it
    expected: str  # what the message says was expected


# ------------------------------------------------------------------------------------------------ shared objects


@functools.cache
def bert_tokenizer() -> Any:
    return build_tokenizer("bert")


@functools.cache
def gpt2_tokenizer() -> Any:
    tokenizer = build_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.cache
def adapted_bert() -> Any:
    """A tiny BERT with a one-template mixture adapter (shared by the collator cases, which do not change it)."""
    base, tokenizer = build_tiny_model("bert")
    return get_peft_model(base, MixturePromptConfig(templates=[TEMPLATE], tokenizer=tokenizer))


def padless_gpt2() -> Any:
    tokenizer = build_tokenizer("gpt2")
    tokenizer.pad_token = None
    return tokenizer


def collate(*examples: Any, **options: Any) -> Any:
    return PromptCollator(bert_tokenizer(), adapted_bert(), **options)(list(examples))


def attach(config: Any, family: str = "bert") -> Any:
    base, _ = build_tiny_model(family)
    return get_peft_model(base, config)


@functools.cache
def bert_dir(root: str) -> Path:
    return save_tiny_model("bert", Path(root) / "bert")


def saved_adapter(root: Path, damage: Callable[[Path], None], config_cls: type = DeepPerturbConfig) -> Path:
    """A deep adapter saved under ``root`` and then damaged by ``damage(directory)``."""
    base_dir = bert_dir(str(root.parent))
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(base_dir),
                           config_cls(templates=[TEMPLATE], tokenizer=AutoTokenizer.from_pretrained(base_dir)))
    model.save_pretrained(root)
    damage(root)
    return root


def load_damaged(tmp: Path, damage: Callable[[Path], None], config_cls: type = DeepPerturbConfig) -> Any:
    directory = saved_adapter(tmp / "adapter", damage, config_cls)
    return PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(bert_dir(str(tmp))), directory)


def edit_tensors(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        tensors = load_file(str(directory / "adapter_model.safetensors"))
        edit(tensors)
        save_file(tensors, str(directory / "adapter_model.safetensors"))

    return damage


def edit_config(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        config = json.loads((directory / "adapter_config.json").read_text())
        edit(config)
        (directory / "adapter_config.json").write_text(json.dumps(config))

    return damage


def truncate(name: str, keep: int) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: keep if keep >= 0 else len(data) + keep])

    return damage


def to_pickle(directory: Path) -> None:
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    torch.save(tensors, directory / "adapter_model.bin")
    (directory / "adapter_model.safetensors").unlink()


class RunsCode:
    """Unpickling this creates the file ``marker``: what a malicious pickle would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return Path.touch, (self.marker,)


def to_code_pickle(directory: Path) -> None:
    """Replace the weights with a pickle that would run code (touch ``directory/unpickled``) if unpickled."""
    to_pickle(directory)
    tensors = torch.load(directory / "adapter_model.bin", weights_only=True)
    torch.save({**tensors, "payload": RunsCode(directory / "unpickled")}, directory / "adapter_model.bin")


def misspell_type(config: dict[str, Any]) -> None:
    config["peft_type"] = "MIXTURE_PROMTP"


def poison(tensors: dict[str, torch.Tensor]) -> None:
    key = next(k for k in tensors if k.endswith("table"))
    tensors[key][0, 0] = float("nan")


def drop_deltas(tensors: dict[str, torch.Tensor]) -> None:
    del tensors[next(k for k in tensors if k.endswith("deltas"))]


def add_extra(tensors: dict[str, torch.Tensor]) -> None:
    tensors["base_model.deepprompt_state.extra"] = torch.zeros(2)


def two_fields_pair() -> Any:
    model = attach(MixturePromptConfig(templates=["[A] and [B] gives [Y] ."], tokenizer=bert_tokenizer()))
    return PromptCollator(bert_tokenizer(), model)([("x", "y")])


@functools.cache
def answer_only_bert() -> Any:
    """A tiny BERT with a template that reads no input field, only [Y]."""
    return attach(MixturePromptConfig(templates=["[P*3] [Y] ."], tokenizer=bert_tokenizer()))


def many(*examples: Any) -> Any:
    return collate(*examples, answers="many")


# ------------------------------------------------------------------------------------------------ the cases

T = [TEMPLATE]
NAN = float("nan")

CASES: dict[str, Case | Callable[[Path], Case]] = {
    # config field types and values
    "learn_weights_string": Case(lambda: MixturePromptConfig(templates=T, learn_weights="no"), TypeError, "'no'",
                                 "a bool"),
    "learn_weights_none": Case(lambda: MixturePromptConfig(templates=T, learn_weights=None), TypeError, "None",
                               "a bool"),
    "data_dependent_int": Case(lambda: MixturePromptConfig(templates=T, data_dependent=1), TypeError, "got 1",
                               "a bool"),
    "max_length_string": Case(lambda: MixturePromptConfig(templates=T, max_length="128"), TypeError, "'128'",
                              "an int"),
    "max_length_float": Case(lambda: MixturePromptConfig(templates=T, max_length=12.5), TypeError, "12.5", "an int"),
    "max_length_zero": Case(lambda: MixturePromptConfig(templates=T, max_length=0), ValueError, "got 0", ">= 1"),
    "max_length_bool": Case(lambda: MixturePromptConfig(templates=T, max_length=True), TypeError, "True", "an int"),
    "templates_of_ints": Case(lambda: MixturePromptConfig(templates=[1, 2]), TypeError, "[1, 2]",
                              "a list of strings"),
    "templates_none": Case(lambda: MixturePromptConfig(templates=None), TypeError, "None", "a list of strings"),
    "templates_dict": Case(lambda: MixturePromptConfig(templates={"a": TEMPLATE}), TypeError, "{'a':",
                           "a list of strings"),
    "words_unknown": Case(lambda: MixturePromptConfig(templates=T, words="medium"), ValueError, "'medium'",
                          "'soft' or 'hard'"),
    "init_unknown": Case(lambda: MixturePromptConfig(templates=T, init="zeros"), ValueError, "'zeros'", "one of"),
    "lm_kind_unknown": Case(lambda: MixturePromptConfig(templates=T, lm_kind="encoder"), ValueError, "'encoder'",
                            "one of"),
    "tokenizer_path_int": Case(lambda: MixturePromptConfig(templates=T, tokenizer_name_or_path=5), TypeError,
                               "got 5", "a string"),
    "deep_layers_empty": Case(lambda: DeepPerturbConfig(templates=T, layers=[]), ValueError, "layers=[]",
                              "expected depths such as"),
    "deep_layers_negative": Case(lambda: DeepPerturbConfig(templates=T, layers=[-1]), ValueError, "[-1]", ">= 0"),
    "deep_layers_string": Case(lambda: DeepPerturbConfig(templates=T, layers="0,1"), TypeError, "'0,1'",
                               "a list of ints"),
    "deep_layers_float": Case(lambda: DeepPerturbConfig(templates=T, layers=[1.5]), TypeError, "[1.5]",
                              "a list of ints"),
    "ptuning_encoder_unknown": Case(lambda: PTuningEncoderConfig(encoder="gru"), ValueError, "'gru'", "one of"),
    "ptuning_lstm_layers_zero": Case(lambda: PTuningEncoderConfig(lstm_layers=0), ValueError, "got 0", ">= 1"),
    "ptuning_lstm_layers_string": Case(lambda: PTuningEncoderConfig(lstm_layers="2"), TypeError, "'2'", "an int"),
    "ptuning_dropout_above_one": Case(lambda: PTuningEncoderConfig(lstm_dropout=1.5), ValueError, "1.5", "[0, 1)"),
    "ptuning_embed_size_zero": Case(lambda: PTuningEncoderConfig(embed_size=0), ValueError, "got 0",
                                    "positive size"),
    "ptuning_embed_size_bool": Case(lambda: PTuningEncoderConfig(embed_size=True), TypeError, "True", "an int"),
    "promptgen_num_before_negative": Case(lambda: PromptGenConfig(generator_name_or_path="g", num_before=-1),
                                          ValueError, "num_before=-1", ">= 0"),
    "promptgen_num_before_string": Case(lambda: PromptGenConfig(generator_name_or_path="g", num_before="10"),
                                        TypeError, "'10'", "an int"),
    "promptgen_leak_penalty_nan": Case(lambda: PromptGenConfig(generator_name_or_path="g", leak_penalty=NAN),
                                       ValueError, "nan", "finite number >= 0"),
    "promptgen_leak_penalty_string": Case(lambda: PromptGenConfig(generator_name_or_path="g", leak_penalty="0.3"),
                                          TypeError, "'0.3'", "a number"),
    "promptgen_stopping_unknown": Case(lambda: PromptGenConfig(generator_name_or_path="g", stopping="early"),
                                       ValueError, "'early'", "one of"),
    "promptgen_leak_form_unknown": Case(lambda: PromptGenConfig(generator_name_or_path="g", leak_form="x"),
                                        ValueError, "'x'", "one of"),
    # training settings
    "settings_epochs_string": Case(lambda: TrainSettings(epochs="16"), TypeError, "'16'", "an int"),
    "settings_lr_string": Case(lambda: TrainSettings(learning_rate="1e-3"), TypeError, "'1e-3'", "a number"),
    "settings_lr_negative": Case(lambda: TrainSettings(learning_rate=-1.0), ValueError, "-1.0", "finite number"),
    "settings_lr_infinite": Case(lambda: TrainSettings(learning_rate=math.inf), ValueError, "inf", "finite number"),
    "settings_batch_zero": Case(lambda: TrainSettings(batch_size=0), ValueError, "got 0", ">= 1"),
    "settings_optimizer_unknown": Case(lambda: TrainSettings(optimizer="sgd"), ValueError, "'sgd'",
                                       "'adam' or 'adamw'"),
    "settings_schedule_unknown": Case(lambda: TrainSettings(schedule="cosine"), ValueError, "'cosine'",
                                      "'exponential' or 'linear'"),
    "settings_warmup_negative": Case(lambda: TrainSettings(warmup_ratio=-0.1), ValueError, "-0.1",
                                     "finite number >= 0"),
    "settings_em_string": Case(lambda: TrainSettings(em="yes"), TypeError, "'yes'", "a bool"),
    "fit_without_examples": Case(lambda: fit(adapted_bert(), PromptCollator(bert_tokenizer(), adapted_bert()), [],
                                             [], TrainSettings(), progress=False), ValueError, "no training examples",
                                 "examples"),
    # collator construction
    "collator_answers_unknown": Case(lambda: collate(("Dante", "Florence"), answers="some"), ValueError, "'some'",
                                     "'one'"),
    "collator_pad_answer_unknown": Case(lambda: collate(("Dante", "Florence"), pad_answer="zero"), ValueError,
                                        "'zero'", "'ignore' or 'pad'"),
    "collator_max_length_string": Case(lambda: collate(("Dante", "Florence"), max_length="64"), TypeError, "'64'",
                                       "an int >= 1"),
    "collator_max_length_too_long": Case(lambda: collate(("Dante", "Florence"), max_length=10_000), ValueError,
                                         "max_length=10000", "max_length <= 128"),
    "collator_candidates_repeat": Case(lambda: collate(("Dante", "Florence"), candidate_ids=[5, 5, 7]), ValueError,
                                       "repeat [5]", "distinct ids"),
    "collator_candidates_outside": Case(lambda: collate(("Dante", "Florence"), candidate_ids=[3, 10**6]),
                                        ValueError, "[1000000]", "token ids of this model"),
    "collator_candidates_empty": Case(lambda: collate(("Dante", "Florence"), candidate_ids=[]), ValueError,
                                      "shape (0,)", "non-empty"),
    "collator_unknown_adapter": Case(lambda: collate(("Dante", "Florence"), adapter_name="nope"), ValueError,
                                     "'nope'", "available"),
    "collator_other_tokenizer": Case(lambda: PromptCollator(gpt2_tokenizer(), adapted_bert()), ValueError,
                                     f"of {len(gpt2_tokenizer())} tokens", "Expected the tokenizer"),
    "collator_no_pad_token": Case(lambda: PromptCollator(padless_gpt2(), attach(MixturePromptConfig(
        templates=["[X] was born in [Y]"], tokenizer=padless_gpt2()), "gpt2")), ValueError, "no pad token",
        "set one first"),
    "collator_unknown_template_word": Case(lambda: PromptCollator(bert_tokenizer(), attach(MixturePromptConfig(
        templates=["[X] Ωmega [Y] ."], words="hard", tokenizer=bert_tokenizer()))), ValueError, "['Ωmega']",
        "expected words in its vocabulary"),
    "collator_plain_model": Case(lambda: PromptCollator(bert_tokenizer(), build_tiny_model("bert")[0]), TypeError,
                                 "BertForMaskedLM", "expected a PeftModel"),
    # collator inputs: fields
    "field_empty": Case(lambda: collate({"sub": "", "obj": "Florence"}), ValueError, "got ''", "non-empty string"),
    "field_blank": Case(lambda: collate({"sub": "   ", "obj": "Florence"}), ValueError, "got '   '",
                        "non-empty string"),
    "field_none": Case(lambda: collate({"sub": None, "obj": "Florence"}), TypeError, "got None", "non-empty string"),
    "field_nan": Case(lambda: collate({"sub": NAN, "obj": "Florence"}), TypeError, "got nan", "missing value"),
    "field_int": Case(lambda: collate(("1984", "Florence"), (42, "Florence")), TypeError, "got 42",
                      "non-empty string"),
    "field_mask_token": Case(lambda: collate(("[MASK] Dante", "Florence")), ValueError, "'[MASK] Dante'",
                             "expected plain text"),
    "field_sep_token": Case(lambda: collate(("Dante [SEP]", "Florence")), ValueError, "['[SEP]']",
                            "expected plain text"),
    "field_endoftext_gpt2": Case(lambda: PromptCollator(gpt2_tokenizer(), attach(MixturePromptConfig(
        templates=["[X] was born in [Y]"], tokenizer=gpt2_tokenizer()), "gpt2"))([("Dante<|endoftext|>", "Paris")]),
        ValueError, "'Dante<|endoftext|>'", "expected plain text"),
    "field_missing_key": Case(lambda: collate({"obj": "Florence"}), KeyError, "['X', 'sub', 'sub_label', 'subject']",
                              "none of the keys"),
    # collator inputs: answers
    "answer_unknown_token": Case(lambda: collate(("Dante", "Ωmega")), ValueError, "'Ωmega'",
                                 "expected text this tokenizer knows"),
    "answer_empty": Case(lambda: collate(("Dante", "")), ValueError, "got ''", "non-empty string"),
    "answer_nan": Case(lambda: collate({"sub": "Dante", "obj": NAN}), TypeError, "got nan", "missing value"),
    "answer_int": Case(lambda: collate(("Dante", 7)), TypeError, "got 7", "non-empty string"),
    "answer_special_token": Case(lambda: collate(("Dante", "[MASK]")), ValueError, "'[MASK]'",
                                 "expected plain text"),
    "answer_two_tokens": Case(lambda: collate(("Dante", "Florence London")), ValueError, "'Florence London'",
                              "one token is required"),
    "many_answers_all_unknown": Case(lambda: many(("Dante", "Ωmega")), ValueError, "'Ωmega'",
                                     "expected text this tokenizer knows"),
    # collator inputs: examples, choices, batches
    "example_number": Case(lambda: collate(5), TypeError, "got 5", "(input, answer) pair"),
    "example_triple": Case(lambda: collate(("a", "b", "c")), TypeError, "('a', 'b', 'c')", "(input, answer) pair"),
    "example_pair_two_fields": Case(two_fields_pair, ValueError, "2 fields ['A', 'B']", "pass dicts keyed by field"),
    "answers_all_none": Case(lambda: collate(("Dante", None), {"sub": "Newton", "obj": None}), ValueError,
                             "every answer of the batch is None (2 example(s), e.g. ('Dante', None))",
                             "expected answer text"),
    "answers_all_none_mixed_adapters": Case(lambda: collate({"sub": "Dante", "obj": None, "adapter": "default"}),
                                            ValueError, "every answer of the batch is None", "expected answer text"),
    "template_without_fields_given_an_input": Case(
        lambda: PromptCollator(bert_tokenizer(), answer_only_bert())([(None, "Florence")]), ValueError,
        "example (None, 'Florence') gives the input None", "expected a dict holding the answer alone"),
    "inputs_text_for_template_without_fields": Case(
        lambda: PromptCollator(bert_tokenizer(), answer_only_bert()).inputs("Dante"), ValueError,
        "input 'Dante' is one text, but the templates read 0 fields []", "pass dicts keyed by field name ({}"),
    "batch_empty": Case(lambda: PromptCollator(bert_tokenizer(), adapted_bert())([]), ValueError, "empty list",
                        "examples"),
    "choices_repeat": Case(lambda: many({"X": "Dante", "choices": ["Rome", "Rome"], "label": 0}), ValueError,
                           "repeat ['Rome']", "distinct choices"),
    "choice_label_out_of_range": Case(lambda: many({"X": "Dante", "choices": ["Rome", "London"], "label": 5}),
                                      ValueError, "label 5", "index into choices"),
    "choice_label_string": Case(lambda: many({"X": "Dante", "choices": ["Rome", "London"], "label": "1"}),
                                TypeError, "'1'", "an int index"),
    "choice_none_subject": Case(lambda: many({"X": None, "choices": ["Rome", "London"], "label": 0}), TypeError,
                                "got None", "non-empty string"),
    # adapters that do not fit the model they are attached to
    "lm_kind_inconsistent": Case(lambda: attach(MixturePromptConfig(templates=T, lm_kind="causal",
                                                                    tokenizer=bert_tokenizer())),
                                 ValueError, "lm_kind='causal'", "expected lm_kind='masked'"),
    "templates_of_another_tokenizer": Case(lambda: attach(MixturePromptConfig(
        templates=["[X] was born in Stockholm , [Y] ."], words="hard", tokenizer=build_tokenizer("roberta"))),
        ValueError, "beyond this model's vocabulary", "compiled with this model's tokenizer"),
    "checkpoint_missing_file": Case(lambda: CheckpointStore(Path("unused")).save({"meta.json": b"{}"}), ValueError,
                                    "['state.safetensors'] not given", "a checkpoint needs the files"),
    # adapter files (each makes its own damaged copy)
    "load_pickle_running_code": lambda tmp: Case(lambda: load_damaged(tmp, to_code_pickle), AdapterFileError,
                                                 "adapter_model.bin holds objects other than tensors",
                                                 "Expected the tensors save_pretrained(safe_serialization=False)"),
    "load_truncated_pickle": lambda tmp: Case(
        lambda: load_damaged(tmp, lambda d: (to_pickle(d), truncate("adapter_model.bin", -20)(d))), AdapterFileError,
        str(tmp / "adapter" / "adapter_model.bin"), "truncated or corrupt"),
    "load_no_weights": lambda tmp: Case(
        lambda: load_damaged(tmp, lambda d: (d / "adapter_model.safetensors").unlink()), AdapterFileError,
        str(tmp / "adapter" / "adapter_model.safetensors"), "or adapter_model.bin with safe_serialization=False"),
    "load_peft_type_lora": lambda tmp: Case(
        lambda: load_damaged(tmp, edit_config(lambda c: c.update(peft_type="LORA"))), AdapterFileError,
        "peft_type 'LORA'", "expected one of the prompt-adapters types ['MIXTURE_PROMPT', 'DEEP_PERTURB'"),
    "load_peft_type_missing": lambda tmp: Case(
        lambda: load_damaged(tmp, edit_config(lambda c: c.pop("peft_type"))), AdapterFileError, "peft_type None",
        "expected one of the prompt-adapters types"),
    "load_peft_type_misspelt": lambda tmp: Case(lambda: load_damaged(tmp, edit_config(misspell_type)),
                                                AdapterFileError, "peft_type 'MIXTURE_PROMTP'",
                                                "did you mean 'MIXTURE_PROMPT'?"),
    "load_truncated_weights": lambda tmp: Case(
        lambda: load_damaged(tmp, truncate("adapter_model.safetensors", -20)), AdapterFileError,
        str(tmp / "adapter" / "adapter_model.safetensors"), "truncated or corrupt"),
    "load_truncated_config": lambda tmp: Case(lambda: load_damaged(tmp, truncate("adapter_config.json", 30)),
                                              AdapterFileError, str(tmp / "adapter" / "adapter_config.json"),
                                              "not valid JSON"),
    "load_nan_tensor": lambda tmp: Case(lambda: load_damaged(tmp, edit_tensors(poison)), AdapterFileError,
                                        "tensor ", "expected finite weights"),
    "load_missing_tensor": lambda tmp: Case(lambda: load_damaged(tmp, edit_tensors(drop_deltas)), AdapterFileError,
                                            "deltas", "lacks tensor"),
    "load_unexpected_tensor": lambda tmp: Case(lambda: load_damaged(tmp, edit_tensors(add_extra)), AdapterFileError,
                                               "extra", "does not have"),
    "load_wrong_peft_type": lambda tmp: Case(
        lambda: load_damaged(tmp, edit_config(lambda c: c.update(peft_type="MIXTURE_PROMPT"))), AdapterFileError,
        "MIXTURE_PROMPT", "check its peft_type"),
    "load_other_model_type": lambda tmp: Case(
        lambda: load_damaged(tmp, edit_config(lambda c: c["model_fingerprint"].update(model_type="roberta"))),
        ValueError, "'roberta' model", "load it on a 'roberta' base model"),
    "load_other_tokenizer": lambda tmp: Case(
        lambda: load_damaged(tmp, edit_config(lambda c: c["tokenizer_fingerprint"].update(hash="0123456789abcdef"))),
        ValueError, "hash 0123456789abcdef", "Expected the tokenizer"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_naming_the_value_and_what_was_expected(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    if not isinstance(case, Case):
        case = case(tmp_path)
    with pytest.raises(case.error) as caught:
        case.make()
    message = str(caught.value)
    assert case.bad in message, f"{name}: the message does not name the bad value {case.bad!r}: {message}"
    assert case.expected in message, f"{name}: the message does not say {case.expected!r}: {message}"


def test_there_are_at_least_sixty_distinct_cases() -> None:
    assert len(CASES) >= 60


def test_good_inputs_still_pass_every_check() -> None:
    """The same objects with good values: the checks refuse only what is bad."""
    batch = collate(("Dante", "Florence"), {"sub": "Newton", "obj": "London"}, ("Goethe",))
    assert batch["input_ids"].shape[0] == 3
    assert many({"X": "Dante", "choices": ["Rome", "London"], "label": 1})["choice_labels"].tolist() == [1]
    assert MixturePromptConfig(templates=T, max_length=64, learn_weights=False).max_length == 64
    assert DeepPerturbConfig(templates=T, layers=[2, 0, 0]).layers == [0, 2]
    assert PromptCollator(bert_tokenizer(), adapted_bert()).max_length == 128  # the model's positions


def adapter_tensors(model: Any) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.base_model.state.named_parameters()}


def test_an_adapter_saved_as_a_pickle_loads_as_peft_loads_it(tmp_path: Path) -> None:
    """save_pretrained(safe_serialization=False) writes adapter_model.bin; it loads (weights only), same tensors."""
    base_dir = bert_dir(str(tmp_path))
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(base_dir),
                           DeepPerturbConfig(templates=[TEMPLATE], tokenizer=AutoTokenizer.from_pretrained(base_dir)))
    with torch.no_grad():
        for param in model.base_model.state.parameters():
            param.add_(torch.randn_like(param))
    model.save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir() if p.name.startswith("adapter_model")) == [
        "adapter_model.bin"]
    loaded = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base_dir), tmp_path / "adapter")
    expected, found = adapter_tensors(model), adapter_tensors(loaded)
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(found[name], tensor, rtol=0, atol=0)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match="holds objects other than tensors"):
        load_damaged(tmp_path, to_code_pickle)
    directory = tmp_path / "adapter"
    assert (directory / "adapter_model.bin").is_file() and not (directory / "unpickled").exists()


@pytest.mark.parametrize("load", ["PeftConfig", "AutoPeftModel"])
def test_a_misspelt_peft_type_is_named_by_every_loader(load: str, tmp_path: Path) -> None:
    """peft's own loaders look the type up first (a bare KeyError); they name it too."""
    from peft import AutoPeftModel, PeftConfig

    directory = saved_adapter(tmp_path / "adapter", edit_config(misspell_type))
    loader = PeftConfig.from_pretrained if load == "PeftConfig" else AutoPeftModel.from_pretrained
    with pytest.raises(AdapterFileError, match=r"peft_type 'MIXTURE_PROMTP'.*did you mean 'MIXTURE_PROMPT'\?"):
        loader(str(directory))


def test_other_peft_methods_still_load(tmp_path: Path) -> None:
    """The peft_type check refuses prompt adapters under another type, not peft's own methods."""
    from peft import LoraConfig

    base_dir = bert_dir(str(tmp_path))
    lora = get_peft_model(AutoModelForMaskedLM.from_pretrained(base_dir), LoraConfig(target_modules=["query"]))
    lora.save_pretrained(tmp_path / "lora")
    loaded = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base_dir), tmp_path / "lora")
    assert loaded.peft_config["default"].peft_type == "LORA"
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(tmp_path / "lora")).peft_type == "LORA"


def test_batches_with_some_or_no_answers_still_work() -> None:
    """Refused is only a batch whose every answer is None: prediction inputs and partly answered batches pass."""
    model = adapted_bert()
    assert model(**collate(("Dante",), {"sub": "Newton"})).loss is None  # prediction: HF's no-label convention
    partly = model(**collate(("Dante", None), ("Newton", "London")))
    alone = model(**collate(("Newton", "London")))
    torch.testing.assert_close(partly.loss, alone.loss)  # the unanswered example is scored, not in the loss
    assert partly.answer_log_probs.shape[0] == 2
    only_answer = PromptCollator(bert_tokenizer(), answer_only_bert())([{"obj": "Florence"}])
    assert answer_only_bert()(**only_answer).loss.requires_grad
    assert PromptCollator(bert_tokenizer(), answer_only_bert()).inputs({})["input_ids"].shape[0] == 1


def test_a_hub_adapter_saved_as_a_pickle_loads_weights_only(tmp_path: Path) -> None:
    """Over real HTTP to a local fake hub: a repo holding only adapter_model.bin loads; one whose pickle would run
    code is refused, naming the file, and the code does not run."""
    from fakehub import FakeHub
    from huggingface_hub import HfApi

    directory = saved_adapter(tmp_path / "adapter", to_pickle)
    code = saved_adapter(tmp_path / "code" / "adapter", to_code_pickle)
    with FakeHub() as hub, hub.patch_client(tmp_path / "hf_home"):
        api = HfApi()
        for repo, folder in (("me/pickled", directory), ("me/code", code)):
            api.create_repo(repo)
            api.upload_folder(folder_path=str(folder), repo_id=repo)
        assert "adapter_model.bin" in hub.files("me/pickled")
        assert "adapter_model.safetensors" not in hub.files("me/pickled")
        loaded = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(bert_dir(str(tmp_path))), "me/pickled")
        with pytest.raises(AdapterFileError) as caught:
            PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(bert_dir(str(tmp_path))), "me/code")
    saved = torch.load(directory / "adapter_model.bin", weights_only=True)
    found = get_peft_model_state_dict(loaded)
    assert found.keys() == saved.keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(found[name], tensor, rtol=0, atol=0)
    assert "adapter_model.bin holds objects other than tensors" in str(caught.value)
    assert not (code / "unpickled").exists()
