"""Chat data with a soft prompt, for supervised fine-tuning with TRL's ``SFTTrainer`` or any causal-LM trainer.

Trainers such as TRL tokenize text themselves, and text cannot hold a soft prompt: its positions are pseudo ids
(``>= vocab_size``) that only the adapter's hooks understand. So the conversation is tokenized here, through the
tokenizer's chat template, with the soft prompt in front of it (where peft's prompt tuning puts its virtual tokens),
and handed to the trainer already tokenized (``input_ids`` and ``labels``; TRL then skips its own tokenization).

    config = MixturePromptConfig(templates=["[P*8] [Y]"], tokenizer=tokenizer)
    data = Dataset.from_list([sft_example(messages, tokenizer, config, model) for messages in conversations])
    SFTTrainer(model=model, peft_config=config, train_dataset=data, processing_class=tokenizer, args=...).train()

The template says what goes before the conversation: soft rows (``[P*n]``) and hard words, then ``[Y]`` where the
conversation starts; it has no input field. The labels train the last (assistant) message only, as TRL's
``assistant_only_loss``; everything before it, soft prompt included, is -100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from prompt_adapters.rendering import make_layout, render
from prompt_adapters.scoring import IGNORE
from prompt_adapters.tuner import PromptConfig, detect_lm_kind

Message = Mapping[str, Any]


def soft_prompt_ids(
    config: PromptConfig, tokenizer: PreTrainedTokenizerBase, model: nn.Module, template: int = 0
) -> list[int]:
    """The ids that stand for template number ``template`` of ``config`` in front of a conversation: pseudo ids at
    its soft rows, token ids at its hard words. ``model`` is the base model (before or after ``get_peft_model``);
    ``config`` is the adapter's config, compiled (made with ``tokenizer=``), as the only or first adapter."""
    compiled = config.compiled()
    if not 0 <= template < len(compiled):
        raise ValueError(f"template must be an index into the config's {len(compiled)} templates, got {template}")
    kind = config.lm_kind or detect_lm_kind(model)
    if kind != "causal":
        raise ValueError(f"chat fine-tuning data is for causal LMs; this adapter is for a {kind} LM")
    chosen = compiled[template]
    if chosen.fields:
        raise ValueError(
            f"template {chosen.source!r} has input fields {list(chosen.fields)}; in front of a conversation the "
            "template holds only the prompt and [Y] where the conversation starts, e.g. '[P*8] [Y]'"
        )
    kinds = [piece.kind for piece in chosen.pieces]
    if kinds.index("answer") != len(kinds) - 1:
        raise ValueError(
            f"template {chosen.source!r} has words after [Y]; the conversation follows the prompt, so [Y] ends the "
            "template, e.g. '[P*8] [Y]'"
        )
    layout = make_layout(tokenizer, model, "causal")
    offset = sum(earlier.num_soft for earlier in compiled[:template])
    row = render(chosen, {}, tokenizer, layout, offset, [IGNORE])
    return row.input_ids[len(layout.prefix):]


def chat_prompt_ids(
    messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, config: PromptConfig, model: nn.Module,
    template: int = 0,
) -> list[int]:
    """The soft prompt, then ``messages`` through the chat template with the assistant's turn opened: the input for
    ``generate`` (and for ``prompt_adapters.serving.input_embeds``) after fine-tuning."""
    return soft_prompt_ids(config, tokenizer, model, template) + _chat_ids(tokenizer, messages, True)


def sft_example(
    messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, config: PromptConfig, model: nn.Module,
    template: int = 0,
) -> dict[str, list[int]]:
    """One tokenized training example: ``input_ids`` (the soft prompt, then the conversation through the chat
    template) and ``labels`` (the last message's tokens, which must be the assistant's; -100 elsewhere)."""
    if not messages or messages[-1].get("role") != "assistant":
        last = messages[-1].get("role") if messages else None
        raise ValueError(f"the conversation's last message is the one trained, so it must be the assistant's; got "
                         f"role {last!r}")
    prompt = _chat_ids(tokenizer, messages[:-1], True)
    full = _chat_ids(tokenizer, messages, False)
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the chat template renders the conversation before the assistant's answer differently when the answer "
            "follows, so the answer's tokens cannot be told apart; use a chat template whose generation prompt is a "
            "prefix of the rendered conversation"
        )
    soft = soft_prompt_ids(config, tokenizer, model, template)
    return {"input_ids": soft + full, "labels": [IGNORE] * (len(soft) + len(prompt)) + full[len(prompt):]}


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template."""
    if tokenizer.chat_template is None:
        raise ValueError(f"{type(tokenizer).__name__} has no chat template; set tokenizer.chat_template first")
    encoded = tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])
