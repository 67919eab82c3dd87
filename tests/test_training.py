"""The shared training loop: learning, early stopping, exact resume from atomic checkpoints, EM schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptCollator
from prompt_adapters.testing import build_tiny_model
from prompt_adapters.training import TrainSettings, fit, precision_at_1, rank_answers

FACTS = [
    {"sub": s, "obj": o}
    for s, o in [("Dante", "Paris"), ("Obama", "London"), ("Einstein", "Rome"), ("Newton", "Berlin"), ("Bach", "Oslo")]
]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y] ."]


def _model(config_cls=DeepPerturbConfig):  # type: ignore[no-untyped-def]
    base, tok = build_tiny_model("bert")
    with torch.no_grad():
        for name, param in base.named_parameters():
            if "LayerNorm" not in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    model = get_peft_model(base, config_cls(templates=TEMPLATES, tokenizer=tok))
    return model, PromptCollator(tok, model)


def test_fit_learns_and_keeps_the_best_dev_state() -> None:
    model, collate = _model()
    before = precision_at_1(rank_answers(model, collate, FACTS))
    settings = TrainSettings(epochs=30, learning_rate=0.05, batch_size=2)
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
    settings = TrainSettings(epochs=3, learning_rate=0.05, batch_size=2, em=True, patience=None)
    fit(model, collate, FACTS, FACTS, settings, progress=False)
    state = model.base_model.state
    assert not state.mixture["default"].requires_grad
    assert torch.exp(state.log_weights("default")).sum() == pytest.approx(1.0)
    assert not torch.allclose(state.log_weights("default"), torch.log(torch.full((2,), 0.5)))
