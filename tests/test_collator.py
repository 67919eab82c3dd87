"""``PromptCollator`` (``prompt_adapters.data.collator``): every example is read and checked once at the door,
then rendered under each template."""

from __future__ import annotations

from typing import Any

import pytest
from peft import get_peft_model

from prompt_adapters import MixturePromptConfig, PromptCollator
from prompt_adapters.data.collator import CheckedExample
from prompt_adapters.testing import build_tiny_model

TEMPLATES = ["[X] was born in [Y] .", "[P] [X] lived in [Y] ."]


def counting_collator(**options: Any) -> tuple[PromptCollator, list[Any]]:
    """A collator of a data-dependent mixture on the tiny BERT whose ``split_example`` records each call."""
    base, tokenizer = build_tiny_model("bert")
    config = MixturePromptConfig(templates=TEMPLATES, data_dependent=True, tokenizer=tokenizer)
    collate = PromptCollator(tokenizer, get_peft_model(base, config), **options)
    calls: list[Any] = []
    split = collate.split_example

    def counted(example: Any) -> Any:
        calls.append(example)
        return split(example)

    collate.split_example = counted  # type: ignore[method-assign]
    return collate, calls


@pytest.mark.parametrize(
    ("options", "examples"),
    [
        ({}, [("Dante", "Paris"), {"X": "Obama", "Y": "London"}]),
        ({"answers": "many"}, [("Dante", "Paris"), {"X": "Obama", "Y": "London"}]),
        ({"answers": "many"}, [{"X": "Dante", "choices": ["Paris", "London"], "label": 0}]),
    ],
)
def test_each_example_is_read_once_at_the_door(options: dict[str, Any], examples: list[Any]) -> None:
    """Answer rows, query rows (data-dependent weights) and choice labels all come from one reading."""
    collate, calls = counting_collator(**options)
    batch = collate(examples)
    assert calls == examples
    templates = len(TEMPLATES)
    choices = int(batch["num_choices"]) if "num_choices" in batch else 1
    assert batch["input_ids"].shape[0] == len(examples) * templates * (choices + 1)


def test_the_door_returns_what_rendering_needs() -> None:
    collate, _ = counting_collator(answers="many")
    checked = collate.check_example({"X": "Dante", "choices": ["Paris", "London"], "label": 1})
    assert isinstance(checked, CheckedExample)
    assert checked.values == {"X": "Dante"} and checked.label == 1
    assert len(checked.targets) == 2 and len({len(target) for target in checked.targets}) == 1
    assert len(collate.render_example(checked)) == 2 * len(TEMPLATES)
    assert len(collate.render_queries(checked)) == len(TEMPLATES)


def test_a_bad_example_is_refused_at_the_door_before_rendering() -> None:
    collate, _ = counting_collator()
    rendered: list[CheckedExample] = []
    collate.render_example = lambda checked: rendered.append(checked) or []  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="'Paris London' is 2 tokens"):
        collate([("Dante", "Paris London")])
    assert rendered == []
