"""PEFT's own prompt methods as LAMA comparison rows, written the way a plain peft user would use them.

The input is the relation's manual prompt filled with the subject up to the answer slot: the same token ids the
manual row scores. peft prepends its virtual tokens (``PROMPT_TUNING``: initialised from the manual prompt's words,
one virtual token per word piece; ``P_TUNING``: as many virtual tokens as our causal P-tuning template has pseudo
tokens, from peft's prompt encoder). The answer distribution is read at the last input token over the same
candidate set, trained with the same loss (log-softmax over the candidates, as our adapters do) by the same
``fit`` loop and settings, and ranked by the same ``rank_answers``. Only causal LMs: peft's prompt methods have no
answer slot inside a masked template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, TaskType
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from prompt_adapters.scoring import IGNORE, candidate_positions, slot_log_probs
from prompt_adapters.template import Layout, answer_token_id, compile_template, render, special_affixes


def template_words(template: str) -> str:
    """The words of a LAMA template without its [X] / [Y] slots (PROMPT_TUNING's init text)."""
    return " ".join(template.replace("[X]", " ").replace("[Y]", " ").split())


def prompt_tuning_config(template: str, tokenizer: PreTrainedTokenizerBase, model_path: str) -> PromptTuningConfig:
    """peft PROMPT_TUNING with TEXT init from the manual prompt's words, one virtual token per word piece."""
    text = template_words(template)
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if count == 0:
        raise ValueError(f"manual template {template!r} has no words to initialise PROMPT_TUNING from")
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=count,
                              prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=text,
                              tokenizer_name_or_path=model_path)


def p_tuning_config(num_virtual_tokens: int, encoder: str, embed_size: int) -> PromptEncoderConfig:
    """peft P_TUNING sized like our P-tuning encoder (LSTM: embed_size // 2 per direction; MLP: embed_size)."""
    if encoder not in ("lstm", "mlp"):
        raise ValueError(f"peft P_TUNING has an 'lstm' or 'mlp' encoder, got {encoder!r}")
    return PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens,
                               encoder_reparameterization_type=encoder.upper(),
                               encoder_hidden_size=embed_size // 2 if encoder == "lstm" else embed_size)


@dataclass
class SlotOutput(ModelOutput):
    """What ``fit`` and ``rank_answers`` read: the loss and the answer log-probs over the candidates."""

    loss: torch.Tensor | None = None
    answer_log_probs: torch.Tensor | None = None


class ManualPromptCollator:
    """Renders facts with the hard manual template (as our manual row does): ids, mask and the gold answer id."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str, vocab_size: int,
                 candidate_ids: torch.Tensor | None) -> None:
        self.tokenizer = tokenizer
        self.template = compile_template(template, tokenizer, words="hard")
        self.templates = [self.template]  # rank_answers reads one row per example
        self.layout = Layout("causal", vocab_size, special_affixes(tokenizer)[0], (), None)
        self.candidate_ids = candidate_ids

    def __call__(self, examples: Sequence[dict[str, str]]) -> dict[str, torch.Tensor]:
        rows = [render(self.template, {"X": fact["sub"]}, self.tokenizer, self.layout,
                       answer_ids=[answer_token_id(self.tokenizer, self.template, fact["obj"])]) for fact in examples]
        width = max(len(row.input_ids) for row in rows)
        pad = int(self.tokenizer.pad_token_id)
        batch = {
            "input_ids": torch.tensor([row.input_ids + [pad] * (width - len(row.input_ids)) for row in rows]),
            "attention_mask": torch.tensor([[1] * len(row.input_ids) + [0] * (width - len(row.input_ids))
                                            for row in rows]),
            "score_positions": torch.tensor([row.score_positions for row in rows]),
            "score_targets": torch.tensor([row.score_targets for row in rows]),
        }
        if self.candidate_ids is not None:
            batch["candidate_ids"] = self.candidate_ids
        return batch


class PeftPromptScorer(nn.Module):
    """A peft prompt-learning model read at the answer position, returning our adapters' loss and log-probs."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.num_virtual_tokens = int(peft_model.active_peft_config.num_virtual_tokens)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, score_positions: torch.Tensor,
                score_targets: torch.Tensor, candidate_ids: torch.Tensor | None = None) -> SlotOutput:
        logits = self.peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
        rows = torch.arange(len(input_ids), device=logits.device)
        picked = logits[rows, score_positions[:, 0] + self.num_virtual_tokens]
        log_probs = slot_log_probs(picked, candidate_ids)
        gold = candidate_positions(candidate_ids, score_targets[:, 0])
        known = gold != IGNORE
        loss = -log_probs[known].gather(1, gold[known].unsqueeze(1)).mean() if known.any() else None
        return SlotOutput(loss=loss, answer_log_probs=log_probs)


def native_adapter(peft_model: nn.Module, tokenizer: PreTrainedTokenizerBase, template: str,
                   candidate_ids: torch.Tensor | None) -> tuple[PeftPromptScorer, Any]:
    """The scorer and collator for a peft prompt-learning model over ``template``'s facts."""
    vocab_size = int(peft_model.get_input_embeddings().weight.shape[0])
    return PeftPromptScorer(peft_model), ManualPromptCollator(tokenizer, template, vocab_size, candidate_ids)
