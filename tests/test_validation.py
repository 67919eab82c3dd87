"""Input checks at the door (``prompt_adapters.validation``): config field types, including ``Literal`` choice
fields, and candidate ids."""

from __future__ import annotations

import pytest
import torch

from prompt_adapters import MixturePromptConfig, PromptGenConfig, PTuningEncoderConfig
from prompt_adapters.testing import build_tiny_model
from prompt_adapters.validation import check_candidates


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: MixturePromptConfig(templates=["[X] [Y]"], words=1), "MixturePromptConfig.words"),
        (lambda: MixturePromptConfig(templates=["[X] [Y]"], lm_kind=2), "MixturePromptConfig.lm_kind"),
        (lambda: PTuningEncoderConfig(encoder=3), "PTuningEncoderConfig.encoder"),
        (lambda: PromptGenConfig(generator_name_or_path="g", token_form=None), "PromptGenConfig.token_form"),
    ],
)
def test_a_choice_field_of_another_type_is_refused_as_not_a_string(make: object, field: str) -> None:
    with pytest.raises(TypeError, match=rf"{field} must be a string"):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("make", "choices"),
    [
        (lambda: MixturePromptConfig(templates=["[X] [Y]"], words="medium"), "'soft' or 'hard'"),
        (lambda: PTuningEncoderConfig(encoder="gru"), "('lstm', 'mlp', 'none')"),
        (lambda: PromptGenConfig(generator_name_or_path="g", leak_form="x"), "('paper', 'bounded')"),
    ],
)
def test_a_string_outside_the_choices_is_refused_naming_them(make: object, choices: str) -> None:
    with pytest.raises(ValueError, match=rf"must be .*{choices}".replace("(", r"\(").replace(")", r"\)")):
        make()  # type: ignore[operator]


def test_repeated_candidates_are_each_named_once() -> None:
    tokenizer = build_tiny_model("bert")[1]
    with pytest.raises(ValueError, match=r"candidate_ids repeat \[5, 7\]"):
        check_candidates(torch.tensor([4, 5, 7, 5, 7, 7]), 100, tokenizer)
    check_candidates(torch.tensor([4, 5, 7]), 100, tokenizer)
