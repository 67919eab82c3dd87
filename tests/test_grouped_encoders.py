"""Mixed-adapter batches computed at once: P-tuning encoders that share a shape run as one batched computation
(every adapter's table and gradients equal those of its own ``nn.LSTM`` / MLP encoder), and single-token scoring
combines every adapter's rows in one computation (each example's fields equal its adapter's alone)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from prompt_adapters import PromptCollator, PTuningEncoderConfig
from prompt_adapters.methods.ptuning import PTuningEncoderLayer
from prompt_adapters.testing import build_tiny_model

#: "a" and "b" share every encoder shape; "c" has fewer soft tokens; "d" has one template shaped like "a"'s and
#: one of its own, so its encoders fall into two groups
TEMPLATES = {
    "a": ["[P*3] [X] [P*3] [Y] [P*3]"],
    "b": ["[P*3] [X] [P*3] [Y] [P*3]"],
    "c": ["[P*2] [X] [Y] ."],
    "d": ["[P*3] [X] [P*3] [Y] [P*3]", "[P*4] [X] lived in [Y] ."],
}
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(encoder: str, **options: object) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """A tiny BERT with the adapters of TEMPLATES, every encoder weight moved off its initial value."""
    base, tokenizer = build_tiny_model("bert")
    names = list(TEMPLATES)
    configs = {name: PTuningEncoderConfig(templates=TEMPLATES[name], encoder=encoder, tokenizer=tokenizer, **options)
               for name in names}
    torch.manual_seed(0)
    model = get_peft_model(base, configs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, configs[name])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.base_model.state.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    model.base_model.set_requires_grad(names, True)
    return model.eval(), tokenizer


def encoder_gradients(state: PTuningEncoderLayer, tables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradients of every encoder parameter for a fixed random weighting of the tables."""
    generator = torch.Generator().manual_seed(2)
    state.zero_grad(set_to_none=True)
    total = sum((table * torch.randn(table.shape, generator=generator)).sum() for table in tables.values())
    total.backward()
    gradients = {name: param.grad.clone() for name, param in state.encoder.named_parameters()}
    state.zero_grad(set_to_none=True)
    return gradients


@pytest.mark.parametrize(
    ("encoder", "options"),
    [("lstm", {}), ("lstm", {"lstm_layers": 3, "lstm_hidden_size": 5, "mlp_hidden_size": 7}), ("mlp", {}),
     ("none", {})],
)
def test_grouped_tables_and_gradients_equal_each_encoder_alone(encoder: str, options: dict) -> None:
    model, _ = make_model(encoder, **options)
    state = model.base_model.state
    names = list(TEMPLATES)
    grouped = state.prompt_tables(names)
    alone = {name: state.prompt_table(name) for name in names}
    assert list(grouped) == names
    for name in names:
        torch.testing.assert_close(grouped[name], alone[name], **TOLERANCE)
    grouped_gradients, alone_gradients = encoder_gradients(state, grouped), encoder_gradients(state, alone)
    assert set(grouped_gradients) == {name for name, _ in state.encoder.named_parameters()}
    for name, gradient in grouped_gradients.items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(gradient, alone_gradients[name], **TOLERANCE)


def test_encoders_of_one_shape_skip_their_own_lstm() -> None:
    """Only an encoder with no same-shaped partner runs its nn.LSTM; the others run in the batched recurrence."""
    model, _ = make_model("lstm")
    state = model.base_model.state
    calls: list[str] = []
    for name, encoders in state.encoder.items():
        for index, encoder in enumerate(encoders):
            encoder.lstm.register_forward_hook(lambda *_, label=f"{name}.{index}": calls.append(label))
    state.prompt_tables(list(TEMPLATES))
    assert sorted(calls) == ["c.0", "d.1"]  # "c" (2 rows) and "d"'s second template (4 rows) have no partner
    calls.clear()
    state.prompt_tables(["a"])
    assert calls == ["a.0"]


def test_tables_without_autograd_are_cached_and_refreshed() -> None:
    model, _ = make_model("lstm")
    state = model.base_model.state
    with torch.no_grad():
        first = state.prompt_tables(["a", "b"])
        assert state.prompt_tables(["a", "b"])["a"] is first["a"]
        state.encoder["b"][0].embedding.weight.add_(1.0)
        second = state.prompt_tables(["a", "b"])
    assert second["a"] is first["a"]
    assert not torch.allclose(second["b"], first["b"])
    torch.testing.assert_close(second["b"], state.prompt_table("b"), **TOLERANCE)


def test_mixed_batch_loss_and_gradients_equal_separate_steps() -> None:
    """End to end: a batch mixing same-shaped and differently shaped adapters gives each adapter its own loss and
    the gradients it gets alone."""
    model, tokenizer = make_model("lstm")
    state = model.base_model.state
    examples = [{"X": "Dante", "Y": "Paris", "adapter": name} for name in TEMPLATES]
    examples += [{"X": "Obama", "Y": "Rome", "adapter": name} for name in ("b", "a", "d")]
    mixed = model(**PromptCollator(tokenizer, model)(examples))
    mixed.loss.backward()
    joint = {name: param.grad.clone() for name, param in state.named_parameters() if param.grad is not None}
    state.zero_grad(set_to_none=True)
    for name in TEMPLATES:
        model.set_adapter(name)
        own = [{k: v for k, v in e.items() if k != "adapter"} for e in examples if e["adapter"] == name]
        loss = model(**PromptCollator(tokenizer, model, adapter_name=name)(own)).loss
        torch.testing.assert_close(mixed.adapter_losses[name], loss, rtol=1e-5, atol=1e-6)
        loss.backward()
    assert set(joint) == {name for name, param in state.named_parameters() if param.grad is not None}
    for name, gradient in joint.items():
        torch.testing.assert_close(gradient, dict(state.named_parameters())[name].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("disabled", [False, True])
def test_scoring_at_once_equals_each_adapter_alone(disabled: bool) -> None:
    """Learned mixture weights (K = 2), K = 1 adapters and an adapter without a known answer (no loss, NaN template
    field) in one batch; disabled adapters score with uniform weights, as alone."""
    model, tokenizer = make_model("lstm")
    with torch.no_grad():
        model.base_model.state.mixture["d"].copy_(torch.tensor([0.7, -0.4]))
    examples = [{"X": "Dante", "Y": "Paris", "adapter": "d"}, {"X": "Obama", "adapter": "c"},
                {"X": "Rome", "Y": "London", "adapter": "a"}, {"X": "Berlin", "Y": "Rome", "adapter": "d"}]
    state = model.base_model.state
    with torch.no_grad(), model.disable_adapter() if disabled else contextlib.nullcontext():
        mixed = model(**PromptCollator(tokenizer, model)(examples))
        assert set(mixed.adapter_losses) == {"a", "d"}
        torch.testing.assert_close(mixed.loss, mixed.adapter_losses["a"] + mixed.adapter_losses["d"])
        assert torch.isnan(mixed.template_log_probs[1]).all()
        for name in ("a", "d"):
            model.set_adapter(name)
            own = [index for index, example in enumerate(examples) if example["adapter"] == name]
            batch = PromptCollator(tokenizer, model, adapter_name=name)(
                [{k: v for k, v in examples[i].items() if k != "adapter"} for i in own]
            )
            single = model(**batch)
            templates = state.num_templates(name)
            torch.testing.assert_close(mixed.adapter_losses[name], single.loss, **TOLERANCE)
            for position, index in enumerate(own):
                torch.testing.assert_close(mixed.answer_log_probs[index], single.answer_log_probs[position],
                                           **TOLERANCE)
                torch.testing.assert_close(mixed.template_log_probs[index, :templates],
                                           single.template_log_probs[position], **TOLERANCE)
                torch.testing.assert_close(mixed.mixture_log_weights[index, :templates],
                                           single.mixture_log_weights[position], **TOLERANCE)
                assert torch.isneginf(mixed.mixture_log_weights[index, templates:]).all()
    uniform = torch.full((2,), -math.log(2))
    weights = mixed.mixture_log_weights[0]
    assert torch.allclose(weights, uniform) == disabled
