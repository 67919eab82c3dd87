"""benchmarks/speed.py's PromptGen variants on tiny models: the fully trained and the LoRA generator, and the lower
bound of each (the generator run once, teacher-forced) train with a finite loss, and a bound feeds the downstream
model rows of exactly the shapes PromptGen's step does (timings are never asserted)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402
import speed_measurement as measurement  # noqa: E402

CPU = torch.device("cpu")


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
