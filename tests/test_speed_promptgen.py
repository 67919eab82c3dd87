"""benchmarks/speed.py's PromptGen variants on tiny models: the fully trained and the LoRA generator, and the lower
bound of each (the generator run once, teacher-forced) train with a finite loss, and a bound feeds the downstream
model rows of exactly the shapes PromptGen's step does; the generator's growing key/value cache keeps the loss and
gradients and lowers the peak memory (timings are never asserted)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers.cache_utils import DynamicCache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402
import speed_measurement as measurement  # noqa: E402

from prompt_adapters import PromptGenCollator  # noqa: E402
from prompt_adapters.methods.promptgen import model as promptgen_model  # noqa: E402

CPU = torch.device("cpu")


def _concatenating_cache(config: Any) -> DynamicCache:
    """transformers' own cache for the generator, which copies its keys and values at every step."""
    return DynamicCache(config=config)


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return measurement.save_generator("small", tmp_path_factory.mktemp("generator"), seed=0)


def _family(name: str) -> measurement.Family:
    return measurement.build_family(name, speed.parse_args(["--model-size", "small", "--batch", "3"]))


def _downstream_shapes(variant: measurement.Variant, model: Any) -> list[tuple[int, ...]]:
    """Shapes of the attention masks of every downstream-model call of one step (examples, then None rows)."""
    shapes: list[tuple[int, ...]] = []
    downstream = model.base_model.model
    handle = downstream.register_forward_pre_hook(
        lambda _module, _args, kwargs: shapes.append(tuple(kwargs["attention_mask"].shape)), with_kwargs=True
    )
    try:
        loss = variant.run()
    finally:
        handle.remove()
    assert math.isfinite(float(loss))
    return shapes


@pytest.mark.parametrize("family_name", ["bert", "gpt2"])
def test_bounds_feed_the_downstream_model_the_same_rows(generator: Path, family_name: str) -> None:
    family = _family(family_name)
    for rank, names in ((0, (measurement.PROMPTGEN, measurement.PROMPTGEN_BOUND)),
                        (measurement.LORA_RANK, (measurement.PROMPTGEN_LORA, measurement.PROMPTGEN_LORA_BOUND))):
        (step, step_model), (bound, bound_model) = (measurement.promptgen(family, generator, CPU, rank, is_bound)
                                                    for is_bound in (False, True))
        assert (step.name, bound.name) == names
        shapes = _downstream_shapes(step, step_model)
        assert len(shapes) == 2  # the examples, then their None rows in a call of their own
        assert _downstream_shapes(bound, bound_model) == shapes
        step_tokens, step_lengths = step_model.base_model.state.last_generation
        bound_tokens, bound_lengths = bound_model.base_model.state.last_generation
        assert step_tokens.shape == bound_tokens.shape and torch.equal(step_lengths, bound_lengths)
        trained = [sum(p.numel() for group in v.optimizer.param_groups for p in group["params"]) for v in (step, bound)]
        assert trained[0] == trained[1] > 0


def test_first_soft_token_matches_before_any_step(generator: Path) -> None:
    """The bound's decoder positions line up with the loop's: the first token, read after the same start tokens
    and subject by the same generator, is the same distribution."""
    family = _family("bert")
    (step, step_model), (bound, bound_model) = (measurement.promptgen(family, generator, CPU, 0, is_bound)
                                                for is_bound in (False, True))
    with torch.no_grad():
        step.forward(), bound.forward()
    step_tokens, _ = step_model.base_model.state.last_generation
    bound_tokens, _ = bound_model.base_model.state.last_generation
    torch.testing.assert_close(bound_tokens[:, 0], step_tokens[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(bound_tokens[:, 1:], step_tokens[:, 1:])


def test_lora_generator_trains_only_its_adapters(generator: Path) -> None:
    family = _family("gpt2")
    (full, _), (lora, lora_model) = (measurement.promptgen(family, generator, CPU, rank)
                                     for rank in (0, measurement.LORA_RANK))
    counts = [sum(p.numel() for group in v.optimizer.param_groups for p in group["params"]) for v in (full, lora)]
    assert 0 < counts[1] < counts[0]
    lora_names = [name for name, p in lora_model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in name for name in lora_names)


@pytest.mark.parametrize("family_name", ["bert", "gpt2"])
def test_growing_cache_keeps_the_gradients_and_saves_memory(
    generator: Path, family_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoding loop's self-attention cache grows inside one buffer: the step's loss and every gradient are those
    of transformers' concatenating cache, and the generator's forward keeps less memory for the backward (no copy of
    the cache per step)."""
    family = _family(family_name)
    (grown, grown_model), (copied, copied_model) = (measurement.promptgen(family, generator, CPU) for _ in range(2))
    copied_model.load_state_dict(grown_model.state_dict())
    peaks: list[int] = []
    losses: list[float] = []
    grads = []

    def step(variant: measurement.Variant) -> None:
        loss = variant.forward()
        loss.backward()
        losses.append(float(loss))

    def generation(model: Any) -> None:
        """The generator's forward alone: its peak is what the forward keeps for the backward."""
        state = model.base_model.state
        state.generate(state.active_name, *(batch[key] for key in promptgen_model.GENERATOR_KEYS[:3]))

    batch = PromptGenCollator(family.tokenizer, grown_model)([{"X": x, "Y": y, "template": measurement.TEMPLATES[0]}
                                                             for x, y in family.train])
    for variant, model, concatenating in ((grown, grown_model, False), (copied, copied_model, True)):
        with monkeypatch.context() as patch:
            if concatenating:
                patch.setattr(promptgen_model, "_growing_cache", _concatenating_cache)
            step(variant)
            grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad})
            peaks.append(measurement.peak_bytes(lambda m=model: generation(m), CPU))
    assert losses[0] == losses[1]
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=0, atol=0)
    assert peaks[0] < peaks[1]
