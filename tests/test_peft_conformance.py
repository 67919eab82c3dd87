"""peft's generic adapter behaviours, for every method on every model family they apply to.

Ported from the checks peft runs on its own methods (tests/testing_common.py ``PeftCommonTester``, test_config.py,
test_low_level_api.py, test_torch_compile.py): save/load (low_cpu_mem_usage, subfolders, selected adapters), config
round trips, several adapters, delete (the last one too), disable, unload, deepcopy, wrapping twice,
set_requires_grad, model/layer status, state-dict helpers, generate with and without KV cache, inputs_embeds,
gradient checkpointing, the HF Trainer and torch.compile; plus the documented divergences (docs/peft.md).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from method_matrix import METHOD_NAMES, PEFT_TYPES
from method_matrix import make_config as make_method_config
from peft import (
    PeftConfig,
    PeftModel,
    get_layer_status,
    get_model_status,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.utils.peft_types import PeftType
from transformers import PreTrainedTokenizerBase

from prompt_adapters import (
    MixturePromptConfig,
    PromptCollator,
    PromptGenCollator,
)
from prompt_adapters.injection import attached_hooks
from prompt_adapters.testing import build_tiny_model, perturb_trainable, save_tiny_model
from prompt_adapters.training import em_step

FAMILIES = ("bert", "roberta", "gpt2", "llama", "bart", "t5")
GENERATIVE = ("gpt2", "llama", "bart", "t5")
METHODS = METHOD_NAMES
CASES = [(method, family) for method in METHODS for family in FAMILIES]
#: behaviours of the adapter state alone (not of the hooks in the model) run on one family per kind of LM
KIND_CASES = [(method, family) for method in METHODS for family in ("bert", "gpt2", "t5")]
GENERATIVE_CASES = [(method, family) for method, family in CASES if family in GENERATIVE]
EXAMPLES = [
    {"X": "Dante", "Y": "Paris", "template": "[X] was born in [Y] ."},
    {"X": "Barack Obama", "Y": "London", "template": "[X] died in [Y] ."},
]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y]."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PromptGen's generator: a tiny BART saved once for the module."""
    return str(save_tiny_model("bart", tmp_path_factory.mktemp("generator") / "bart"))


def make_config(method: str, tokenizer: PreTrainedTokenizerBase, generator_dir: str, **kwargs: Any) -> PeftConfig:
    return make_method_config(method, tokenizer, TEMPLATES, generator_dir, **kwargs)


@dataclass
class Case:
    """One adapted tiny model with its tokenizer and collator."""

    method: str
    family: str
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    generator_dir: str

    def collator(self, model: PeftModel | None = None, adapter_name: str | None = None) -> PromptCollator:
        model = model or self.model
        if self.method == "promptgen":
            return PromptGenCollator(self.tokenizer, model, leak_rows=False, adapter_name=adapter_name)
        return PromptCollator(self.tokenizer, model, adapter_name=adapter_name)

    def config(self, **kwargs: Any) -> PeftConfig:
        return make_config(self.method, self.tokenizer, self.generator_dir, **kwargs)

    def fresh_base(self) -> torch.nn.Module:
        return build_tiny_model(self.family)[0]

    def plain_inputs(self) -> dict[str, torch.Tensor]:
        """Ordinary tokenizer output (no prompt position), with a decoder input for seq2seq models."""
        inputs = dict(self.tokenizer(["Dante was born in"], return_tensors="pt"))
        config = self.model.base_model.model.config
        if config.is_encoder_decoder:
            start = config.decoder_start_token_id
            inputs["decoder_input_ids"] = torch.tensor([[start]])
        return inputs


def make_case(method: str, family: str, generator_dir: str, seed: int = 0, **kwargs: Any) -> Case:
    base, tokenizer = build_tiny_model(family)
    torch.manual_seed(seed)
    model = get_peft_model(base, make_config(method, tokenizer, generator_dir), **kwargs)
    perturb_trainable(model, 0.1)  # deltas start at zero and words at their embeddings: look trained
    return Case(method, family, model, tokenizer, generator_dir)


def scores(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).answer_log_probs


def adapter_params(model: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Parameter]:
    pattern = re.compile(rf"\.{re.escape(adapter)}(\.|$)")
    return {name: param for name, param in model.named_parameters() if pattern.search(name)}


@contextmanager
def no_prompt_warning() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w.message for w in caught if "no prompt position" in str(w.message)]


def no_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


pytestmark = pytest.mark.filterwarnings("ignore:prompt adapter .* has no prompt position")


# ----------------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize(("method", "family"), CASES)
def test_save_and_load_with_low_cpu_mem_usage(method: str, family: str, generator_dir: str, tmp_path: Path) -> None:
    """Cause 1: ``low_cpu_mem_usage=True`` (peft's meta-device loading) for from_pretrained and load_adapter; the
    plain path is the next test's."""
    case = make_case(method, family, generator_dir)
    batch = case.collator()(EXAMPLES)
    expected = scores(case.model, batch)
    case.model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    loaded = PeftModel.from_pretrained(case.fresh_base(), tmp_path, low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert torch.equal(scores(loaded, batch), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode, as peft
    loaded.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    loaded.set_adapter("other")
    assert torch.equal(scores(loaded, batch), expected)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_several_adapters_save_to_subfolders_and_load_selected(
    method: str, family: str, generator_dir: str, tmp_path: Path
) -> None:
    case = make_case(method, family, generator_dir)
    torch.manual_seed(1)
    case.model.add_adapter("other", case.config())
    perturb_trainable(case.model, 0.3)
    batch = case.collator()(EXAMPLES)
    first = scores(case.model, batch)
    case.model.set_adapter("other")
    second = scores(case.model, batch)
    assert not torch.allclose(first, second)
    case.model.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(case.fresh_base(), tmp_path)
    loaded.load_adapter(tmp_path, adapter_name="other", subfolder="other")
    assert torch.equal(scores(loaded, batch), first)
    loaded.set_adapter("other")
    assert torch.equal(scores(loaded, batch), second)
    case.model.save_pretrained(tmp_path / "only", selected_adapters=["other"])
    assert not (tmp_path / "only" / "adapter_config.json").exists()
    only = PeftModel.from_pretrained(case.fresh_base(), tmp_path / "only", subfolder="other")
    assert torch.equal(scores(only, batch), second)


@pytest.mark.parametrize("method", METHODS)
def test_config_round_trips_and_from_peft_type(method: str, generator_dir: str, tmp_path: Path) -> None:
    """Cause 7 and 8: peft_type is a PeftType member; every registered type builds from its defaults."""
    case = make_case(method, "bert", generator_dir)
    config = case.model.peft_config["default"]
    assert isinstance(config.peft_type, PeftType) and config.peft_type.value == PEFT_TYPES[method]
    rebuilt = PeftConfig.from_peft_type(**config.to_dict())
    assert type(rebuilt) is type(config) and rebuilt.to_dict() == config.to_dict()
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is type(config) and loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.peft_type, PeftType)
    for name in PEFT_TYPES.values():  # peft's own test_from_peft_type builds every registered type from defaults
        assert PeftConfig.from_peft_type(peft_type=PeftType(name)).peft_type == PeftType(name)
    assert get_model_status(case.model).peft_types == {"default": PEFT_TYPES[method]}


# ----------------------------------------------------------------------------------------------------- adapters


@pytest.mark.parametrize(("method", "family"), CASES)
def test_delete_adapters_including_the_last(method: str, family: str, generator_dir: str) -> None:
    """Cause 6: after deleting the last adapter the model runs as the base model; prompt ids get a clear error."""
    case = make_case(method, family, generator_dir)
    batch = case.collator()(EXAMPLES)
    case.model.add_adapter("delete_me", case.config())
    case.model.set_adapter("delete_me")
    case.model.delete_adapter("delete_me")
    assert "delete_me" not in case.model.peft_config and case.model.active_adapters == ["default"]
    assert not adapter_params(case.model, "delete_me")
    state = case.model.base_model.state
    assert all("delete_me" not in getattr(state, name) for name in state.adapter_layer_names + state.other_param_names)
    scores(case.model, batch)
    case.model.delete_adapter("default")
    assert case.model.active_adapters == [] and not case.model.peft_config
    prefix = case.model.base_model.prefix
    assert not [name for name, _ in case.model.named_parameters() if prefix in name]
    plain = case.plain_inputs()
    tuner = case.model.base_model  # PeftModel.forward itself needs an active config, as in peft
    with torch.no_grad():
        torch.testing.assert_close(tuner(**plain).logits, case.fresh_base()(**plain).logits)
    with pytest.raises(ValueError, match="no prompt adapter left"):
        tuner(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "decoder_input_ids")})


@pytest.mark.parametrize(("method", "family"), KIND_CASES)
def test_disable_adapter_and_set_requires_grad(method: str, family: str, generator_dir: str) -> None:
    """Cause 5: set_requires_grad(adapter_names=...) acts on the adapter state."""
    case = make_case(method, family, generator_dir)
    batch = case.collator()(EXAMPLES)
    adapted = scores(case.model, batch)
    with case.model.disable_adapter():
        disabled = scores(case.model, batch)
        assert get_model_status(case.model).enabled is False
    assert not torch.allclose(adapted, disabled)
    assert torch.equal(scores(case.model, batch), adapted)

    case.model.add_adapter("other", case.config())
    default, other = adapter_params(case.model, "default"), adapter_params(case.model, "other")
    assert all(p.requires_grad for p in default.values()) and not any(p.requires_grad for p in other.values())
    case.model.set_requires_grad("other")
    assert all(p.requires_grad for p in other.values())
    case.model.set_requires_grad(["default", "other"], requires_grad=False)
    assert not any(p.requires_grad for p in case.model.parameters())
    assert get_model_status(case.model).requires_grad == {"default": False, "other": False}


@pytest.mark.parametrize(("method", "family"), KIND_CASES)
def test_model_and_layer_status(method: str, family: str, generator_dir: str) -> None:
    case = make_case(method, family, generator_dir)
    case.model.add_adapter("other", case.config())
    status = get_model_status(case.model)
    trainable = sum(p.numel() for p in case.model.parameters() if p.requires_grad)
    assert status.peft_types == {"default": PEFT_TYPES[method], "other": PEFT_TYPES[method]}
    assert (status.enabled, status.active_adapters, status.available_adapters) == (True, ["default"],
                                                                                    ["default", "other"])
    assert status.requires_grad == {"default": True, "other": False}
    assert status.devices == {"default": ["cpu"], "other": ["cpu"]}
    assert status.trainable_params == trainable and status.num_adapter_layers == 1
    (layer,) = get_layer_status(case.model)
    assert layer.module_type == type(case.model.base_model.state).__name__
    assert layer.active_adapters == ["default"] and layer.merged_adapters == []


@pytest.mark.parametrize(("method", "family"), CASES)
def test_unload_returns_the_untouched_base_model(method: str, family: str, generator_dir: str) -> None:
    """Cause 4: unload() leaves no hook and no peft_config on the base model; wrapping it again does not warn."""
    case = make_case(method, family, generator_dir)
    plain = case.plain_inputs()
    base = case.model.unload()
    assert not attached_hooks(base) and not hasattr(base, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(base(**plain).logits, case.fresh_base()(**plain).logits, rtol=0, atol=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(base, case.config())
    assert not [w for w in caught if "second time" in str(w.message) or "peft_config" in str(w.message)]


@pytest.mark.parametrize(("method", "family"), CASES)
def test_deepcopy_is_independent(method: str, family: str, generator_dir: str) -> None:
    """Cause 2: the copy's hooks read the copy's adapter state."""
    case = make_case(method, family, generator_dir)
    batch = case.collator()(EXAMPLES)
    expected = scores(case.model, batch)
    clone = copy.deepcopy(case.model)
    assert torch.equal(scores(clone, batch), expected)
    perturb_trainable(clone, 0.5)
    assert not torch.allclose(scores(clone, batch), expected)
    assert torch.equal(scores(case.model, batch), expected)
    clone.delete_adapter("default")
    assert torch.equal(scores(case.model, batch), expected)


@pytest.mark.parametrize(("method", "family"), KIND_CASES)
def test_wrapping_a_model_twice_warns_and_runs_the_new_adapter(method: str, family: str, generator_dir: str) -> None:
    """Cause 3: peft's 'second time' warning fires and the second adapter's vectors are the ones used."""
    base, tokenizer = build_tiny_model(family)
    first = get_peft_model(base, make_config(method, tokenizer, generator_dir))
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="modify a model with PEFT for a second time"):
        second = get_peft_model(base, make_config(method, tokenizer, generator_dir))
    perturb_trainable(second, 0.3)
    case = Case(method, family, second, tokenizer, generator_dir)
    batch = case.collator()(EXAMPLES)
    reference = get_peft_model(case.fresh_base(), case.config())
    set_peft_model_state_dict(reference, get_peft_model_state_dict(second))
    assert first.base_model.model is base and attached_hooks(base) == [second.base_model.hooks]
    assert torch.equal(scores(second, batch), scores(reference, batch))


@pytest.mark.parametrize(("method", "family"), KIND_CASES)
def test_state_dict_helpers(method: str, family: str, generator_dir: str) -> None:
    case = make_case(method, family, generator_dir)
    batch = case.collator()(EXAMPLES)
    state_dict = get_peft_model_state_dict(case.model)
    prefix = case.model.base_model.prefix
    assert state_dict and all(prefix in key and ".default" not in key for key in state_dict)
    trainable = {n for n, p in case.model.named_parameters() if p.requires_grad}
    assert set(state_dict) >= {re.sub(r"\.default(\.|$)", r"\1", name) for name in trainable}
    other = get_peft_model(case.fresh_base(), case.config())
    result = set_peft_model_state_dict(other, state_dict)
    assert not result.unexpected_keys
    assert torch.equal(scores(other, batch), scores(case.model, batch))


# ----------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize(("method", "family"), CASES)
def test_gradient_checkpointing_gives_the_same_gradients(method: str, family: str, generator_dir: str) -> None:
    """Every adapter parameter gets a gradient (peft's check; cause 10 and 12), the same with checkpointing."""
    gradients = []
    for checkpointing in (False, True):
        case = make_case(method, family, generator_dir)
        no_dropout(case.model)
        if checkpointing:
            case.model.get_base_model().gradient_checkpointing_enable()
        case.model.train()
        case.model(**case.collator()(EXAMPLES)).loss.backward()
        prefix = case.model.base_model.prefix
        named = [(n, p) for n, p in case.model.named_parameters() if prefix in n]
        assert named and all(p.grad is not None for _, p in named), [n for n, p in named if p.grad is None]
        assert all(p.grad is None for n, p in case.model.named_parameters() if prefix not in n)
        gradients.append([p.grad for _, p in named])
    for plain, checkpointed in zip(*gradients, strict=True):
        torch.testing.assert_close(plain, checkpointed, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_embedding_output_is_tied_to_the_adapter_only_at_prompt_positions(
    method: str, family: str, generator_dir: str
) -> None:
    """Cause 9: without a prompt position the input embedding's output does not require grad (peft's check)."""
    case = make_case(method, family, generator_dir)
    embedding = case.model.get_input_embeddings()
    assert not embedding(case.plain_inputs()["input_ids"]).requires_grad
    if method != "promptgen":  # PromptGen's vectors exist only inside a forward with generator inputs
        assert embedding(case.collator()(EXAMPLES)["input_ids"]).requires_grad
    case.model.enable_input_require_grads()  # peft's k-bit training preparation asks for it explicitly
    assert embedding(case.plain_inputs()["input_ids"]).requires_grad


@pytest.mark.parametrize(("method", "family"), CASES)
def test_inputs_embeds_with_prompt_ids_matches_input_ids(method: str, family: str, generator_dir: str) -> None:
    case = make_case(method, family, generator_dir)
    batch = case.collator()(EXAMPLES)
    state = case.model.base_model.state
    vocab = case.model.get_input_embeddings().weight.shape[0]
    ids = batch["input_ids"]
    hard = torch.where(ids >= vocab, state.hard_ids((ids - vocab).clamp(min=0)), ids)
    embeds = case.model.get_input_embeddings()(hard).detach()
    by_embeds = {k: v for k, v in batch.items() if k != "input_ids"}
    by_embeds.update(inputs_embeds=embeds, prompt_ids=ids)
    torch.testing.assert_close(scores(case.model, by_embeds), scores(case.model, batch))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
def test_hf_trainer_runs_and_updates_only_the_adapter(
    method: str, family: str, generator_dir: str, tmp_path: Path
) -> None:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    case = make_case(method, family, generator_dir)
    before = {n: p.detach().clone() for n, p in case.model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=0.01,
                             remove_unused_columns=False, report_to=[], save_strategy="no", use_cpu=True,
                             gradient_checkpointing=True)
    Trainer(model=case.model, args=args, train_dataset=Dataset.from_list(EXAMPLES * 2),
            data_collator=case.collator()).train()
    changed = {n for n, p in case.model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in case.model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable


def test_torch_compile_of_a_training_step(generator_dir: str) -> None:
    """A compiled training step gives the eager loss and gradients (backend aot_eager: dynamo + AOT autograd)."""
    results = []
    for compiled in (False, True):
        case = make_case("deep", "bert", generator_dir)
        collate = case.collator()
        model = torch.compile(case.model, backend="aot_eager") if compiled else case.model
        loss = model(**collate(EXAMPLES)).loss
        loss.backward()
        state = case.model.base_model.state
        results.append((loss.detach(), state.table["default"].grad.clone(), state.deltas["default"].grad.clone()))
    for eager, compiled_value in zip(*results, strict=True):
        torch.testing.assert_close(eager, compiled_value)


# ----------------------------------------------------------------------------------------------------- generate


def _generate(model: PeftModel, inputs: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase, **kwargs: Any):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              output_scores=True, return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize(("method", "family"), GENERATIVE_CASES)
def test_generate_with_and_without_cache_through_the_template(method: str, family: str, generator_dir: str) -> None:
    """Cause 12 and 13: raw text goes through the template (``collator.inputs``) into forward and generate."""
    case = make_case(method, family, generator_dir)
    case.tokenizer.padding_side = "left"
    collate = case.collator()
    single = collate.inputs(EXAMPLES[:1])
    with no_prompt_warning():  # not even on cached steps
        cached = _generate(case.model, single, case.tokenizer, use_cache=True)
        uncached = _generate(case.model, single, case.tokenizer, use_cache=False)
        with torch.no_grad():
            forward = case.model(**single).logits[:, -1]
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.scores[0], forward.float(), rtol=1e-4, atol=1e-4)
    with case.model.disable_adapter():
        plain = _generate(case.model, single, case.tokenizer)
    assert not torch.allclose(torch.stack(cached.scores), torch.stack(plain.scores), atol=1e-3)
    if family in ("gpt2", "llama"):  # batched generation (left padding) gives each row's own continuation
        batched = _generate(case.model, collate.inputs(EXAMPLES), case.tokenizer)
        second = _generate(case.model, collate.inputs(EXAMPLES[1:]), case.tokenizer)
        assert torch.equal(batched.sequences[1, -4:], second.sequences[0, -4:])
        assert torch.equal(batched.sequences[0, -4:], cached.sequences[0, -4:])


@pytest.mark.parametrize("method", METHODS)
def test_generate_with_beams_expands_the_prompts(method: str, generator_dir: str) -> None:
    case = make_case(method, "gpt2", generator_dir)
    inputs = case.collator().inputs(EXAMPLES[:1])
    beams = _generate(case.model, inputs, case.tokenizer, num_beams=2, num_return_sequences=2)
    greedy = _generate(case.model, inputs, case.tokenizer)
    assert beams.sequences.shape[0] == 2
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(beams.sequences[0, :prompt], greedy.sequences[0, :prompt])


def test_generate_refuses_a_scoring_batch(generator_dir: str) -> None:
    case = make_case("mixture", "gpt2", generator_dir)
    with pytest.raises(ValueError, match=r"scoring keys .*inputs\(texts\)"):
        case.model.generate(**case.collator()(EXAMPLES), max_new_tokens=2)


# ----------------------------------------------------------------------------------------------------- no prompt


@pytest.mark.parametrize(("method", "family"), CASES)
@pytest.mark.filterwarnings("default")
def test_inputs_without_prompt_positions_warn_once_per_adapter(method: str, family: str, generator_dir: str) -> None:
    """Cause 13: an active adapter never silently does nothing on ordinary tokenizer output."""
    case = make_case(method, family, generator_dir)
    plain = case.plain_inputs()
    with pytest.warns(UserWarning, match=r"'default' is active but this forward call has no prompt position.*"
                                         r"PromptCollator\(tokenizer, model\)\.inputs\(texts\)"):
        case.model(**plain)
    with no_prompt_warning():
        case.model(**plain)  # once per adapter
        case.model(**case.collator().inputs(EXAMPLES))
        with case.model.disable_adapter():
            case.model(**plain)
    case.model.add_adapter("other", case.config())
    case.model.set_adapter("other")
    if family in GENERATIVE:
        with pytest.warns(UserWarning, match="'other' is active but this generate call has no prompt position"):
            _generate(case.model, plain, case.tokenizer)
    else:
        with pytest.warns(UserWarning, match="'other' is active but this forward call"):
            case.model(**plain)


def test_an_adapter_without_soft_rows_does_not_warn() -> None:
    """All-hard templates put no vector into the input (a manual prompt): there is no prompt position to miss."""
    base, tokenizer = build_tiny_model("bert")
    model = get_peft_model(base, MixturePromptConfig(templates=TEMPLATES[:1], words="hard", tokenizer=tokenizer))
    with no_prompt_warning():
        model(**tokenizer(["Dante was born in Paris ."], return_tensors="pt"))


# ----------------------------------------------------------------------------------------------------- parameters


def test_one_template_has_no_mixture_logit_and_frozen_weights_stay_frozen(generator_dir: str) -> None:
    """Cause 10: K = 1 has nothing to learn in the mixture; learn_weights=False keeps the K logits frozen."""
    base, tokenizer = build_tiny_model("bert")
    model = get_peft_model(base, MixturePromptConfig(templates=TEMPLATES[:1], tokenizer=tokenizer))
    state = model.base_model.state
    assert "default" not in state.mixture
    assert model.get_nb_trainable_parameters()[0] == state.table["default"].numel()
    base, tokenizer = build_tiny_model("bert")
    model = get_peft_model(base, MixturePromptConfig(templates=TEMPLATES, tokenizer=tokenizer, learn_weights=False))
    model.set_requires_grad("default")
    model.set_adapter("default")
    assert not model.base_model.state.mixture["default"].requires_grad
    assert model.base_model.state.table["default"].requires_grad
    case = make_case("promptgen", "bert", generator_dir)
    assert set(case.model.base_model.state.mixture) == set()
    base, tokenizer = build_tiny_model("bert")
    single = get_peft_model(base, MixturePromptConfig(templates=TEMPLATES[:1], tokenizer=tokenizer))
    gamma = em_step(single, PromptCollator(tokenizer, single), EXAMPLES, batch_size=2)  # EM has nothing to set
    assert torch.equal(gamma, torch.ones(len(EXAMPLES), 1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype(method: str, autocast: bool, generator_dir: str) -> None:
    """Cause 11, supported as in peft: adapters follow a bf16 base unless autocast_adapter_dtype upcasts them."""
    base, tokenizer = build_tiny_model("bert")
    model = get_peft_model(base.to(torch.bfloat16), make_config(method, tokenizer, generator_dir),
                           autocast_adapter_dtype=autocast)
    dtypes = {p.dtype for n, p in model.named_parameters() if model.base_model.prefix in n}
    assert dtypes == ({torch.float32} if autocast else {torch.bfloat16})
    case = Case(method, "bert", model, tokenizer, generator_dir)
    out = model(**case.collator()(EXAMPLES))
    assert torch.isfinite(out.loss)


def test_documented_divergences(generator_dir: str) -> None:
    """docs/peft.md: one prompt adapter runs at a time, soft prompts cannot be merged into weights, and (as for every
    peft tuner with shared state) inject_adapter_in_model is refused."""
    case = make_case("mixture", "bert", generator_dir)
    case.model.add_adapter("other", case.config())
    with pytest.raises(ValueError, match="one adapter at a time"):
        case.model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="cannot be merged"):
        case.model.merge_and_unload()
    base, tokenizer = build_tiny_model("bert")
    with pytest.raises(ValueError, match=r"shared state.*get_peft_model"):
        inject_adapter_in_model(make_config("mixture", tokenizer, generator_dir), base)
