"""P-tuning encoder: shapes, gradients, save/load with the encoder, exact resume, static export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from prompt_adapters import PromptCollator, PTuningEncoderConfig
from prompt_adapters.testing import build_tiny_model, perturb_trainable
from prompt_adapters.training import TrainSettings, fit

FACTS = [("Dante", "Paris"), ("Obama", "London"), ("Einstein", "Rome")]


@pytest.mark.parametrize("encoder", ["lstm", "mlp", "none"])
def test_encoder_shapes_and_gradients(encoder: str) -> None:
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, PTuningEncoderConfig(encoder=encoder, tokenizer=tok))
    state = peft_model.base_model.state
    table = state.prompt_table("default")
    assert table.shape == (9, 32)
    batch = PromptCollator(tok, peft_model)(FACTS)
    assert (batch["input_ids"] >= len(tok)).sum(1).tolist() == [9, 9, 9]
    peft_model(**batch).loss.backward()
    grads = [p.grad for p in state.encoder["default"].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    if encoder == "lstm":
        assert state.encoder["default"][0].lstm.hidden_size == 16 and state.encoder["default"][0].lstm.num_layers == 2


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_causal_and_seq2seq_templates(family: str) -> None:
    model, tok = build_tiny_model(family)
    peft_model = get_peft_model(model, PTuningEncoderConfig(templates=["[P*3] [X] [P*3] [Y]"], tokenizer=tok))
    out = peft_model(**PromptCollator(tok, peft_model)(FACTS))
    out.loss.backward()
    assert out.answer_log_probs.shape[0] == 3


def test_anchor_words_stay_hard() -> None:
    model, tok = build_tiny_model("bert")
    config = PTuningEncoderConfig(templates=["[X] is a native of [P*2] [Y] ?"], tokenizer=tok)
    peft_model = get_peft_model(model, config)
    batch = PromptCollator(tok, peft_model)([("Dante", "Paris")])
    assert (batch["input_ids"] >= len(tok)).sum() == 2
    assert tok.convert_tokens_to_ids("native") in batch["input_ids"][0].tolist()


def test_saved_adapter_keeps_the_encoder_and_loads_under_another_name(tmp_path: Path) -> None:
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, PTuningEncoderConfig(tokenizer=tok))
    perturb_trainable(peft_model)
    batch = PromptCollator(tok, peft_model)(FACTS)
    expected = peft_model(**batch).answer_log_probs
    peft_model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert any("lstm.weight_ih_l0" in k for k in keys) and any("mlp.0.weight" in k for k in keys)
    assert not any(".default." in k for k in keys)
    again = PeftModel.from_pretrained(build_tiny_model("bert")[0], tmp_path, is_trainable=True)
    assert torch.equal(again(**batch).answer_log_probs, expected)
    result = again.load_adapter(tmp_path, adapter_name="second")
    assert not result.missing_keys or all("second" not in k for k in result.missing_keys)
    again.set_adapter("second")
    assert torch.equal(again(**PromptCollator(tok, again)(FACTS)).answer_log_probs, expected)


def test_resume_continues_training_bit_identically(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=4, learning_rate=0.01, batch_size=2, patience=None)
    facts = [{"sub": s, "obj": o} for s, o in FACTS]

    def fresh():  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model, tok = build_tiny_model("bert")
        peft_model = get_peft_model(model, PTuningEncoderConfig(tokenizer=tok))
        return peft_model, PromptCollator(tok, peft_model)

    model, collate = fresh()
    fit(model, collate, facts, facts, settings, progress=False)
    reference = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model, collate = fresh()
    fit(model, collate, facts, facts, TrainSettings(**{**settings.__dict__, "epochs": 2}), tmp_path, progress=False)
    model, collate = fresh()
    fit(model, collate, facts, facts, settings, tmp_path, progress=False)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, reference[name]), name


def test_export_static_table_gives_identical_outputs(tmp_path: Path) -> None:
    model, tok = build_tiny_model("gpt2")
    config = PTuningEncoderConfig(templates=["[P*3] [X] [P*3] [Y]"], tokenizer=tok)
    peft_model = get_peft_model(model, config)
    perturb_trainable(peft_model)
    batch = PromptCollator(tok, peft_model)(FACTS)
    expected = peft_model(**batch).answer_log_probs
    peft_model.base_model.export_static(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert not any("lstm" in k or "mlp" in k for k in keys)
    static = PeftModel.from_pretrained(build_tiny_model("gpt2")[0], tmp_path)
    assert static.peft_config["default"].peft_type == "MIXTURE_PROMPT"
    torch.testing.assert_close(static(**PromptCollator(tok, static)(FACTS)).answer_log_probs, expected)


def test_inference_caches_the_encoder_output_until_parameters_change() -> None:
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, PTuningEncoderConfig(tokenizer=tok))
    state = peft_model.base_model.state
    with torch.no_grad():
        first = state.prompt_table("default")
        assert state.prompt_table("default") is first
        next(state.encoder["default"].parameters()).add_(1.0)
        second = state.prompt_table("default")
    assert second is not first and not torch.equal(second, first)
    assert state.prompt_table("default").requires_grad


def test_the_cache_follows_a_fused_optimiser_step_and_replaced_parameters() -> None:
    """torch's fused AdamW (the HF Trainer's default optimiser) updates parameters without bumping their version
    counter, and ``param.data = ...`` swaps their storage: inference after either reads the new encoder output."""
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, PTuningEncoderConfig(tokenizer=tok, encoder="mlp"))
    state = peft_model.base_model.state
    batch = PromptCollator(tok, peft_model)(FACTS)
    with torch.no_grad():
        before = state.prompt_table("default")
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.1, fused=True)
    peft_model(**batch).loss.backward()
    optimizer.step()
    with torch.no_grad():
        stepped = state.prompt_table("default")
        torch.testing.assert_close(stepped, state._encode("default"))
        assert not torch.allclose(stepped, before)
        embedding = state.encoder["default"][0].embedding
        embedding.weight.data = embedding.weight.data + 1.0
        torch.testing.assert_close(state.prompt_table("default"), state._encode("default"))


def test_joint_fine_tuning_with_modules_to_save(tmp_path: Path) -> None:
    """The base model trains with the prompt (P-tuning's SuperGLUE setting); hooks follow peft's module copies."""
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, PTuningEncoderConfig(tokenizer=tok, modules_to_save=["bert"]))
    collate = PromptCollator(tok, peft_model)
    batch = collate(FACTS)
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
    tuned = peft_model(**batch).answer_log_probs
    with peft_model.disable_adapter():
        assert not torch.allclose(peft_model(**batch).answer_log_probs, tuned)
    peft_model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(build_tiny_model("bert")[0], tmp_path)
    assert torch.equal(again(**batch).answer_log_probs, tuned)
