"""PromptGen's training options: answer words per relation, a trained prompt length, a LoRA generator and the
supervised warm-up."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model

from prompt_adapters import PromptGenCollator, PromptGenConfig
from prompt_adapters.methods.promptgen.model import length_log_probs
from prompt_adapters.methods.promptgen.warmup import template_words, unwritable_reason, warm_up
from prompt_adapters.testing import build_tiny_model, perturb_trainable, save_tiny_model

BORN, DIED = "[X] was born in [Y] .", "[X] died in [Y] ."
EXAMPLES = [{"X": "Dante", "Y": "Paris", "template": BORN}, {"X": "Obama", "Y": "London", "template": DIED}]



def _model(generator: Path, family: str = "bert", **kwargs):  # type: ignore[no-untyped-def]
    model, tok = build_tiny_model(family)
    config = PromptGenConfig(generator_name_or_path=str(generator), tokenizer=tok, **kwargs)
    return get_peft_model(model, config), tok


def _first_segments(model, tok, examples=EXAMPLES) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        model(**PromptGenCollator(tok, model, leak_rows=False)(examples))
    return model.base_model.state.last_generation[1][:, 0]


def test_answer_words_per_relation_end_only_their_relations_segment(bart_dir: Path) -> None:
    model, tok = _model(bart_dir, num_before=4, num_after=1)
    with torch.no_grad():
        model(**PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES))
    steps = model.base_model.state.last_generation[0]
    first = model.base_model.state.options["default"]["down_ids"][steps[:, 0].argmax(-1)]
    word = tok.convert_ids_to_tokens(int(first[0]))  # what the generator writes first for the BORN example
    assert _first_segments(model, tok)[0] > 0

    own, _ = _model(bart_dir, num_before=4, num_after=1, relation_answer_words={BORN: [word], DIED: []})
    assert own.peft_config["default"].relation_answer_stops == {BORN: [int(first[0])], DIED: []}
    assert _first_segments(own, tok)[0] == 0
    other, _ = _model(bart_dir, num_before=4, num_after=1, relation_answer_words={DIED: [word]})
    assert _first_segments(other, tok)[0] > 0  # BORN has no words of its own and no pooled words
    pooled, _ = _model(bart_dir, num_before=4, num_after=1, answer_words=[word], relation_answer_words={DIED: []})
    assert _first_segments(pooled, tok)[0] == 0  # a template without its own words falls back to answer_words

    with pytest.raises(ValueError, match=r"stopping='fixed'.*1 relations in relation_answer_words"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), stopping="fixed", relation_answer_words={BORN: ["x"]})
    with pytest.raises(TypeError, match=r"relation_answer_words\['\[X\] was born in \[Y\] \.'\] must be a list"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), relation_answer_words={BORN: "Paris"})


def test_length_distribution_from_stop_probabilities() -> None:
    stop = torch.tensor([[0.5, 0.2, 0.1]])
    expected = torch.tensor([[0.5, 0.5 * 0.2, 0.5 * 0.8 * 0.1, 0.5 * 0.8 * 0.9]])
    torch.testing.assert_close(length_log_probs(stop).exp(), expected)
    assert math.isclose(float(length_log_probs(torch.rand(4, 6)).exp().sum(1).mean()), 1.0, rel_tol=1e-5)


def test_trained_length_loss_averages_the_prompts_of_every_length(bart_dir: Path) -> None:
    m = 3
    model, tok = _model(bart_dir, "gpt2", num_before=m, num_after=0, stopping="eos", trained_length=True,
                        leak_penalty=0.0)
    batch = PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES)
    out = model(**batch)
    weights = model.base_model.state.last_length_log_probs
    assert weights.shape == (2, m + 1)
    per_length = []
    for length in range(m + 1):  # the same generator writing exactly `length` tokens, or no prompt at all
        fixed, _ = _model(bart_dir, "gpt2", num_before=max(length, 1), num_after=0, stopping="fixed",
                          templates=["[X] [Y]"] if length == 0 else [], leak_penalty=0.0)
        with torch.no_grad():
            per_length.append(fixed(**PromptGenCollator(tok, fixed, leak_rows=False)(EXAMPLES)).answer_log_probs)
    scores = torch.stack(per_length, dim=1)  # (examples, lengths, candidates)
    expected = torch.logsumexp(scores + weights.detach().unsqueeze(-1), dim=1)
    torch.testing.assert_close(out.answer_log_probs, expected, rtol=1e-4, atol=1e-5)
    gold = batch["score_targets"].reshape(-1)
    torch.testing.assert_close(out.loss, -expected.gather(1, gold[:, None]).mean(), rtol=1e-4, atol=1e-5)
    (gradient,) = torch.autograd.grad(out.loss, weights)
    assert gradient.abs().sum() > 0  # the length gets a gradient

    with torch.no_grad():  # scoring without gradients reads the same average; the prompt shown is the likeliest
        evaluated = model(**batch)
        texts = model.base_model.generated_prompts(PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES), tok)
    torch.testing.assert_close(evaluated.answer_log_probs, expected, rtol=1e-4, atol=1e-5)
    written = model.base_model.state.last_generation[1][:, 0]
    assert torch.equal(written, weights.argmax(-1))
    assert [len(text.split()) - 1 for text in texts] == written.tolist()
    with pytest.raises(ValueError, match=r"trained_length=True .* stopping='fixed'"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), stopping="fixed", trained_length=True)


def test_lora_generator_trains_only_its_adapters_and_saves(bart_dir: Path, tmp_path: Path) -> None:
    model, tok = _model(bart_dir, num_before=3, num_after=1, generator_lora_rank=4)
    generator = model.base_model.state.generator["default"]
    trainable = {name for name, parameter in generator.named_parameters() if parameter.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    full = sum(parameter.numel() for parameter in generator.parameters())
    assert model.get_nb_trainable_parameters()[0] < 0.2 * full
    model.set_adapter("default")  # peft's set_adapter marks the adapter trainable again: the base stays frozen
    model.base_model.set_requires_grad("default", True)
    assert {name for name, parameter in generator.named_parameters() if parameter.requires_grad} == trainable
    out = model(**PromptGenCollator(tok, model)(EXAMPLES))
    out.loss.backward()
    assert all(parameter.grad is None for name, parameter in generator.named_parameters() if name not in trainable)
    perturb_trainable(model)
    batch = PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES)
    with torch.no_grad():
        expected = model(**batch).answer_log_probs
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(build_tiny_model("bert")[0], tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).answer_log_probs, expected)
    with pytest.raises(ValueError, match=r"generator_lora_rank must be >= 0 .* got -1"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), generator_lora_rank=-1)


def test_template_words_split_at_the_slots() -> None:
    assert template_words(BORN) == (["was", "born", "in"], ["."])
    assert template_words("[X] is [Y]") == (["is"], [])
    assert template_words("The capital of [X] is [Y] .") is None


def test_warm_up_teaches_the_generator_the_manual_prompt(bart_dir: Path) -> None:
    torch.manual_seed(0)
    model, tok = _model(bart_dir, num_before=4, num_after=2)
    collate = PromptGenCollator(tok, model, leak_rows=False)
    assert model.base_model.generated_prompts(collate(EXAMPLES), tok) != ["was born in [MASK] .", "died in [MASK] ."]
    paraphrases = {DIED: ["The city of [X] is [Y] .", "[X] zzqx in [Y] ."]}
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 targets .*'text before \[X\]': 1"):
        report = warm_up(model, collate, EXAMPLES, paraphrases, epochs=30, learning_rate=3e-3, batch_size=4)
    assert report["targets"] == 2 and report["steps"] == 30
    assert report["last_epoch_loss"] < 0.5 * report["first_epoch_loss"]
    assert model.base_model.generated_prompts(collate(EXAMPLES), tok) == ["was born in [MASK] .", "died in [MASK] ."]
    with pytest.raises(ValueError, match="epochs >= 1"):
        warm_up(model, collate, EXAMPLES, epochs=0)


def test_warm_up_on_chosen_prompts_only_and_why_a_prompt_cannot_be_written(bart_dir: Path) -> None:
    torch.manual_seed(0)
    model, tok = _model(bart_dir, num_before=4, num_after=2)
    collate = PromptGenCollator(tok, model, leak_rows=False)
    assert unwritable_reason(model, collate, "[X] died in [Y] .") is None
    assert unwritable_reason(model, collate, "The city of [X] is [Y] .") == "text before [X]"
    assert unwritable_reason(model, collate, "[X] zzqx in [Y] .") == "a word outside the shared vocabulary"
    assert unwritable_reason(model, collate, "[X] was born in a city in [Y] .") == "longer than num_before / num_after"
    chosen = {BORN: ["[X] died in [Y] ."], DIED: ["[X] died in [Y] ."]}  # each relation's one chosen prompt
    report = warm_up(model, collate, EXAMPLES, chosen, epochs=30, learning_rate=3e-3, batch_size=4,
                     include_template=False)
    assert report["targets"] == 2 and report["skipped"] == {}
    assert model.base_model.generated_prompts(collate(EXAMPLES), tok) == ["died in [MASK] ."] * 2  # BORN not taught


def test_warm_up_of_a_decoder_only_generator(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, tok = _model(save_tiny_model("llama", tmp_path / "llama"), "gpt2", num_before=4, num_after=0,
                        stopping="eos", token_form="straight_through")
    collate = PromptGenCollator(tok, model, leak_rows=False)
    report = warm_up(model, collate, EXAMPLES, epochs=40, learning_rate=3e-3, batch_size=4)
    assert report["last_epoch_loss"] < 0.2 * report["first_epoch_loss"]
    prompts = model.base_model.generated_prompts(collate(EXAMPLES), tok)
    assert prompts == ["was born in [Y]", "died in [Y]"]


def test_harness_flags_build_the_options_and_record_the_warm_up(fixture_data: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import lama

    bert, bart = save_tiny_model("bert", tmp_path / "bert"), save_tiny_model("bart", tmp_path / "bart")
    common = ["--model", str(bert), "--data-dir", str(fixture_data / "lama"), "--relations", "P19,P1376",
              "--max-train", "12", "--max-test", "8", "--epochs", "1", "--method", "promptgen", "--generator",
              str(bart), "--num-before", "3", "--num-after", "1"]
    lama.main([*common, "--output", str(tmp_path / "run"), "--stop-at-answers", "--answer-words-per-relation",
               "--trained-length", "--generator-lora-rank", "2", "--warm-up-epochs", "1",
               "--warm-up-prompts", "manual,pararel"])
    records = [json.loads(path.read_text()) for path in (tmp_path / "run" / "relations").glob("*.json")]
    assert len(records) == 2
    warm = records[0]["warm_up"]
    assert warm["steps"] >= 1 and warm["targets"] + sum(warm["skipped"].values()) > 24  # manual + ParaRel targets
    assert warm["relations_without_prompts"] == {"pararel": ["P1376"]}  # the excerpts hold P19's ParaRel file only
    assert "selected" not in warm
    lama.main([*common, "--output", str(tmp_path / "best"), "--warm-up-epochs", "1", "--warm-up-prompts",
               "manual,pararel", "--warm-up-select", "best"])
    best = {r["relation"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "best" / "relations").glob("*"))}
    warm = best["P19"]["warm_up"]
    # one target per training fact of a relation with a writable prompt; here the tiny generator cannot write
    # P1376's only prompt ("capital" is no shared word)
    assert warm["selected"]["P1376"] is None and warm["selected"]["P19"] is not None
    assert warm["targets"] == best["P19"]["facts"]["train"]
    chosen, ranking = warm["selected"]["P19"], warm["ranking"]["P19"]
    scores = [p1 for _, p1 in ranking]
    assert len(ranking) > 1 and scores == sorted(scores, reverse=True) and all(template_words(t) for t, _ in ranking)
    assert chosen["prompt"] == ranking[0][0] and chosen["train_p1"] == max(scores) >= chosen["manual_train_p1"]
    assert [template for template, _ in warm["ranking"]["P1376"]] == ["[X] is the capital of [Y] ."]
    args = lama.parse_args([*common, "--stop-at-answers", "--answer-words-per-relation"])
    train = [{"obj": "Paris", "template": BORN}, {"obj": "Rome", "template": BORN}, {"obj": "Oslo", "template": DIED}]
    config = lama.pooled_config(lama.METHODS["promptgen"], args, train)
    assert config.relation_answer_words == {BORN: ["Paris", "Rome"], DIED: ["Oslo"]} and not config.answer_words
    with pytest.raises(ValueError, match="add --stop-at-answers"):
        lama.pooled_config(lama.METHODS["promptgen"], lama.parse_args([*common, "--answer-words-per-relation"]), train)
