"""TRL's SFTTrainer with our adapters: its ``peft_config`` path builds them, its loss (which calls the backbone and
reads the LM head's weight directly, bypassing the model's forward) still sees the soft prompt, only the adapter
trains, and the saved adapter reloads; chat data with the soft prompt in front (``prompt_adapters.sft``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from trl import SFTConfig, SFTTrainer

from prompt_adapters import MixturePromptConfig, PTuningEncoderConfig
from prompt_adapters.serving import input_embeds
from prompt_adapters.sft import chat_prompt_ids, sft_example, soft_prompt_ids
from prompt_adapters.testing import build_tiny_model

#: a plain-text chat template for the tiny test tokenizer (it has none)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
FACTS = [("Dante", "Paris"), ("Obama", "London"), ("Newton", "Rome"), ("Einstein", "Berlin")]
CONVERSATIONS = [
    [{"role": "user", "content": f"Where was {name} born?"}, {"role": "assistant", "content": f"In {city}."}]
    for name, city in FACTS
]


def _tiny_chat_model(seed: int = 0) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    base, tok = build_tiny_model("llama")
    with torch.no_grad():  # larger weights (norms kept): answers that depend on the prompt
        for name, param in base.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.2)
    tok.chat_template = CHAT_TEMPLATE
    return base, tok


def _config(method: str, tok: Any) -> Any:
    if method == "mixture":
        return MixturePromptConfig(templates=["[P*4] [Y]"], tokenizer=tok)
    return PTuningEncoderConfig(templates=["[P*4] [Y]"], tokenizer=tok, encoder="mlp")


def _args(tmp_path: Path, steps: int) -> SFTConfig:
    return SFTConfig(output_dir=str(tmp_path / "run"), max_steps=steps, learning_rate=0.05,
                     per_device_train_batch_size=4, report_to="none", save_strategy="no", bf16=False, use_cpu=True,
                     logging_steps=steps, seed=0)


@pytest.mark.parametrize(("method", "wrapped"), [("mixture", False), ("ptuning", False), ("mixture", True)])
def test_sft_trainer_trains_the_soft_prompt_and_its_loss_sees_it(method: str, wrapped: bool, tmp_path: Path) -> None:
    base, tok = _tiny_chat_model()
    config = _config(method, tok)
    data = Dataset.from_list([sft_example(messages, tok, config, base) for messages in CONVERSATIONS])
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    if wrapped:  # an already-wrapped PeftModel, no peft_config
        trainer = SFTTrainer(model=get_peft_model(base, config), train_dataset=data, processing_class=tok,
                             args=_args(tmp_path, 15))
    else:  # TRL calls get_peft_model itself
        trainer = SFTTrainer(model=base, peft_config=config, train_dataset=data, processing_class=tok,
                             args=_args(tmp_path, 15))
    model = trainer.model
    assert isinstance(model, PeftModel) and model.peft_type == config.peft_type
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("_state." in name for name in trainable)  # the adapter state only

    batch = trainer.data_collator([data[i] for i in range(len(data))])
    model.eval()
    head_calls: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, dict(batch))  # TRL's fused head: backbone call, LM head weight
        assert not head_calls  # TRL read the head's weight itself: the model's forward did not run
        plain_loss = model(**batch).loss  # the model's own forward and loss
        assert head_calls
        with model.disable_adapter():
            without_prompt = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(trl_loss, plain_loss, rtol=1e-5, atol=1e-5)
    assert abs(float(trl_loss) - float(without_prompt)) > 1e-3  # the prompt changes TRL's loss

    trainer.train()
    model.eval()
    with torch.no_grad():
        trained_loss = trainer.compute_loss(model, dict(batch))
    assert float(trained_loss) < float(trl_loss) - 0.5
    for name, param in model.get_base_model().named_parameters():
        assert torch.equal(param, frozen[name]), f"base parameter {name} changed"

    trainer.save_model(str(tmp_path / "adapter"))
    fresh, _ = _tiny_chat_model()
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).loss, model(**batch).loss)


def test_labels_copied_from_input_ids_ignore_the_prompt_positions(tmp_path: Path) -> None:
    """A trainer that copies input_ids into labels puts pseudo ids there: they count as -100, as peft's virtual
    tokens, in the model's own loss and in TRL's fused loss alike (not as tokens past the vocabulary)."""
    base, tok = _tiny_chat_model()
    config = _config("mixture", tok)
    examples = [sft_example(messages, tok, config, base) for messages in CONVERSATIONS]
    copied = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in examples])
    trainer = SFTTrainer(model=base, peft_config=config, train_dataset=copied, processing_class=tok,
                         args=_args(tmp_path, 1))
    batch = trainer.data_collator([copied[i] for i in range(len(copied))])
    vocab = trainer.model.get_input_embeddings().weight.shape[0]
    assert bool((batch["labels"] >= vocab).any())
    masked = batch["labels"].masked_fill(batch["labels"] >= vocab, -100)
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(**{**batch, "labels": masked}).loss
        torch.testing.assert_close(model(**batch).loss, expected)
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), expected, rtol=1e-5, atol=1e-5)


def test_chat_prompt_serves_as_input_embeddings_with_the_same_greedy_tokens() -> None:
    base, tok = _tiny_chat_model()
    bare, _ = _tiny_chat_model()
    config = _config("mixture", tok)
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        next(iter(model.base_model.state.table.values())).add_(torch.randn(4, 32) * 0.5)
    ids = torch.tensor([chat_prompt_ids(CONVERSATIONS[0][:1], tok, config, model)])
    generated = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    embeds = input_embeds(model, {"input_ids": ids})[0]
    served = bare.generate(inputs_embeds=embeds[None], attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                           max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert served.tolist() == generated[:, ids.shape[1]:].tolist()


def test_sft_data_errors_name_the_problem() -> None:
    base, tok = _tiny_chat_model()
    vocab = base.get_input_embeddings().weight.shape[0]
    two = MixturePromptConfig(templates=["[P*2] [Y]", "[P*3] Answer: [Y]"], tokenizer=tok)
    assert soft_prompt_ids(two, tok, base, template=1)[:3] == [vocab + 2, vocab + 3, vocab + 4]
    with pytest.raises(ValueError, match=r"has input fields \['X'\]"):
        soft_prompt_ids(MixturePromptConfig(templates=["[P*2] [X] [Y]"], tokenizer=tok), tok, base)
    with pytest.raises(ValueError, match="has words after"):
        soft_prompt_ids(MixturePromptConfig(templates=["[P*2] [Y] thanks"], tokenizer=tok), tok, base)
    with pytest.raises(ValueError, match="must be the assistant's; got role 'user'"):
        sft_example(CONVERSATIONS[0][:1], tok, two, base)
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        sft_example(CONVERSATIONS[0], tok, two, base)
    bert, bert_tok = build_tiny_model("bert")
    with pytest.raises(ValueError, match="for causal LMs; this adapter is for a masked LM"):
        soft_prompt_ids(MixturePromptConfig(templates=["[P*2] [Y]"], tokenizer=bert_tok), bert_tok, bert)
