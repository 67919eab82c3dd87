"""Joint training: several adapters in one batched loop end exactly as each trained alone by ``fit``."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model

from prompt_adapters import DeepPerturbConfig, PromptCollator, training
from prompt_adapters.testing import build_tiny_model, widen_weights
from prompt_adapters.training import JointTask, TrainSettings, fit, fit_joint

PAIRS = [("Dante", "Paris"), ("Obama", "London"), ("Einstein", "Rome"), ("Newton", "Berlin"), ("Bach", "Oslo")]
#: two relations over the same subjects: each adapter has its own answers, templates and soft-token count
DATA = {
    "a": [{"sub": s, "obj": o} for s, o in PAIRS],
    "b": [{"sub": s, "obj": o} for (s, _), (_, o) in zip(PAIRS, PAIRS[2:] + PAIRS[:2], strict=True)],
}
TEMPLATES = {"a": ["[X] was born in [Y] .", "[X] is a native of [Y] ."], "b": ["[P*2] [X] died in [Y] ."]}
#: different schedules, batch sizes (3 vs 2 batches an epoch), epochs and stopping rules
SETTINGS = {
    "a": TrainSettings(epochs=6, learning_rate=0.05, batch_size=2, patience=None),
    "b": TrainSettings(epochs=8, learning_rate=0.3, batch_size=3, patience=2, schedule="linear", warmup_ratio=0.2,
                       max_grad_norm=1.0, seed=7),
}


def _model() -> tuple[PeftModel, dict[str, PromptCollator]]:
    base, tokenizer = build_tiny_model("bert")
    torch.manual_seed(0)
    widen_weights(base)
    model = get_peft_model(base, DeepPerturbConfig(templates=TEMPLATES["a"], tokenizer=tokenizer), adapter_name="a")
    model.add_adapter("b", DeepPerturbConfig(templates=TEMPLATES["b"], tokenizer=tokenizer))
    return model, {name: PromptCollator(tokenizer, model, adapter_name=name) for name in TEMPLATES}


def _adapter_state(model: PeftModel, name: str) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.base_model.state.named_parameters()
            if key.split(".")[1] == name}


def test_joint_fit_equals_separate_fits() -> None:
    separate, collators = _model()
    alone = {}
    for name in TEMPLATES:
        separate.set_adapter(name)
        alone[name] = fit(separate, collators[name], DATA[name], DATA[name], SETTINGS[name], progress=False)
    joint, joint_collators = _model()
    tasks = [JointTask(name, joint_collators[name], DATA[name], DATA[name], SETTINGS[name]) for name in TEMPLATES]
    together = fit_joint(joint, tasks, progress=False)
    assert joint.active_adapter == "a"  # the adapter active before the fit
    for name in TEMPLATES:
        _assert_same_result(together[name], alone[name])
        expected, got = _adapter_state(separate, name), _adapter_state(joint, name)
        assert expected.keys() == got.keys() and expected
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)
    # "b" stops early and keeps a mid-run state; "a" runs every epoch: the comparison covers both paths
    assert alone["b"].stopped_early and 0 < alone["b"].best_epoch < len(alone["b"].history)
    assert not alone["a"].stopped_early and alone["a"].best_epoch > 0
    moved = _adapter_state(_model()[0], "a")
    assert any(not torch.allclose(moved[key], value) for key, value in _adapter_state(joint, "a").items())


def _assert_same_result(got: training.FitResult, expected: training.FitResult) -> None:
    assert (got.best_dev, got.best_epoch, got.stopped_early) == (expected.best_dev, expected.best_epoch,
                                                                 expected.stopped_early)
    assert [h["dev_p1"] for h in got.history] == [h["dev_p1"] for h in expected.history]
    for mine, theirs in zip(got.history, expected.history, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)


def _final(model: PeftModel) -> dict[str, torch.Tensor]:
    return {**_adapter_state(model, "a"), **_adapter_state(model, "b")}


def test_killed_joint_fit_resumes_as_if_never_stopped(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    reference, collators = _model()
    tasks = [JointTask(name, collators[name], DATA[name], DATA[name], SETTINGS[name]) for name in TEMPLATES]
    expected = fit_joint(reference, tasks, progress=False)

    calls = {"n": 0}
    real_rank = training.rank_answers

    def crashing_rank(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 8:  # 2 initial scores, then 2 a round: b's score in round 3, after a saved that round
            raise KeyboardInterrupt
        return real_rank(*args, **kwargs)

    killed, collators = _model()
    tasks = [JointTask(name, collators[name], DATA[name], DATA[name], SETTINGS[name]) for name in TEMPLATES]
    monkeypatch.setattr(training, "rank_answers", crashing_rank)
    with pytest.raises(KeyboardInterrupt):
        fit_joint(killed, tasks, checkpoint_dir=tmp_path, progress=False)
    saved = {name: json.loads((training.latest_checkpoint(tmp_path / name) / "meta.json").read_text())["loop"]["epoch"]
             for name in TEMPLATES}
    assert saved == {"a": 3, "b": 2}
    resumed_calls = {"n": 0}

    def counting_rank(*args, **kwargs):  # type: ignore[no-untyped-def]
        resumed_calls["n"] += 1
        return real_rank(*args, **kwargs)

    monkeypatch.setattr(training, "rank_answers", counting_rank)
    resumed, collators = _model()
    tasks = [JointTask(name, collators[name], DATA[name], DATA[name], SETTINGS[name]) for name in TEMPLATES]
    got = fit_joint(resumed, tasks, checkpoint_dir=tmp_path, progress=False)
    # only the epochs after the checkpoints ran again (no initial dev scores, no repeated epochs)
    assert resumed_calls["n"] == sum(len(expected[name].history) - saved[name] for name in TEMPLATES)
    for name in TEMPLATES:  # after the kill, "a" and "b" share forwards at other epochs: float tolerance
        _assert_same_result(got[name], expected[name])
    for key, value in _final(reference).items():
        torch.testing.assert_close(_final(resumed)[key], value, rtol=1e-4, atol=1e-5)
    # the checkpoints are fit's: a separate fit of "a" resumes the joint run's finished state and stops at once
    separate, collators = _model()
    separate.set_adapter("a")
    alone = fit(separate, collators["a"], DATA["a"], DATA["a"], SETTINGS["a"], checkpoint_dir=tmp_path / "a",
                progress=False)
    assert alone == got["a"]


def test_joint_fit_refuses_what_it_cannot_do_alike() -> None:
    model, collators = _model()
    with pytest.raises(ValueError, match="collator of adapter 'a'"):
        fit_joint(model, [JointTask("b", collators["a"], DATA["b"], DATA["b"], SETTINGS["b"])], progress=False)
    em = TrainSettings(em=True)
    with pytest.raises(ValueError, match="does not run the EM schedule"):
        fit_joint(model, [JointTask("a", collators["a"], DATA["a"], DATA["a"], em)], progress=False)
    with pytest.raises(ValueError, match="one task per adapter"):
        task = JointTask("a", collators["a"], DATA["a"], DATA["a"], SETTINGS["a"])
        fit_joint(model, [task, task], progress=False)
