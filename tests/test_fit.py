"""The one check of an adapter against its base model (``prompt_adapters.tuner.fit``)."""

from __future__ import annotations

import re

import pytest
from peft import get_peft_model

from prompt_adapters import MixturePromptConfig
from prompt_adapters.model_facts import model_fingerprint
from prompt_adapters.testing import build_tiny_model
from prompt_adapters.tuner.fit import check_adapter_fits

TEMPLATES = ["[X] was born in [Y] ."]


def attached_config(family: str = "bert") -> MixturePromptConfig:
    """The config of an adapter attached to the tiny ``family`` model: compiled, lm_kind and fingerprint filled."""
    base, tokenizer = build_tiny_model(family)
    return get_peft_model(base, MixturePromptConfig(templates=TEMPLATES, tokenizer=tokenizer)).peft_config["default"]


def test_a_new_adapter_gets_the_fingerprint_of_its_model() -> None:
    base, tokenizer = build_tiny_model("bert")
    config = MixturePromptConfig(templates=TEMPLATES, tokenizer=tokenizer, lm_kind="masked")
    assert check_adapter_fits("default", config, base) == model_fingerprint(base)


@pytest.mark.parametrize(("key", "value"), [("vocab_size", 7), ("hidden_size", 3), ("stack_depths", [9])])
def test_every_shape_the_adapter_was_made_for_is_checked_in_one_place(key: str, value: object) -> None:
    """The vocabulary size too: it was skipped by the checks and left to a second check in the tuner."""
    config = attached_config()
    config.model_fingerprint = {**config.model_fingerprint, key: value}
    with pytest.raises(ValueError, match=re.escape(f"{key}={value} (model_type=bert), but this model has {key}=")):
        check_adapter_fits("default", config, build_tiny_model("bert")[0])


def test_an_adapter_fits_the_model_it_was_made_on() -> None:
    config = attached_config()
    assert check_adapter_fits("default", config, build_tiny_model("bert")[0]) == config.model_fingerprint


def test_another_kind_of_lm_is_refused_first() -> None:
    config = attached_config()
    with pytest.raises(ValueError, match="lm_kind='masked', but GPT2LMHeadModel is a causal LM"):
        check_adapter_fits("default", config, build_tiny_model("gpt2")[0])
