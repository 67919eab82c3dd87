"""PromptGen's exact speed-ups of its decoding loop keep the loss, scores and gradients: each linear layer's weight
gradient computed once per generation, and the self-attention cache growing inside one buffer."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers import BartConfig, Gemma2Config
from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

from prompt_adapters import PromptGenCollator, PromptGenConfig
from prompt_adapters.methods.promptgen import deferred
from prompt_adapters.methods.promptgen import model as promptgen_model
from prompt_adapters.testing import build_tiny_model, perturb_trainable, save_tiny_model

EXAMPLES = [
    {"X": "Dante", "Y": "Paris", "template": "[X] was born in [Y] ."},
    {"X": "Barack Obama Senior", "Y": "London", "template": "[X] died in [Y] ."},
]


def _recurrent_loss(layers: nn.Sequential, start: torch.Tensor, steps: int) -> torch.Tensor:
    """A loop that feeds each output back as the next input, as the generator's decoding loop does."""
    state, total = start, start.new_zeros(())
    for _ in range(steps):
        state = torch.tanh(layers(state))
        total = total + state.pow(2).sum()
    return total + layers[0].weight.sum()  # the weight is also used outside the block


def _gradients(layers: nn.Sequential) -> dict[str, torch.Tensor]:
    grads = {name: param.grad.clone() for name, param in layers.named_parameters()}
    layers.zero_grad(set_to_none=True)
    return grads


def test_the_weight_gradient_of_a_decoding_loop_is_the_sum_over_its_steps() -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 6, bias=False))
    start = torch.randn(3, 6)
    plain = _recurrent_loss(layers, start, steps=7)
    plain.backward()
    expected = _gradients(layers)

    calls: list[int] = []
    with one_weight_gradient_spy(calls), deferred.one_weight_gradient_per_layer(layers):
        assert all("forward" in vars(layer) for layer in (layers[0], layers[2]))
        loss = _recurrent_loss(layers, start, steps=7)
    assert not any("forward" in vars(layer) for layer in layers)  # the layers are restored after the block
    assert len(calls) == 14  # two linear layers, seven steps, every call through the kept-rows path
    torch.testing.assert_close(loss, plain)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(_gradients(layers), expected)
    loss.backward()  # a second backward over the same graph gives the same gradients again
    torch.testing.assert_close(_gradients(layers), expected)


@contextlib.contextmanager
def one_weight_gradient_spy(calls: list[int]):  # type: ignore[no-untyped-def]
    """Counts the linear calls that take the kept-rows path."""
    original = deferred._step_linear

    def counted(inputs: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(inputs, **kwargs)

    deferred._step_linear = counted
    try:
        yield
    finally:
        deferred._step_linear = original


def test_layers_are_left_alone_without_gradients_under_autocast_or_with_a_replaced_forward() -> None:
    layers = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad(), deferred.one_weight_gradient_per_layer(layers):
        assert not any("forward" in vars(layer) for layer in layers)
    with torch.autocast("cpu", dtype=torch.bfloat16), deferred.one_weight_gradient_per_layer(layers):
        assert not any("forward" in vars(layer) for layer in layers)
    replaced = layers[1].forward = lambda inputs: inputs  # e.g. an offloading hook's wrapper
    layers[0].weight.requires_grad_(False)
    with deferred.one_weight_gradient_per_layer(layers):
        assert "forward" not in vars(layers[0])  # frozen: autograd computes no weight gradient anyway
        assert layers[1].forward is replaced
    assert layers[1].forward is replaced


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generators")
    return {family: save_tiny_model(family, root / family, seed=1) for family in ("bart", "llama")}


def _promptgen_batch(downstream: str, generator_family: str, generators: dict[str, Path]) -> tuple[Any, dict]:
    """A PromptGen model (leak rows, stopping segments) on a tiny downstream LM and its training batch."""
    model, tok = build_tiny_model(downstream)
    stopping = "mask" if generator_family == "bart" else "eos"
    config = PromptGenConfig(generator_name_or_path=str(generators[generator_family]), tokenizer=tok, num_before=4,
                             num_after=2, stopping=stopping, leak_penalty=0.3)
    model = get_peft_model(model, config)
    perturb_trainable(model, 0.05)
    return model, PromptGenCollator(tok, model)(EXAMPLES)


def _step(model: Any, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One training step's loss and scores, and the gradients of every trainable parameter (then cleared)."""
    out = model(**batch)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return {key: out[key].detach() for key in ("loss", "answer_log_probs", "none_log_probs")}, grads


@pytest.mark.parametrize(("downstream", "generator_family"), [("bert", "bart"), ("llama", "llama"), ("gpt2", "bart")])
def test_promptgen_loss_and_gradients_equal_those_of_per_step_weight_gradients(
    downstream: str, generator_family: str, generators: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training step of PromptGen (leak rows, stopping segments) gives the loss, the scores and the generator
    gradients of the per-step path, to float tolerance, with the kept-rows path actually taken."""
    model, batch = _promptgen_batch(downstream, generator_family, generators)
    calls: list[int] = []
    with one_weight_gradient_spy(calls):
        fast, fast_grads = _step(model, batch)
    assert calls, "no generator layer took the kept-rows path"
    monkeypatch.setattr(promptgen_model, "one_weight_gradient_per_layer", lambda module: contextlib.nullcontext())
    plain, plain_grads = _step(model, batch)
    for key, value in plain.items():
        torch.testing.assert_close(fast[key], value, msg=key)
    assert fast_grads.keys() == plain_grads.keys()
    assert any(grad.abs().sum() > 0 for grad in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize(("downstream", "generator_family"), [("bert", "bart"), ("llama", "llama"), ("gpt2", "bart")])
def test_growing_cache_gives_the_concatenating_caches_step(
    downstream: str, generator_family: str, generators: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoder-decoder and decoder-only generators, segments that stop early, leak rows: the loss, the scores and the
    generator's gradients are those of transformers' concatenating cache, bit for bit."""
    model, batch = _promptgen_batch(downstream, generator_family, generators)
    grown, grown_grads = _step(model, batch)
    monkeypatch.setattr(promptgen_model, "_growing_cache", lambda config: DynamicCache(config=config))
    copied, copied_grads = _step(model, batch)
    for key, value in copied.items():
        torch.testing.assert_close(grown[key], value, rtol=0, atol=0, msg=key)
    assert grown_grads.keys() == copied_grads.keys()
    assert any(grad.abs().sum() > 0 for grad in copied_grads.values())
    for name, grad in copied_grads.items():
        torch.testing.assert_close(grown_grads[name], grad, rtol=0, atol=0, msg=name)


def test_growing_cache_keeps_the_generators_sliding_window_layers() -> None:
    """Only plain full-attention layers grow in place; a sliding-window layer stays the one the model declares."""
    gemma = Gemma2Config(num_hidden_layers=2, sliding_window=4)
    assert [type(layer) for layer in promptgen_model._growing_cache(gemma).layers] == [
        DynamicSlidingWindowLayer, promptgen_model._GrowingLayer]
    bart = BartConfig(encoder_layers=2, decoder_layers=3)
    assert [type(layer) for layer in promptgen_model._growing_cache(bart).layers] == [promptgen_model._GrowingLayer] * 3
