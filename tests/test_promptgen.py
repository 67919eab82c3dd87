"""PromptGen: shared vocabulary, cached decoding, stopping, leak penalty, save/load, readable prompts, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from prompt_adapters import PromptGenCollator, PromptGenConfig
from prompt_adapters.methods.promptgen import common_vocabulary
from prompt_adapters.methods.promptgen.model import decoder_prefix
from prompt_adapters.testing import build_tiny_model, build_tokenizer, perturb_trainable

EXAMPLES = [
    {"X": "Dante", "Y": "Paris", "template": "[X] was born in [Y] ."},
    {"X": "Obama", "Y": "London", "template": "[X] died in [Y] ."},
]



def _model(bart_dir: Path, **kwargs):  # type: ignore[no-untyped-def]
    model, tok = build_tiny_model("bert")
    config = PromptGenConfig(generator_name_or_path=str(bart_dir), tokenizer=tok, num_before=4, num_after=2, **kwargs)
    return get_peft_model(model, config), tok


def test_common_vocabulary_pairs_word_forms() -> None:
    bert, bart = build_tokenizer("bert"), build_tokenizer("bart")
    down, gen = common_vocabulary(bert, bart)
    pairs = dict(zip(bert.convert_ids_to_tokens(down), bart.convert_ids_to_tokens(gen), strict=True))
    assert pairs["Paris"] == "ĠParis" and pairs["born"] == "Ġborn"
    assert not any(token.startswith("##") or token in bert.all_special_tokens for token in pairs)
    other = Tokenizer(models.WordLevel({"[UNK]": 0, "qqq": 1}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    disjoint = PreTrainedTokenizerFast(tokenizer_object=other, unk_token="[UNK]")
    with pytest.raises(ValueError, match="share no word"):
        common_vocabulary(disjoint, bart)


def test_only_the_generator_trains_and_the_loss_has_the_leak_term(bart_dir: Path) -> None:
    model, tok = _model(bart_dir, leak_penalty=0.3)
    trainable = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"generator"}
    out = model(**PromptGenCollator(tok, model)(EXAMPLES))
    gold = torch.tensor(tok.convert_tokens_to_ids(["Paris", "London"]))
    main = -out.answer_log_probs.gather(1, gold[:, None]).mean()
    leak = out.none_log_probs.gather(1, gold[:, None]).mean()
    torch.testing.assert_close(out.loss, main + 0.3 * leak)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    bounded, _ = _model(bart_dir, leak_penalty=0.3, leak_form="bounded")
    out = bounded(**PromptGenCollator(tok, bounded)(EXAMPLES))
    leaked = out.none_log_probs.gather(1, gold[:, None]).exp()
    main = -out.answer_log_probs.gather(1, gold[:, None]).mean()
    torch.testing.assert_close(out.loss, main + 0.3 * (-torch.log1p(-leaked)).mean())


def test_fixed_stopping_writes_every_position_and_cached_decoding_matches_a_full_rerun(bart_dir: Path) -> None:
    model, tok = _model(bart_dir, stopping="fixed")
    tok_bart = AutoTokenizer.from_pretrained(bart_dir)
    state = model.base_model.state
    batch = PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES)
    with torch.no_grad():
        steps, lengths = state.generate("default", batch["generator_input_ids"], batch["generator_attention_mask"],
                                        batch["generator_subject_ids"])
    assert lengths.tolist() == [[4, 2], [4, 2]]
    generator = state.generator["default"]
    decoder_embed = generator.get_decoder().embed_tokens
    common = state.options["default"]["gen_ids"]
    start, bos, mask = decoder_embed(torch.tensor([generator.config.decoder_start_token_id, tok_bart.bos_token_id,
                                                   state.options["default"]["mask_id"]]))
    assert state.options["default"]["prefix_ids"].tolist() == [generator.config.decoder_start_token_id,
                                                                tok_bart.bos_token_id]
    subjects = tok_bart([e["X"] for e in EXAMPLES], add_special_tokens=False)["input_ids"]
    assert [[i for i in row if i >= 0] for row in batch["generator_subject_ids"].tolist()] == subjects
    for row, subject in enumerate(subjects):  # a full rerun per row: start, bos, the copied subject, soft tokens
        attention = batch["generator_attention_mask"][row : row + 1]
        encoder = generator.get_encoder()(input_ids=batch["generator_input_ids"][row : row + 1],
                                          attention_mask=attention)
        inputs = [start, bos, *decoder_embed(torch.tensor(subject))]
        expected = []
        with torch.no_grad():
            for slot in range(6):
                out = generator(encoder_outputs=encoder, attention_mask=attention,
                                decoder_inputs_embeds=torch.stack(inputs).unsqueeze(0), use_cache=False)
                dist = torch.softmax(out.logits[0, -1].float().index_select(-1, common), -1)
                expected.append(dist)
                inputs.append(dist @ decoder_embed(common))
                if slot == 3:  # the step after the 4th soft token is dropped; the decoder then reads the mask token
                    inputs.append(mask)
        torch.testing.assert_close(steps[row], torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_subjects_of_different_lengths_decode_as_if_alone(bart_dir: Path) -> None:
    """Rows are grouped by subject length, so each row gets the same prompt it would get in a batch of its own."""
    model, tok = _model(bart_dir)
    state = model.base_model.state
    examples = [*EXAMPLES, {"X": "Barack Obama Senior", "Y": "Paris", "template": "[X] lived in [Y] ."}]
    collate = PromptGenCollator(tok, model, leak_rows=False)
    batch = collate(examples)
    widths = (batch["generator_subject_ids"] >= 0).sum(1).tolist()
    assert len(set(widths)) > 1, widths
    keys = ("generator_input_ids", "generator_attention_mask", "generator_subject_ids")
    with torch.no_grad():
        steps, lengths = state.generate("default", *(batch[k] for k in keys))
        for row, example in enumerate(examples):
            alone = collate([example])
            width = int(batch["generator_attention_mask"][row].sum())
            assert alone["generator_input_ids"].shape[1] == width
            one_steps, one_lengths = state.generate("default", *(alone[k] for k in keys))
            assert one_lengths.tolist() == lengths[row : row + 1].tolist()
            torch.testing.assert_close(one_steps, steps[row : row + 1], rtol=1e-4, atol=1e-5)


def test_decoder_prefix_follows_the_generator_targets() -> None:
    """BART's targets are ``<s> words </s>`` after the start token ``</s>``; T5's start with the words (no bos)."""
    bart, bart_tok = build_tiny_model("bart")
    t5, t5_tok = build_tiny_model("t5")
    assert decoder_prefix(bart, bart_tok) == [bart.config.decoder_start_token_id, bart_tok.bos_token_id]
    assert decoder_prefix(t5, t5_tok) == [t5.config.decoder_start_token_id]


def test_early_stopping_removes_unwritten_positions(bart_dir: Path) -> None:
    model, tok = _model(bart_dir, stopping="eos")
    batch = PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES)
    state = model.base_model.state
    seen = {}

    def capture(module, args):  # type: ignore[no-untyped-def]
        seen["ids"] = args[0]

    handle = model.base_model.model.get_input_embeddings().register_forward_pre_hook(capture)
    with torch.no_grad():
        out = model(**batch)
    handle.remove()
    lengths = state.last_generation[1]
    kept = (batch["input_ids"] >= len(tok)).sum(1)
    assert kept.tolist() == [6, 6]
    assert out.answer_log_probs.shape == (2, len(tok))
    assert seen["ids"].shape[1] == batch["input_ids"].shape[1] - int((6 - lengths.sum(1)).min())


def test_save_load_roundtrip_and_readable_prompts(bart_dir: Path, tmp_path: Path) -> None:
    model, tok = _model(bart_dir, stopping="fixed")
    perturb_trainable(model, 0.05)
    batch = PromptGenCollator(tok, model)(EXAMPLES)
    expected = model(**batch).answer_log_probs
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(build_tiny_model("bert")[0], tmp_path)
    assert torch.equal(again(**batch).answer_log_probs, expected)
    texts = again.base_model.generated_prompts(PromptGenCollator(tok, again, leak_rows=False)(EXAMPLES), tok)
    assert len(texts) == 2 and all(text.count("[MASK]") == 1 and len(text.split()) == 7 for text in texts)


def test_bad_input(bart_dir: Path) -> None:
    _, tok = build_tiny_model("bert")
    with pytest.raises(ValueError, match="generator_name_or_path"):
        PromptGenConfig(tokenizer=tok)
    with pytest.raises(ValueError, match="0 answer slots"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), templates=["[X] [P*3]"], tokenizer=tok)
    model, tok = _model(bart_dir)
    with pytest.raises(KeyError, match="manual template under 'template'"):
        PromptGenCollator(tok, model)([{"X": "Dante", "Y": "Paris"}])


def test_multiple_adapters_and_push_to_hub(bart_dir: Path, tmp_path: Path) -> None:
    from fakehub import FakeHub

    model, tok = _model(bart_dir, stopping="fixed")
    model.add_adapter("other", PromptGenConfig(generator_name_or_path=str(bart_dir), tokenizer=tok, num_before=2,
                                               num_after=1, stopping="fixed"))
    model.set_adapter("other")
    other = model(**PromptGenCollator(tok, model)(EXAMPLES))
    assert model.base_model.state.last_generation[0].shape[1] == 3
    other.loss.backward()
    model.set_adapter("default")
    batch = PromptGenCollator(tok, model)(EXAMPLES)
    expected = model(**batch).answer_log_probs
    model.delete_adapter("other")
    with FakeHub() as hub, hub.patch_client(tmp_path / "hf_home"):
        model.push_to_hub("me/promptgen")
        assert "import prompt_adapters" in hub.files("me/promptgen")["README.md"].decode()
        again = PeftModel.from_pretrained(build_tiny_model("bert")[0], "me/promptgen")
    assert torch.equal(again(**batch).answer_log_probs, expected)


def _stop_margins(model, batch: dict[str, torch.Tensor], token: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Per row and generating step of a ``fixed`` run: logit of ``token`` minus the best shared-vocabulary logit."""
    state = model.base_model.state
    generator = state.generator["default"]
    logits: list[torch.Tensor] = []
    handle = generator.register_forward_hook(lambda module, args, out: logits.append(out.logits[:, -1].float()))
    options = dict(state.options["default"])
    state.options["default"]["stop_ids"] = (None, None)
    try:
        with torch.no_grad():
            state.generate("default", batch["generator_input_ids"], batch["generator_attention_mask"],
                           batch["generator_subject_ids"])
    finally:
        handle.remove()
        state.options["default"] = options
    stacked = torch.stack(logits, dim=1)
    best = stacked.index_select(-1, options["gen_ids"]).max(-1).values
    return stacked[..., token] - best


def test_mask_stopping_ends_the_first_segment_where_mask_is_most_likely(bart_dir: Path) -> None:
    """The paper's Figure 1: the segment before the answer slot ends at the first step whose most likely next token
    (among the shared words and the mask) is the generator's mask token; the steps before it are the soft tokens
    a run without stopping writes, and the stop step's distribution is dropped."""
    model, tok = _model(bart_dir)
    assert model.peft_config["default"].stopping == "mask"
    state = model.base_model.state
    generator = state.generator["default"]
    mask_id = state.options["default"]["mask_id"]
    assert state.options["default"]["stop_ids"] == (mask_id, generator.config.eos_token_id)
    examples = [{**EXAMPLES[0], "X": subject} for subject in ("Dante", "Paris", "London")]
    batch = PromptGenCollator(tok, model, leak_rows=False)(examples)
    assert (batch["generator_subject_ids"] >= 0).all(), "one-token subjects: every row writes from the first step"
    keys = ("generator_input_ids", "generator_attention_mask", "generator_subject_ids")
    state.options["default"]["stop_ids"] = (None, None)
    with torch.no_grad():
        free_steps, _ = state.generate("default", *(batch[k] for k in keys))
    state.options["default"]["stop_ids"] = (mask_id, generator.config.eos_token_id)
    margins = _stop_margins(model, batch, mask_id)[:, :4]  # the first segment's 4 steps, mask logit not yet biased
    with torch.no_grad():  # a bias on the mask logit that makes it the most likely at some steps only
        generator.final_logits_bias[0, mask_id] = 1e-3 - float(margins[:, 1].max())
        margins = _stop_margins(model, batch, mask_id)[:, :4]
        steps, lengths = state.generate("default", *(batch[k] for k in keys))
    stops = margins > 0
    expected = torch.where(stops.any(1), stops.float().argmax(1), 4)
    assert lengths[:, 0].tolist() == expected.tolist()
    assert any(0 < length < 4 for length in expected.tolist()) and 4 in expected.tolist(), expected
    for row, length in enumerate(expected.tolist()):
        torch.testing.assert_close(steps[row, :length], free_steps[row, :length])
        assert not steps[row, length:4].any()


def test_stopping_paper_of_saved_configs_reads_as_eos(bart_dir: Path, tmp_path: Path) -> None:
    """``stopping="paper"`` (the </s> rule's earlier name) still loads, as ``eos``, with a warning."""
    model, tok = _model(bart_dir, stopping="eos")
    batch = PromptGenCollator(tok, model)(EXAMPLES)
    expected = model(**batch).answer_log_probs
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["stopping"] == "eos"
    saved["stopping"] = "paper"
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    with pytest.warns(FutureWarning, match="stopping='paper' is now called 'eos'"):
        again = PeftModel.from_pretrained(build_tiny_model("bert")[0], tmp_path)
    assert again.peft_config["default"].stopping == "eos"
    assert torch.equal(again(**batch).answer_log_probs, expected)
    with pytest.raises(ValueError, match=r"stopping must be one of \('mask', 'eos', 'fixed'\), got 'early'"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), stopping="early")


def test_none_rows_in_a_call_of_their_own_give_the_loss_and_gradients_of_one_call(bart_dir: Path) -> None:
    """A training batch's None rows run in their own, shorter downstream call (the speed-up); the loss, both
    log-probability fields and the generator's gradients are those of the single call over all rows, which other
    model inputs (here ``return_dict``) still take."""
    model, tok = _model(bart_dir, leak_penalty=0.3, leak_form="bounded")
    perturb_trainable(model, 0.05)
    examples = [*EXAMPLES, {"X": "Barack Obama Senior", "Y": "Paris", "template": "[X] lived in [Y] ."}]
    batch = PromptGenCollator(tok, model, candidate_ids=torch.tensor(tok.convert_tokens_to_ids(["Paris", "London",
                                                                                                "born"])))(examples)
    widths: list[int] = []
    embeddings = model.base_model.model.get_input_embeddings()
    handle = embeddings.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    results = []
    for extra in ({}, {"return_dict": True}):
        widths.clear()
        out = model(**batch, **extra)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        results.append((out, grads, list(widths)))
    handle.remove()
    (split, split_grads, split_widths), (single, single_grads, single_widths) = results
    none_width, examples_width = split_widths  # the None rows run first, inside the examples' call
    assert none_width < examples_width <= single_widths[0] and len(single_widths) == 1, (split_widths, single_widths)
    for key in ("loss", "answer_log_probs", "none_log_probs", "logits"):
        torch.testing.assert_close(split[key], single[key], rtol=1e-5, atol=1e-6)
    assert split_grads.keys() == single_grads.keys()
    for name, grad in split_grads.items():
        torch.testing.assert_close(grad, single_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_answer_words_end_the_first_segment_where_one_is_most_likely(bart_dir: Path) -> None:
    """``answer_words``: the segment before the answer slot also ends at the first step whose most likely shared word
    is one of them (a denoising generator writes the answer there); the steps before it are unchanged."""
    keys = ("generator_input_ids", "generator_attention_mask", "generator_subject_ids")
    examples = [{**EXAMPLES[0], "X": subject} for subject in ("Dante", "Paris", "London")]
    plain, tok = _model(bart_dir, stopping="eos")
    batch = PromptGenCollator(tok, plain, leak_rows=False)(examples)
    state = plain.base_model.state
    with torch.no_grad():
        free_steps, free_lengths = state.generate("default", *(batch[k] for k in keys))
    down_ids = state.options["default"]["down_ids"]
    written = free_steps[:, :4].argmax(-1)  # shared-vocabulary index of each row's most likely word per step
    word = tok.convert_ids_to_tokens(int(down_ids[written[0, 1]]))  # row 0 writes it at its second step
    with pytest.warns(UserWarning, match=r"1 of 2 answer_words are not one word of the shared vocabulary"):
        stopped, _ = _model(bart_dir, stopping="eos", answer_words=[word, "not-a-shared-word"])
    assert stopped.peft_config["default"].answer_stops == [int(down_ids[written[0, 1]])]
    with torch.no_grad():
        steps, lengths = stopped.base_model.state.generate("default", *(batch[k] for k in keys))
    hits = written == written[0, 1]
    first_hit = torch.where(hits.any(1), hits.float().argmax(1), 4)
    expected = torch.minimum(first_hit, free_lengths[:, 0])
    assert lengths[:, 0].tolist() == expected.tolist()
    assert expected[0] <= 1 < free_lengths[0, 0]
    for row, length in enumerate(expected.tolist()):
        torch.testing.assert_close(steps[row, :length], free_steps[row, :length])
        assert not steps[row, length:4].any()


def test_answer_words_need_a_rule_that_stops(bart_dir: Path) -> None:
    with pytest.raises(ValueError, match="stopping='fixed' always writes num_before tokens"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), stopping="fixed", answer_words=["Paris"])
    with pytest.raises(TypeError, match="answer_words must be"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), answer_words="Paris")


def test_straight_through_tokens_read_the_most_likely_word_and_keep_the_gradient(bart_dir: Path) -> None:
    """``token_form="straight_through"``: every written position is exactly one shared word (what the downstream
    model and the generator read back), chosen as a full rerun fed those words picks it, and the generator still
    gets a gradient through the distributions."""
    keys = ("generator_input_ids", "generator_attention_mask", "generator_subject_ids")
    model, tok = _model(bart_dir, stopping="fixed", token_form="straight_through")
    state = model.base_model.state
    batch = PromptGenCollator(tok, model, leak_rows=False)(EXAMPLES)
    with torch.no_grad():
        steps, lengths = state.generate("default", *(batch[k] for k in keys))
    assert lengths.tolist() == [[4, 2], [4, 2]]
    assert torch.equal(steps.sum(-1), torch.ones(2, 6)) and torch.equal(steps.max(-1).values, torch.ones(2, 6))
    generator = state.generator["default"]
    common = state.options["default"]["gen_ids"]
    prefix = state.options["default"]["prefix_ids"].tolist()
    mask = state.options["default"]["mask_id"]
    for row in range(2):  # a full rerun per row that reads back the most likely word of each step as a hard token
        attention = batch["generator_attention_mask"][row : row + 1]
        encoder = generator.get_encoder()(input_ids=batch["generator_input_ids"][row : row + 1],
                                          attention_mask=attention)
        subject = [i for i in batch["generator_subject_ids"][row].tolist() if i >= 0]
        ids = [*prefix, *subject]
        with torch.no_grad():
            for slot in range(6):
                out = generator(encoder_outputs=encoder, attention_mask=attention,
                                decoder_input_ids=torch.tensor([ids]), use_cache=False)
                word = int(out.logits[0, -1].float().index_select(-1, common).argmax())
                assert int(steps[row, slot].argmax()) == word, (row, slot)
                ids.append(int(common[word]))
                if slot == 3:
                    ids.append(mask)
    out = model(**PromptGenCollator(tok, model)(EXAMPLES))
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match=r"token_form must be one of .* got 'hard'"):
        PromptGenConfig(generator_name_or_path=str(bart_dir), token_form="hard")
