"""PromptGen's bad and unusual inputs: the shared vocabulary's minimum, path generators, templates without the
subject, and the adapter switched off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prompt_adapters import PromptGenCollator, PromptGenConfig
from prompt_adapters.template import TemplateError
from prompt_adapters.testing import build_tiny_model

EXAMPLES = [
    {"X": "Dante", "Y": "Paris", "template": "[X] was born in [Y] ."},
    {"X": "Obama", "Y": "London", "template": "[X] died in [Y] ."},
]



def _word_tokenizer(words: list[str], folder: Path) -> Path:
    """A word-level generator tokenizer holding ``words`` only, saved where ``from_pretrained`` reads it."""
    vocab = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", "<mask>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", mask_token="<mask>")
    tokenizer.save_pretrained(folder)
    return folder


def test_a_generator_sharing_few_words_is_refused_with_the_count(tmp_path: Path) -> None:
    _, tok = build_tiny_model("bert")
    folder = _word_tokenizer(["Paris", "London", "born", "died", "in", "zzqx"], tmp_path / "few")
    with pytest.raises(ValueError, match=r"share 5 words .*fewer than min_common_words=100"):
        PromptGenConfig(generator_name_or_path=str(folder), tokenizer=tok)
    config = PromptGenConfig(generator_name_or_path=str(folder), tokenizer=tok, min_common_words=5)
    assert len(config.common_vocab[0]) == 5
    with pytest.raises(ValueError, match="min_common_words must be >= 1, got 0"):
        PromptGenConfig(generator_name_or_path=str(folder), min_common_words=0)


def test_the_generator_may_be_a_path(bart_dir: Path, tmp_path: Path) -> None:
    model, tok = build_tiny_model("bert")
    config = PromptGenConfig(generator_name_or_path=bart_dir, tokenizer=tok, num_before=2, num_after=1)
    assert config.generator_name_or_path == str(bart_dir)
    peft_model = get_peft_model(model, config)
    assert peft_model(**PromptGenCollator(tok, peft_model)(EXAMPLES)).loss.isfinite()
    peft_model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert saved["generator_name_or_path"] == str(bart_dir)


def test_a_template_without_the_subject_is_refused(bart_dir: Path) -> None:
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, PromptGenConfig(generator_name_or_path=str(bart_dir), tokenizer=tok,
                                                       num_before=2, num_after=1))
    collate = PromptGenCollator(tok, peft_model)
    subjectless = {"X": "Dante", "Y": "Paris", "template": "was born in [Y] ."}
    with pytest.raises(TemplateError, match=r"'was born in \[Y\] \.' needs the subject field \[X\]"):
        collate([EXAMPLES[0], subjectless])
    with pytest.raises(TemplateError, match=r"'\[X\] was born in \.' needs .* exactly one answer slot \[Y\]"):
        collate.inputs([{"X": "Dante", "template": "[X] was born in ."}])


def test_the_adapter_switched_off_runs_the_base_model_without_generator_inputs(bart_dir: Path) -> None:
    model, tok = build_tiny_model("bert")
    peft_model = get_peft_model(model, PromptGenConfig(generator_name_or_path=str(bart_dir), tokenizer=tok,
                                                       num_before=2, num_after=1, stopping="fixed"))
    batch = PromptGenCollator(tok, peft_model, leak_rows=False)(EXAMPLES)
    plain = {key: value for key, value in batch.items() if not key.startswith("generator") and key != "prompt_rows"}
    with peft_model.disable_adapter():
        expected = peft_model(**plain).answer_log_probs
    assert expected.shape[0] == 2
    peft_model(**PromptGenCollator(tok, peft_model)(EXAMPLES))  # a training batch, with None rows
    with peft_model.disable_adapter():
        torch.testing.assert_close(peft_model(**batch).answer_log_probs, expected)
        torch.testing.assert_close(peft_model(**plain).answer_log_probs, expected)
        partial = {**plain, "prompt_rows": batch["prompt_rows"]}  # some generator inputs: neither needed nor read
        torch.testing.assert_close(peft_model(**partial).answer_log_probs, expected)
        leaky = peft_model(**PromptGenCollator(tok, peft_model)(EXAMPLES))
    torch.testing.assert_close(leaky.answer_log_probs, expected)
    assert leaky.none_log_probs.shape == expected.shape


def test_generate_with_the_adapter_switched_off_runs_the_base_model(bart_dir: Path) -> None:
    model, tok = build_tiny_model("gpt2")
    tok.padding_side = "left"
    peft_model = get_peft_model(model, PromptGenConfig(generator_name_or_path=str(bart_dir), tokenizer=tok,
                                                       num_before=2, num_after=0, stopping="fixed"))
    inputs = PromptGenCollator(tok, peft_model, leak_rows=False).inputs([{"X": "Dante", "template": EXAMPLES[0]
                                                                          ["template"]}])
    plain = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    settings = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with peft_model.disable_adapter():
        expected = peft_model.generate(**plain, **settings)
        assert torch.equal(peft_model.generate(**inputs, **settings), expected)
        partial = {**plain, "generator_input_ids": inputs["generator_input_ids"]}
        assert torch.equal(peft_model.generate(**partial, **settings), expected)
