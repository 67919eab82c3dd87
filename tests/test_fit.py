"""The one check of an adapter against its base model (``prompt_adapters.tuner.fit``)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peft import PeftModel, get_peft_model

from prompt_adapters import MixturePromptConfig, PromptCollator
from prompt_adapters.model_facts import model_fingerprint
from prompt_adapters.testing import build_tiny_model, build_tokenizer
from prompt_adapters.tuner.fit import check_adapter_fits

TEMPLATE = "[X] was born in [Y] ."
TEMPLATES = [TEMPLATE]


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


# ------------------------------------------------------------------------------------------------ soft rows never read


def bert_tokenizer() -> Any:
    return build_tokenizer("bert")


def gpt2_tokenizer() -> Any:
    tokenizer = build_tokenizer("gpt2")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attach(config: Any, family: str = "bert") -> Any:
    return get_peft_model(build_tiny_model(family)[0], config)


AFTER_ANSWER = "[P*3] [X] [P*3] [Y] [P*11]"


def unreachable_row_warnings(make: Callable[[], Any]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught if "after [Y]" in str(w.message)]


def test_soft_rows_after_the_answer_on_a_causal_lm_warn_with_their_count(tmp_path: Path) -> None:
    """A causal LM never reads past [Y]: the 11 rows there get no gradient, and the warning says how many."""
    tokenizer = gpt2_tokenizer()
    with pytest.warns(UserWarning, match=r"'default' has 11 soft row\(s\) after \[Y\] \('\[P\*3\] \[X\] \[P\*3\] "
                                         r"\[Y\] \[P\*11\]': 11\), which a causal LM never reads"):
        model = attach(MixturePromptConfig(templates=[AFTER_ANSWER], tokenizer=tokenizer), "gpt2")
    model(**PromptCollator(tokenizer, model)([("Dante", "Paris")])).loss.backward()
    reached = model.base_model.state.table["default"].grad.abs().sum(1) > 0
    assert reached.tolist() == [True] * 6 + [False] * 11
    model.save_pretrained(tmp_path / "adapter")
    assert unreachable_row_warnings(  # loaded for inference: the rows cost nothing there
        lambda: PeftModel.from_pretrained(build_tiny_model("gpt2")[0], tmp_path / "adapter")) == []


def test_soft_rows_after_the_answer_are_fine_elsewhere() -> None:
    """Masked and seq2seq LMs read the whole template; a causal template ending at [Y] has nothing after it."""
    assert unreachable_row_warnings(lambda: attach(MixturePromptConfig(templates=[AFTER_ANSWER],
                                                                       tokenizer=bert_tokenizer()))) == []
    assert unreachable_row_warnings(lambda: attach(MixturePromptConfig(templates=["[P*3] [X] [P*3] [Y]"],
                                                                       tokenizer=gpt2_tokenizer()), "gpt2")) == []
    assert len(unreachable_row_warnings(lambda: attach(MixturePromptConfig(templates=[TEMPLATE, AFTER_ANSWER],
                                                                           tokenizer=gpt2_tokenizer()), "gpt2"))) == 1
