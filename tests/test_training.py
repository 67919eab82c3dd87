"""The shared training loop: learning, early stopping, exact resume from atomic checkpoints, EM schedule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptCollator
from prompt_adapters.run_dir import ResumeMismatchError
from prompt_adapters.testing import build_tiny_model, widen_weights
from prompt_adapters.training import (
    DivergedError,
    TrainSettings,
    em_step,
    fit,
    on_model_device,
    precision_at_1,
    rank_answers,
)

FACTS = [
    {"sub": s, "obj": o}
    for s, o in [("Dante", "Paris"), ("Obama", "London"), ("Einstein", "Rome"), ("Newton", "Berlin"), ("Bach", "Oslo")]
]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y] ."]


def _model(config_cls=DeepPerturbConfig):  # type: ignore[no-untyped-def]
    base, tok = build_tiny_model("bert")
    torch.manual_seed(0)
    widen_weights(base)
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


def test_fit_takes_any_batch_builder_and_a_scoring_callback() -> None:
    """A plain function building the batches and a selection score of the caller's train exactly as the collator
    and fit's own dev P@1 do; the callback is asked once before training and once per epoch."""
    settings = TrainSettings(epochs=3, learning_rate=0.05, batch_size=2, patience=None)
    model, collate = _model()
    reference = fit(model, collate, FACTS, FACTS, settings, progress=False)
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model, collate = _model()
    scores: list[float] = []

    def selection() -> float:
        assert not model.training
        scores.append(precision_at_1(rank_answers(model, collate, FACTS)))
        return scores[-1]

    result = fit(model, lambda examples: collate(examples), FACTS, FACTS, settings, progress=False,
                 dev_metric=selection)
    assert len(scores) == 4 and [h["dev_p1"] for h in result.history] == scores[1:]
    assert result.history == reference.history
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, expected[name]), name


def test_fit_without_scoring_callback_needs_a_prompt_collator() -> None:
    model, collate = _model()
    settings = TrainSettings(epochs=1, learning_rate=0.05, batch_size=2)
    with pytest.raises(TypeError, match=r"needs dev_metric .* got a function and no dev_metric"):
        fit(model, lambda examples: collate(examples), FACTS, FACTS, settings, progress=False)


class _Interrupt(Exception):
    pass


def _interrupting_dev_metric(model, collate, calls: int):  # type: ignore[no-untyped-def]
    """dev P@1 as fit computes it, raising on call ``calls`` (the crash of an interrupted run)."""
    seen = []

    def metric() -> float:
        seen.append(1)
        if len(seen) == calls:
            raise _Interrupt
        return precision_at_1(rank_answers(model, collate, FACTS))

    return metric


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=4, learning_rate=0.05, batch_size=2, patience=None)
    model, collate = _model()
    fit(model, collate, FACTS, FACTS, settings, progress=False)
    uninterrupted = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model, collate = _model()
    with pytest.raises(_Interrupt):  # crash while evaluating epoch 3: epochs 1 and 2 are checkpointed
        fit(model, collate, FACTS, FACTS, settings, checkpoint_dir=tmp_path / "ckpt", progress=False,
            dev_metric=_interrupting_dev_metric(model, collate, calls=4))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["LATEST", "v000002"]
    assert sorted(p.name for p in (tmp_path / "ckpt" / "v000002").iterdir()) == ["meta.json", "state.safetensors"]
    model, collate = _model()
    result = fit(model, collate, FACTS, FACTS, settings, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, uninterrupted[name]), name


def test_resume_with_other_settings_is_refused_naming_them(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=2, learning_rate=0.01, batch_size=2, patience=None)
    model, collate = _model()
    fit(model, collate, FACTS, FACTS, settings, checkpoint_dir=tmp_path / "ckpt", progress=False)
    model, collate = _model()
    other = TrainSettings(epochs=8, learning_rate=0.1, batch_size=2, patience=None)
    with pytest.raises(ResumeMismatchError) as error:
        fit(model, collate, FACTS, FACTS, other, checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert "learning_rate: 0.01 in the saved run, 0.1 now" in str(error.value)
    assert "epochs" not in str(error.value)  # more epochs continue the exponential schedule exactly
    linear = TrainSettings(epochs=2, learning_rate=0.01, batch_size=2, patience=None, schedule="linear")
    model, collate = _model()
    fit(model, collate, FACTS, FACTS, linear, checkpoint_dir=tmp_path / "linear", progress=False)
    model, collate = _model()
    longer = TrainSettings(**{**linear.__dict__, "epochs": 8})
    with pytest.raises(ResumeMismatchError, match="epochs: 2 in the saved run, 8 now"):
        fit(model, collate, FACTS, FACTS, longer, checkpoint_dir=tmp_path / "linear", progress=False)


def test_checkpoint_of_another_adapter_is_refused(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=1, learning_rate=0.01, batch_size=2, patience=None)
    model, collate = _model(MixturePromptConfig)
    fit(model, collate, FACTS, FACTS, settings, checkpoint_dir=tmp_path / "ckpt", progress=False)
    model, collate = _model(DeepPerturbConfig)
    with pytest.raises(ResumeMismatchError, match=r"lacks.*delta"):
        fit(model, collate, FACTS, FACTS, settings, checkpoint_dir=tmp_path / "ckpt", progress=False)


@pytest.mark.parametrize("lr", [1e30, 1e35])
def test_divergence_stops_with_epoch_step_and_learning_rate(lr: float) -> None:
    model, collate = _model()
    settings = TrainSettings(epochs=3, learning_rate=lr, batch_size=2, patience=None)
    with pytest.raises(DivergedError) as error:
        fit(model, collate, FACTS, FACTS, settings, progress=False)
    message = str(error.value)
    assert f"learning rate {lr:g}" in message and "lower the learning rate" in message
    assert re.search(r"at epoch 1, step [23] ", message), message


def test_divergence_in_an_epoch_of_one_step_stops_at_the_dev_score() -> None:
    """One batch per epoch: the only loss comes before the update, so the NaN shows first in the dev scores."""
    model, collate = _model()
    settings = TrainSettings(epochs=3, learning_rate=1e30, batch_size=len(FACTS), patience=None)
    with pytest.raises(DivergedError, match=r"the dev scores became NaN after epoch 1 with learning rate 1e\+30: "
                                            r"training diverged\. .*lower the learning rate"):
        fit(model, collate, FACTS, FACTS, settings, progress=False)


@pytest.mark.parametrize(("requested", "used"), [("fp16", "fp32"), ("no", "fp32"), ("bf16", "bf16")])
def test_mixed_precision_report_names_what_ran(requested: str, used: str) -> None:
    """A real Accelerator on CPU, in a fresh process (accelerate's state is process-wide)."""
    code = (
        "import json; from accelerate import Accelerator; from prompt_adapters.training import mixed_precision_used;"
        f"print(json.dumps(mixed_precision_used(Accelerator(mixed_precision={requested!r}, cpu=True))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                          env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["requested"] == requested and report["used"] == used and report["device"] == "cpu"
    assert ("ran in fp32" in report["note"]) == (requested == "fp16")


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


def test_loops_move_the_collators_cpu_batches_to_the_models_device() -> None:
    """The collators build CPU tensors; fit, fit_joint and rank_answers run them on the model's device (a model on
    a GPU trains there). The meta device stands in for an accelerator: every tensor moves, other values stay."""
    base, tokenizer = build_tiny_model("bert")
    model = get_peft_model(base, MixturePromptConfig(templates=["[X] was born in [Y] ."], tokenizer=tokenizer))
    batch = PromptCollator(tokenizer, model)([("Dante", "Paris")])
    batch["adapter_names"] = ["default"]
    moved = on_model_device(model.to("meta"), batch)
    assert moved.keys() == batch.keys() and moved["adapter_names"] == ["default"]
    tensors = [key for key, value in batch.items() if isinstance(value, torch.Tensor)]
    assert "input_ids" in tensors and all(moved[key].device.type == "meta" for key in tensors)
    assert all(batch[key].device.type == "cpu" for key in tensors)
