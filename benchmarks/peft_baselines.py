"""PEFT's own prompt methods as LAMA and SuperGLUE comparison rows, written the way a plain peft user would use them.

LAMA:
The input is the relation's manual prompt filled with the subject up to the answer slot: the same token ids the
manual row scores. peft prepends its virtual tokens (``PROMPT_TUNING``: initialised from the manual prompt's words,
one virtual token per word piece; ``P_TUNING``: as many virtual tokens as our causal P-tuning template has pseudo
tokens, from peft's prompt encoder). The answer distribution is read at the last input token over the same
candidate set, trained with the same loss (log-softmax over the candidates, as our adapters do) by the same
``fit`` loop and settings, and ranked by the same ``rank_answers``. Only causal LMs: peft's prompt methods have no
answer slot inside a masked template.

SuperGLUE: ``native_peft_config`` sets up P_TUNING / PROMPT_TUNING with the task's P-tuning prompt budget, and
``PeftRows`` scores them on the rows our collator renders for the task's manual pattern (causal and seq2seq LMs).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, TaskType
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from prompt_adapters.data import superglue as sg
from prompt_adapters.model_facts import LMKind
from prompt_adapters.rendering import Layout, render
from prompt_adapters.scoring import IGNORE, candidate_positions, continuation_log_probs, slot_log_probs
from prompt_adapters.template import answer_token_id, compile_template, special_affixes


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


# ------------------------------------------------------------------------------------------------ SuperGLUE


@dataclass
class RowScores(ModelOutput):
    """What the scorer and ``fit`` read from a peft prompt-learning model: the adapters' output fields."""

    loss: torch.Tensor | None = None
    answer_log_probs: torch.Tensor | None = None
    sequence_log_probs: torch.Tensor | None = None
    choice_log_probs: torch.Tensor | None = None


class PeftRows(nn.Module):
    """A peft prompt-learning model scored on the rows our collator renders for the manual pattern.

    peft prepends its virtual tokens to the input, so a causal LM's score positions move right by their number (a
    seq2seq LM's decoder positions stay). Answers are scored as our adapters score them (``prompt_adapters.scoring``):
    single-token verbalizer words by the log-softmax over the verbalizer ids, longer answers by their continuation
    log-probability, several choices by the log-softmax over their continuations. Without ``score_positions`` it is
    the plain peft model (greedy decoding).
    """

    def __init__(self, peft_model: nn.Module, lm_kind: LMKind) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.shift = int(peft_model.active_peft_config.num_virtual_tokens) if lm_kind == "causal" else 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                score_positions: torch.Tensor | None = None, score_targets: torch.Tensor | None = None,
                candidate_ids: torch.Tensor | None = None, num_choices: torch.Tensor | None = None,
                choice_labels: torch.Tensor | None = None, **decoder: torch.Tensor) -> Any:
        out = self.peft_model(input_ids=input_ids, attention_mask=attention_mask, **decoder)
        if score_positions is None or score_targets is None:
            return out
        positions = score_positions + self.shift
        if candidate_ids is not None:
            rows = torch.arange(len(positions), device=out.logits.device)
            log_probs = slot_log_probs(out.logits[rows, positions[:, 0]], candidate_ids)
            gold = candidate_positions(candidate_ids, score_targets[:, 0])
            known = gold != IGNORE
            loss = -log_probs[known].gather(1, gold[known].unsqueeze(1)).mean() if known.any() else None
            return RowScores(loss=loss, answer_log_probs=log_probs)
        choices = int(num_choices) if num_choices is not None else 1
        sequence = continuation_log_probs(out.logits, positions, score_targets).view(-1, choices)
        if choices == 1:
            known = (score_targets != IGNORE).any(-1)
            return RowScores(loss=-sequence[known, 0].mean() if known.any() else None, sequence_log_probs=sequence)
        choice_log_probs = torch.log_softmax(sequence, dim=1)
        loss = None
        if choice_labels is not None and (choice_labels != IGNORE).any():
            known = choice_labels != IGNORE
            loss = -choice_log_probs[known].gather(1, choice_labels[known].unsqueeze(1)).mean()
        return RowScores(loss=loss, sequence_log_probs=sequence, choice_log_probs=choice_log_probs)


def native_peft_config(args: argparse.Namespace, task: sg.Task, lm_kind: LMKind, embed_size: int) -> Any:
    """peft's P_TUNING / PROMPT_TUNING as a plain peft user sets them up, with as many virtual tokens as the task's
    P-tuning pattern has prompt tokens (the same prompt budget); PROMPT_TUNING starts from sampled vocabulary rows."""
    if lm_kind == "masked":
        raise SystemExit(f"--method {args.method} prepends peft's virtual tokens and reads the answer after the "
                         "input, so it needs a causal or seq2seq LM; this model is a masked LM")
    template = task.adapter_template_for(lm_kind)
    count = sum(int(n or 1) for n in re.findall(r"\[P(?:\*(\d+))?\]", template))  # [P] and [P*n]
    task_type = TaskType.CAUSAL_LM if lm_kind == "causal" else TaskType.SEQ_2_SEQ_LM
    if args.method == "peft_prompt_tuning":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=count,
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    if args.encoder == "none":
        raise SystemExit("--method peft_p_tuning needs --encoder lstm or mlp (peft's P_TUNING has no 'none')")
    return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=count,
                               encoder_reparameterization_type=args.encoder.upper(),
                               encoder_hidden_size=args.embed_size, token_dim=embed_size)
