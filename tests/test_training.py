"""The shared training loop: learning, early stopping, exact resume from atomic checkpoints, EM schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptCollator
from prompt_adapters.testing import build_tiny_model
from prompt_adapters.training import TrainSettings, em_step, fit, precision_at_1, rank_answers

FACTS = [
    {"sub": s, "obj": o}
    for s, o in [("Dante", "Paris"), ("Obama", "London"), ("Einstein", "Rome"), ("Newton", "Berlin"), ("Bach", "Oslo")]
]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y] ."]


def _model(config_cls=DeepPerturbConfig):  # type: ignore[no-untyped-def]
    base, tok = build_tiny_model("bert")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "LayerNorm" not in name:
                param.normal_(0, 0.2)
    model = get_peft_model(base, config_cls(templates=TEMPLATES, tokenizer=tok))
    return model, PromptCollator(tok, model)


def test_fit_learns_and_keeps_the_best_dev_state() -> None:
    model, collate = _model()
    before = precision_at_1(rank_answers(model, collate, FACTS))
    settings = TrainSettings(epochs=30, learning_rate=0.05, batch_size=2, patience=None)
    result = fit(model, collate, FACTS, FACTS, settings, progress=False)
    after = precision_at_1(rank_answers(model, collate, FACTS))
    assert after == pytest.approx(result.best_dev)
    assert after >= before + 0.4
    assert len(result.history) <= 30


def test_early_stopping_after_patience() -> None:
    model, collate = _model()
    settings = TrainSettings(epochs=50, learning_rate=0.0, batch_size=5, patience=2)
    result = fit(model, collate, FACTS, FACTS, settings, progress=False)
    assert result.stopped_early and len(result.history) == 3


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=4, learning_rate=0.05, batch_size=2, patience=None)
    model, collate = _model()
    fit(model, collate, FACTS, FACTS, settings, progress=False)
    uninterrupted = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model, collate = _model()
    first = TrainSettings(**{**settings.__dict__, "epochs": 2})
    fit(model, collate, FACTS, FACTS, first, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["meta.json", "state.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    model, collate = _model()
    fit(model, collate, FACTS, FACTS, settings, checkpoint_dir=tmp_path / "ckpt", progress=False)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, uninterrupted[name]), name


def test_em_schedule_sets_weights_to_mean_responsibilities() -> None:
    model, collate = _model(MixturePromptConfig)
    state = model.base_model.state
    out = model(**collate(FACTS))
    expected = torch.softmax((out.mixture_log_weights + out.template_log_probs).detach(), dim=1)
    gamma = em_step(model, collate, FACTS, batch_size=2)
    torch.testing.assert_close(gamma, expected)
    torch.testing.assert_close(state.log_weights("default").exp(), expected.mean(0))
    assert not state.mixture["default"].requires_grad

    model, collate = _model(MixturePromptConfig)
    settings = TrainSettings(epochs=6, learning_rate=0.05, batch_size=2, em=True, patience=None)
    result = fit(model, collate, FACTS, FACTS, settings, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] - 1.0
