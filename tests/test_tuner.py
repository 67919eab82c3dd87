"""The shared tuner (``prompt_adapters.tuner``): an adapter whose loss cannot reach a trainable parameter says why
on ``backward()``, and stays a plain loss where no backward is meant."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model

from prompt_adapters import MixturePromptConfig, PromptCollator
from prompt_adapters.testing import build_tiny_model, build_tokenizer

TEMPLATE = "[X] was born in [Y] ."


@functools.cache
def bert_tokenizer() -> Any:
    return build_tokenizer("bert")


def attach(config: Any) -> Any:
    return get_peft_model(build_tiny_model("bert")[0], config)


def adapted_bert() -> Any:
    """A tiny BERT with a one-template mixture adapter."""
    return attach(MixturePromptConfig(templates=[TEMPLATE], tokenizer=bert_tokenizer()))


def collate(*examples: Any) -> Any:
    return PromptCollator(bert_tokenizer(), adapted_bert())(list(examples))



def hard_adapter() -> Any:
    """One hard template without [P]: no soft row and no mixture weight, nothing to train."""
    return attach(MixturePromptConfig(templates=[TEMPLATE], words="hard", tokenizer=bert_tokenizer()))


def test_training_an_adapter_with_nothing_to_train_says_so_on_backward() -> None:
    model = hard_adapter()
    loss = model(**PromptCollator(bert_tokenizer(), model)([("Dante", "Florence")])).loss
    with pytest.raises(RuntimeError) as caught:
        loss.backward()
    message = str(caught.value)
    assert "adapter 'default' has no trainable rows" in message and f"['{TEMPLATE}'] have no soft token" in message
    assert "Expected soft tokens to train" in message


def test_a_frozen_adapter_says_how_to_load_it_for_training(tmp_path: Path) -> None:
    """PeftModel.from_pretrained loads for inference by default (peft's rule); training it then names the cause."""
    adapted_bert().save_pretrained(tmp_path / "adapter")
    model = PeftModel.from_pretrained(build_tiny_model("bert")[0], tmp_path / "adapter")
    with pytest.raises(RuntimeError, match=r"adapter 'default' is frozen.*is_trainable=True"):
        model(**collate(("Dante", "Florence"))).loss.backward()


def test_a_loss_without_gradient_is_left_alone_where_no_backward_is_meant() -> None:
    """Scoring under no_grad, or with the adapter disabled (the base model), returns the plain loss, same value."""
    model = hard_adapter()
    batch = PromptCollator(bert_tokenizer(), model)([("Dante", "Florence")])
    explained = model(**batch).loss
    with torch.no_grad():
        plain = model(**batch).loss
    assert plain.grad_fn is None and explained.grad_fn is not None
    torch.testing.assert_close(explained.detach(), plain, rtol=0, atol=0)
    with model.disable_adapter():
        assert not model(**batch).loss.requires_grad
