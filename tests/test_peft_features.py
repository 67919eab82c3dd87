"""PEFT integration: registration, save/load, multiple adapters, disable/unload, Trainer, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel, get_peft_model
from peft.utils.peft_types import PeftType
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

import prompt_adapters
from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptCollator
from prompt_adapters.peft_registry import check_peft_version, extend_peft_type, register_method
from prompt_adapters.testing import build_tiny_model, perturb_trainable, save_tiny_model, widen_weights

TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y]."]
FACTS = [("Dante", "Paris"), ("Obama", "London")]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


def _trained(base_dir: Path, config_cls=DeepPerturbConfig, **kwargs):  # type: ignore[no-untyped-def]
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(base_dir), config_cls(templates=TEMPLATES, **kwargs))
    perturb_trainable(model)
    return model, tok


def test_importing_registers_the_methods() -> None:
    assert PeftType.MIXTURE_PROMPT == "MIXTURE_PROMPT"
    assert "DEEP_PERTURB" in list(PeftType)
    assert extend_peft_type("MIXTURE_PROMPT") is PeftType.MIXTURE_PROMPT
    for method in prompt_adapters.METHODS:
        register_method(method)  # idempotent


def test_unsupported_peft_version_fails_clearly() -> None:
    check_peft_version("0.21.2")
    with pytest.raises(ImportError, match=r"peft>=0.21.0,<0.22.0.*0.14.0"):
        check_peft_version("0.14.0")


def test_config_compiles_from_base_model_path_and_prints_params(bert_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(bert_dir), MixturePromptConfig(templates=TEMPLATES))
    config = model.peft_config["default"]
    assert config.tokenizer_name_or_path == str(bert_dir)
    assert config.lm_kind == "masked"
    model.print_trainable_parameters()
    rows = sum(t.num_soft for t in config.compiled())
    assert f"trainable params: {rows * 32 + 2:,}" in capsys.readouterr().out


def test_save_load_roundtrip_is_bit_identical_and_resumable(bert_dir: Path, tmp_path: Path) -> None:
    model, tok = _trained(bert_dir)
    batch = PromptCollator(tok, model)(FACTS)
    expected = model(**batch).answer_log_probs
    model.save_pretrained(tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "import prompt_adapters" in card and "DEEP_PERTURB" in card
    assert PeftConfig.from_pretrained(tmp_path / "out").peft_type == "DEEP_PERTURB"

    frozen = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(bert_dir), tmp_path / "out")
    assert torch.equal(frozen(**batch).answer_log_probs, expected)
    assert not any(p.requires_grad for p in frozen.parameters())

    resumed = PeftModel.from_pretrained(
        AutoModelForMaskedLM.from_pretrained(bert_dir), tmp_path / "out", is_trainable=True
    )
    trainable = {n for n, p in resumed.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    out = resumed(**batch)
    assert torch.equal(out.answer_log_probs, expected)
    out.loss.backward()


def test_multiple_adapters_add_set_load_under_new_name_delete(bert_dir: Path, tmp_path: Path) -> None:
    model, tok = _trained(bert_dir, MixturePromptConfig)
    model.save_pretrained(tmp_path / "a")
    batch_a = PromptCollator(tok, model)(FACTS)
    expected_a = model(**batch_a).answer_log_probs

    model.add_adapter("other", MixturePromptConfig(templates=["[P*3] [X] [P*2] [Y] ."], tokenizer=tok))
    model.set_adapter("other")
    batch_b = PromptCollator(tok, model)(FACTS)
    assert batch_b["input_ids"].shape[0] == 2
    out_b = model(**batch_b)
    out_b.loss.backward()
    state = model.base_model.state
    assert state.table["other"].grad is not None and state.table["default"].grad is None

    model.load_adapter(tmp_path / "a", adapter_name="restored")
    model.set_adapter("restored")
    assert torch.equal(model(**PromptCollator(tok, model)(FACTS)).answer_log_probs, expected_a)
    status = model.get_model_status()
    assert set(status.available_adapters) == {"default", "other", "restored"}

    model.delete_adapter("other")
    assert "other" not in model.peft_config and "other" not in state.table
    with pytest.raises(ValueError, match="not found"):
        model.set_adapter("other")


def test_unload_restores_the_original_model_exactly(bert_dir: Path) -> None:
    base = AutoModelForMaskedLM.from_pretrained(bert_dir)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    expected = base(input_ids=ids).logits
    model = get_peft_model(base, DeepPerturbConfig(templates=TEMPLATES))
    restored = model.unload()
    assert restored is base
    assert torch.equal(restored(input_ids=ids).logits, expected)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in restored.modules())


def test_merge_and_unload_explains_why_not(bert_dir: Path) -> None:
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(bert_dir), MixturePromptConfig(templates=TEMPLATES))
    with pytest.raises(ValueError, match="cannot be merged: soft prompts are input vectors"):
        model.merge_and_unload()


def test_modules_to_save_are_trained_and_saved(bert_dir: Path, tmp_path: Path) -> None:
    config = MixturePromptConfig(templates=TEMPLATES, modules_to_save=["cls.predictions.transform.dense"])
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(bert_dir), config)
    tok = AutoTokenizer.from_pretrained(bert_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("modules_to_save" in n for n in trainable)
    model(**PromptCollator(tok, model)(FACTS)).loss.backward()
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert any("transform.dense" in k for k in keys) and any("mixprompt_state.table" in k for k in keys)


def test_adapter_for_another_base_model_fails_with_the_mismatch(bert_dir: Path, tmp_path: Path) -> None:
    model, _ = _trained(bert_dir, MixturePromptConfig)
    model.save_pretrained(tmp_path)
    other, _ = build_tiny_model("roberta")
    with pytest.raises(ValueError, match=r"vocab_size=\d+ \(model_type=bert\).*model_type=roberta"):
        PeftModel.from_pretrained(other, tmp_path)


def test_corrupted_or_truncated_safetensors_fail_clearly(bert_dir: Path, tmp_path: Path) -> None:
    model, _ = _trained(bert_dir, MixturePromptConfig)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])
    with pytest.raises(Exception, match=r"(?i)safetensor|deserializ|incomplete"):
        PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(bert_dir), tmp_path)


def test_auto_peft_model_loads_base_from_saved_path(gpt2_dir: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    config = MixturePromptConfig(templates=["[X] was born in [Y]"], task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(gpt2_dir), config)
    batch = PromptCollator(tok, model)(FACTS)
    expected = model(**batch).answer_log_probs
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(gpt2_dir)
    again = AutoPeftModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(again(**batch).answer_log_probs, expected)


def test_bad_inputs_get_clear_errors(bert_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(bert_dir)
    with pytest.raises(ValueError, match="0 answer slots"):
        MixturePromptConfig(templates=["[X] was born in ."], tokenizer=tok)
    with pytest.raises(ValueError, match="2 answer slots"):
        MixturePromptConfig(templates=["[X] [Y] [Y]"], tokenizer=tok)
    with pytest.raises(ValueError, match="must read the same"):
        MixturePromptConfig(templates=["[X] [Y]", "[subject] [Y]"], tokenizer=tok)
    empty = MixturePromptConfig(templates=[])  # peft's from_peft_type builds configs from defaults: no error yet
    with pytest.raises(ValueError, match="at least one template"):
        get_peft_model(AutoModelForMaskedLM.from_pretrained(bert_dir), empty)
    model = get_peft_model(AutoModelForMaskedLM.from_pretrained(bert_dir), MixturePromptConfig(templates=TEMPLATES))
    collate = PromptCollator(tok, model)
    with pytest.raises(ValueError, match="empty list"):
        collate([])
    with pytest.raises(KeyError, match=r"field \[X\]"):
        collate([{"person": "Dante", "Y": "Paris"}])
    with pytest.raises(ValueError, match="where one token is required"):
        collate([("Dante", "Paris London")])
    ids = collate(FACTS)["input_ids"]
    with pytest.raises(IndexError, match="soft rows"):
        model(input_ids=ids + 50)


LEARN_FACTS = [("Dante", "Paris"), ("Obama", "London"), ("Einstein", "Rome"), ("Newton", "Berlin")]


def _expressive_bert() -> tuple[torch.nn.Module, object]:
    """A tiny BERT with large random weights, so its answers depend on the prompt enough to be tuned."""
    model, tok = build_tiny_model("bert")
    widen_weights(model)
    return model, tok


def _precision_at_1(model: PeftModel, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        out = model(**batch)
    gold = batch["score_targets"][:: model.base_model.state.num_templates(), 0]
    return (out.answer_log_probs.argmax(-1) == gold).float().mean().item()


def test_accelerate_loop_loss_falls_and_tuned_beats_untuned() -> None:
    from accelerate import Accelerator

    base, tok = _expressive_bert()
    model = get_peft_model(base, DeepPerturbConfig(templates=TEMPLATES, tokenizer=tok))
    batch = PromptCollator(tok, model)(LEARN_FACTS)
    untuned_p1, untuned_loss = _precision_at_1(model, batch), model(**batch).loss.item()
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(60):
        optimizer.zero_grad()
        accelerator.backward(model(**batch).loss)
        optimizer.step()
    assert model(**batch).loss.item() < untuned_loss - 2.0
    assert _precision_at_1(model, batch) >= untuned_p1 + 0.5


def test_hf_trainer_trains_the_adapter(tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    base, tok = _expressive_bert()
    model = get_peft_model(base, DeepPerturbConfig(templates=TEMPLATES, tokenizer=tok))
    data = Dataset.from_list([{"sub": s, "obj": o} for s, o in LEARN_FACTS * 4])
    collate = PromptCollator(tok, model)
    before = model(**collate(LEARN_FACTS)).loss.item()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=8,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        gradient_checkpointing=True,
    )
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate).train()
    model.eval()
    assert model(**collate(LEARN_FACTS)).loss.item() < before - 1.0


def test_saved_config_with_a_missing_answer_slot_fails_at_load(bert_dir: Path, tmp_path: Path) -> None:
    model, _ = _trained(bert_dir, MixturePromptConfig)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["compiled_templates"][0]["pieces"] = [
        p for p in config["compiled_templates"][0]["pieces"] if p["kind"] != "answer"
    ]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has 0 answer slots"):
        PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(bert_dir), tmp_path)
