"""SuperGLUE / FewGLUE with P-tuning and the library's other methods on masked, causal and seq2seq LMs, the
reference tables side by side.

    accelerate launch benchmarks/superglue.py --task rte --model albert-xxlarge-v2 --method ptuning \
        --setting fewshot --data-dir DATA/superglue
    python benchmarks/superglue.py --task cb --model models/smollm2 --method manual --data-dir DATA/superglue
    python benchmarks/superglue.py --compare runs/ptuning runs/manual     # paired bootstrap intervals, A - B

Tasks are declared as data in ``prompt_adapters.data.superglue.TASKS`` (template and its left-to-right form,
verbalizer, preprocessing, hyper-parameters). The model class comes from the checkpoint's config
(``prompt_adapters.models.load_language_model``). Masked LMs read the masked pattern; causal and seq2seq LMs read the
task's causal form, which ends at the answer slot. Classification tasks are scored by the verbalizer words'
log-probability at the answer slot (summed over the tokens of a multi-token word). On masked LMs COPA is scored by
gold-guided most-confident-first unmasking of each choice and WSC by greedy most-confident-first decoding and a
word-set match, as in the reference code; on causal and seq2seq LMs COPA compares the two choices' continuation
log-probabilities and WSC decodes greedily left to right before the same word-set match.
(task, seed) jobs are spread over the accelerate processes; every finished job is written atomically to
``OUTPUT/jobs/`` with its predictions, and ``--resume`` skips it; training checkpoints every epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from peft import PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer
from transformers.utils import ModelOutput
from transformers.utils import logging as transformers_logging

import prompt_adapters
from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptCollator, PTuningEncoderConfig
from prompt_adapters.data import superglue as sg
from prompt_adapters.metrics.bootstrap import PairedInterval, paired_bootstrap
from prompt_adapters.metrics.superglue import AVERAGE_OF, superglue_average, superglue_metric, task_score
from prompt_adapters.models import load_language_model
from prompt_adapters.run_dir import (
    ResumeMismatchError,
    check_manifest,
    check_model_source,
    digest,
    model_digest,
    positive_int,
    read_record,
    refuse_used_output,
    remove_stale_temporaries,
    run_locked,
)
from prompt_adapters.scoring import (
    IGNORE,
    candidate_positions,
    continuation_log_probs,
    fill_most_confident_first,
    greedy_continuation,
    slot_log_probs,
)
from prompt_adapters.training import (
    TrainSettings,
    atomic_write_text,
    describe_precision,
    fit,
    mixed_precision_used,
    on_model_device,
)
from prompt_adapters.tuner import detect_lm_kind

#: P-tuning Table 5, row "P-tuning" (albert-xxlarge-v2, 32 examples, selection on dev32, full SuperGLUE dev)
PUBLISHED_FEWSHOT: dict[str, dict[str, float]] = {
    "BoolQ": {"accuracy": 77.8},
    "CB": {"accuracy": 92.9, "f1_macro": 92.3},
    "WiC": {"accuracy": 56.3},
    "RTE": {"accuracy": 76.5},
    "MultiRC": {"em": 36.1, "f1a": 75.0},
    "WSC": {"accuracy": 84.6},
    "COPA": {"accuracy": 87.0},
}


#: P-tuning Tables 3 and 4, rows "P-tuning" (fully supervised, SuperGLUE dev), by model
PUBLISHED_FULL: dict[str, dict[str, dict[str, float]]] = {
    "bert-base-cased": {"BoolQ": {"accuracy": 73.9}, "CB": {"accuracy": 89.2, "f1_macro": 92.1},
                        "WiC": {"accuracy": 68.8}, "RTE": {"accuracy": 71.1}, "MultiRC": {"em": 14.8, "f1a": 63.3},
                        "WSC": {"accuracy": 63.5}, "COPA": {"accuracy": 72.0}},
    "gpt2": {"BoolQ": {"accuracy": 75.0}, "CB": {"accuracy": 91.1, "f1_macro": 93.2}, "WiC": {"accuracy": 68.3},
             "RTE": {"accuracy": 70.8}, "MultiRC": {"em": 23.5, "f1a": 69.8}, "WSC": {"accuracy": 63.5},
             "COPA": {"accuracy": 76.0}},
    "bert-large-cased": {"BoolQ": {"accuracy": 77.8}, "CB": {"accuracy": 96.4, "f1_macro": 97.4},
                         "WiC": {"accuracy": 72.7}, "RTE": {"accuracy": 75.5}, "MultiRC": {"em": 17.1, "f1a": 65.6},
                         "WSC": {"accuracy": 81.7}, "COPA": {"accuracy": 76.0}},
    "gpt2-medium": {"BoolQ": {"accuracy": 78.9}, "CB": {"accuracy": 98.2, "f1_macro": 98.7},
                    "WiC": {"accuracy": 69.4}, "RTE": {"accuracy": 75.5}, "MultiRC": {"em": 29.3, "f1a": 74.2},
                    "WSC": {"accuracy": 74.0}, "COPA": {"accuracy": 81.0}},
}


#: --method -> what it trains (shown in --help and the report)
METHODS: dict[str, str] = {
    "manual": "the task pattern without its prompt tokens, untrained (MP zero-shot)",
    "ptuning": "P-tuning: the pattern's [P] tokens from a prompt encoder; the LM is trained too unless --frozen",
    "mixture": "soft prompt (K = 1): the pattern's words become vectors initialised from their embeddings; LM frozen",
    "deep": "the mixture soft prompt plus per-layer deltas at the prompt positions; LM frozen",
    "finetune": "the manual pattern with the whole LM fine-tuned (MP+FT)",
    "peft_p_tuning": "peft's P_TUNING virtual tokens in front of the manual pattern; LM frozen",
    "peft_prompt_tuning": "peft's PROMPT_TUNING virtual tokens in front of the manual pattern; LM frozen",
}
#: methods that are peft's own prompt-learning models rather than this library's adapters
PEFT_NATIVE = ("peft_p_tuning", "peft_prompt_tuning")
#: the fixed sample of the evaluation set drawn by --max-eval is the same for every run, method and --seed
EVAL_SAMPLE_SEED = 0


def published_numbers(args: argparse.Namespace) -> dict[str, dict[str, float]] | None:
    """The P-tuning numbers of the same setting: Table 5 (few-shot) or Table 3/4 by model (full)."""
    if args.method != "ptuning" or args.frozen:
        return None
    if args.setting == "fewshot":
        return PUBLISHED_FEWSHOT
    return PUBLISHED_FULL.get(args.model.rstrip("/").split("/")[-1])


def eval_limits(text: str) -> dict[str, int]:
    """``--max-eval``: "N" for every task or "TASK=N,..." per task -> {task name or "*": N}."""
    limits: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.rpartition("=")
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            raise argparse.ArgumentTypeError(f"expected N >= 1 or TASK=N pairs such as BoolQ=500, got {part!r}")
        try:
            limits[sg.get_task(name).name if name else "*"] = number
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return limits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="all", help="comma-separated tasks, or 'all': " + ", ".join(sg.TASKS))
    parser.add_argument("--model", default="albert-xxlarge-v2",
                        help="masked, causal or seq2seq LM (Hub id or local folder); its kind is read from its config")
    parser.add_argument("--method", default="ptuning", choices=tuple(METHODS),
                        help="; ".join(f"{name}: {what}" for name, what in METHODS.items()))
    parser.add_argument("--setting", default="fewshot", choices=("fewshot", "full"))
    parser.add_argument("--data-dir", default=str(sg.default_superglue_dir()),
                        help="FewGLUE / SuperGLUE folder (default: where download_fewglue() puts it)")
    parser.add_argument("--frozen", action="store_true",
                        help="ptuning only: freeze the LM (default: joint fine-tuning, as P-tuning)")
    parser.add_argument("--encoder", default="lstm", choices=("lstm", "mlp", "none"))
    parser.add_argument("--embed-size", type=positive_int, default=128,
                        help="prompt-encoder embedding size (paper: 128)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="override the task's optimiser steps")
    parser.add_argument("--lr", type=float, default=None, help="override the task's prompt-encoder learning rate")
    parser.add_argument("--lm-lr", type=float, default=1e-5, help="learning rate of the fine-tuned LM")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="override the task's effective batch size")
    parser.add_argument("--max-eval", type=eval_limits, default=None,
                        help="score a fixed sample (seed 0, the same for every run) of N examples of the eval set; "
                             "MultiRC: N questions with all their answer options. N for every task, or per task: "
                             "BoolQ=500,MultiRC=500 (the others whole)")
    parser.add_argument("--dev-scoring", default="pet", choices=("pet", "fast"),
                        help="masked LMs' COPA/WSC selection: the reference's iterative unmasking, or one forward")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help="seeds per task for a trained method (default 3); manual trains nothing and runs once")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="runs/superglue")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None,
                        help="instead of running: paired bootstrap 95%% intervals of A - B per task and on the "
                             "average, from two finished output directories scored on the same examples")
    args = parser.parse_args(argv)
    if args.frozen and args.method != "ptuning":
        parser.error(f"--frozen applies to --method ptuning only, not {args.method!r} (mixture, deep and the peft "
                     "methods always keep the LM frozen; finetune trains it; manual trains nothing)")
    if args.method == "manual" and (args.seeds or 1) > 1:
        parser.error(f"--seeds {args.seeds}: the manual row trains nothing, so every seed scores the same; "
                     "drop --seeds")
    if args.seeds is None:
        args.seeds = 1 if args.method == "manual" else 3
    for name in ("max_steps", "batch_size", "seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


# ------------------------------------------------------------------------------------------------ examples


@dataclass
class TaskData:
    """Examples of one task in the collator's format, plus what scoring needs."""

    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    test: list[dict[str, Any]]


def _records(args: argparse.Namespace, task: sg.Task, split: str) -> list[dict[str, Any]]:
    if args.setting == "full" and split == "train":
        return sg.load_task_from_hub(task, "train").to_list()
    return sg.load_task(args.data_dir, task, split).to_list()


def eval_sample(task: sg.Task, records: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """``limit`` records drawn with the fixed seed ``EVAL_SAMPLE_SEED``, in file order (MultiRC: ``limit`` questions
    with all their answer options); every record when ``limit`` is None or not smaller than the set."""
    if task.one_row_per_answer:
        questions = list(dict.fromkeys(record["question_idx"] for record in records))
        if limit is None or limit >= len(questions):
            return records
        kept = set(random.Random(EVAL_SAMPLE_SEED).sample(questions, limit))
        return [record for record in records if record["question_idx"] in kept]
    if limit is None or limit >= len(records):
        return records
    return [records[i] for i in sorted(random.Random(EVAL_SAMPLE_SEED).sample(range(len(records)), limit))]


def make_examples(task: sg.Task, records: list[dict[str, Any]], train: bool, rng: random.Random) -> list[dict]:
    """Collator examples: fields + answer (verbalizer word), choices + label (COPA), referent + length (WSC)."""
    examples = []
    for record in records:
        fields = sg.example_fields(task, record)
        if task.answer == "verbalizer":
            extra = {"question_idx": record["question_idx"]} if "question_idx" in record else {}
            examples.append({**fields, "Y": sg.gold_answer(task, record), "label": record["label"], **extra})
        elif task.answer == "copa":
            choices = [fields[name] for name in task.choices]
            examples.append({**fields, "choices": choices, "label": record["label"]})
            if train:  # the reference doubles COPA's training set with the choices swapped
                swapped = {**fields, task.choices[0]: choices[1], task.choices[1]: choices[0]}
                examples.append({**swapped, "choices": choices[::-1], "label": 1 - record["label"]})
        else:
            if train and not record["label"]:
                continue  # the reference trains WSC on the true referents only
            examples.append({**fields, "Y": sg.gold_answer(task, record), "label": record["label"],
                             "extra_masks": rng.randint(0, 3) if train else 1})
    return examples


def task_data(args: argparse.Namespace, task: sg.Task, seed: int) -> TaskData:
    rng = random.Random(seed)
    train = make_examples(task, _records(args, task, "train"), True, rng)
    dev_split = "dev32" if args.setting == "fewshot" else "val"
    dev = make_examples(task, _records(args, task, dev_split), False, rng)
    limits = args.max_eval or {}
    limit = limits.get(task.name, limits.get("*"))
    test = make_examples(task, eval_sample(task, _records(args, task, "val"), limit), False, rng)
    return TaskData(train, dev, test)


# ------------------------------------------------------------------------------------------------ scoring


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

    def __init__(self, peft_model: nn.Module, lm_kind: str) -> None:
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


class Scorer:
    """Builds training batches and predictions for one task on one adapted model.

    ``model`` both renders (its adapter's templates) and scores, unless ``scoring_model`` is set afterwards (peft's
    own prompt methods score the rows rendered for the manual pattern).
    """

    def __init__(self, task: sg.Task, model: torch.nn.Module, tokenizer: Any, max_length: int, lm_kind: str) -> None:
        self.task, self.model, self.tokenizer, self.lm_kind = task, model, tokenizer, lm_kind
        self.masked = lm_kind == "masked"
        self.labels = list(task.verbalizer or {})
        words = [task.verbalizer[label] for label in self.labels] if task.verbalizer else []
        if task.answer == "verbalizer":
            probe = PromptCollator(tokenizer, model, max_length=max_length, answers="many")
            lengths = [len(probe.answer_tokens(word)) for word in words]
            self.single = all(n == 1 for n in lengths)
            if self.single:
                ids = [probe.answer_tokens(word)[0] for word in words]
                self.collate = PromptCollator(tokenizer, model, candidate_ids=ids, max_length=max_length)
            else:
                self.collate = PromptCollator(tokenizer, model, max_length=max_length, answers="many")
        else:
            self.single = False
            pad = "pad" if task.answer == "wsc" and self.masked else "ignore"
            self.collate = PromptCollator(tokenizer, model, max_length=max_length, answers="many", pad_answer=pad)

    def batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.task.answer == "verbalizer" and not self.single:
            words = [self.task.verbalizer[label] for label in self.labels]  # type: ignore[index]
            examples = [{**e, "choices": words, "label": self.labels.index(e["label"])} for e in examples]
        if self.task.answer == "wsc":
            # masked LMs learn to fill a few extra masks (PET); a causal or seq2seq LM just continues with the referent
            examples = [{**e, "answer_length": len(self.collate.answer_tokens(e["Y"]))
                         + (e["extra_masks"] if self.masked else 0)} for e in examples]
        return on_model_device(self.model, self.collate(examples))

    @torch.no_grad()
    def predict(self, examples: list[dict[str, Any]], batch_size: int = 16, fast: bool = False) -> list[Any]:
        """One prediction per example, in the label space of the task's metric.

        On masked LMs ``fast`` scores COPA by one forward per example (the choices' sequence log-probabilities) and
        WSC by one forward (argmax at every mask) instead of the reference's one forward per filled mask. Causal and
        seq2seq LMs always score COPA by the continuations' log-probabilities in one forward.
        """
        self.model.eval()
        if self.task.answer == "copa":
            if not self.masked:
                return [int(i) for start in range(0, len(examples), batch_size)
                        for i in self.model(**self.batch(examples[start : start + batch_size])).choice_log_probs
                        .argmax(-1).tolist()]
            if fast:
                return [int(self.model(**self.batch([e])).choice_log_probs.argmax()) for e in examples]
            return [self._copa(e) for e in examples]
        if self.task.answer == "wsc":
            return [self._wsc(e, fast) for e in examples]
        predictions = []
        for start in range(0, len(examples), batch_size):
            out = self.model(**self.batch(examples[start : start + batch_size]))
            scores = out.answer_log_probs if self.single else out.choice_log_probs
            predictions += [self.labels[i] for i in scores.argmax(-1).tolist()]
        return predictions

    def _copa(self, example: dict[str, Any]) -> int:
        """Each choice scored with as many masks as its own tokens, filled most confident first (gold-guided)."""
        scores = []
        for choice in example["choices"]:
            single = {**example, "Y": choice, "choices": [choice], "label": 0}
            batch = on_model_device(self.model, self.collate([single]))
            positions = batch["score_positions"][0].tolist()
            _, score = fill_most_confident_first(self.model, batch["input_ids"][:1], positions,
                                                 batch["score_targets"][0].tolist())
            scores.append(score)
        return int(max(range(len(scores)), key=scores.__getitem__))

    def decode_referent(self, example: dict[str, Any], fast: bool = False) -> list[int]:
        """WSC's decoded referent: masked LMs fill the referent's masks plus ``extra_masks`` most confident first
        (or by one argmax per mask with ``fast``); causal and seq2seq LMs decode as many tokens greedily after the
        pattern."""
        batch = self.batch([example])
        if self.masked:
            positions = batch["score_positions"][0].tolist()
            if fast:
                return self.model(input_ids=batch["input_ids"][:1]).logits[0, positions].argmax(-1).tolist()
            return fill_most_confident_first(self.model, batch["input_ids"][:1], positions)[0]
        steps = len(self.collate.answer_tokens(example["Y"])) + example["extra_masks"]
        start = int(batch["score_positions"][0, 0]) + 1  # the row up to the token that predicts the referent
        cached = not isinstance(self.model, PeftRows)  # peft's prompt methods prepend to every forward's input
        if self.lm_kind == "causal":
            return greedy_continuation(self.model, batch["input_ids"][:1, :start], steps, use_cache=cached)[0]
        return greedy_continuation(self.model, batch["input_ids"][:1], steps, batch["decoder_input_ids"][:1, :start],
                                   use_cache=cached)[0]

    def _wsc(self, example: dict[str, Any], fast: bool = False) -> bool:
        """The decoded referent, then PET's word-set match with the candidate."""
        decoded = self.tokenizer.decode(self.decode_referent(example, fast), skip_special_tokens=True)
        words = set(re.findall(r"[a-z]+", decoded.lower()))
        gold = set(re.findall(r"[a-z]+", example["Y"].lower()))
        return bool(words) and (words <= gold or gold <= words)

    def score(self, examples: list[dict[str, Any]], fast: bool = False) -> dict[str, float]:
        return self.score_with_predictions(examples, fast)[0]

    def score_with_predictions(self, examples: list[dict[str, Any]],
                               fast: bool = False) -> tuple[dict[str, float], list[Any]]:
        predictions = self.predict(examples, fast=fast)
        references = [e["label"] for e in examples]
        kwargs = {"question_idx": [e["question_idx"] for e in examples]} if self.task.name == "MultiRC" else {}
        metric = superglue_metric(self.task.name).compute(predictions=predictions, references=references, **kwargs)
        return metric, predictions


def selection_score(task: sg.Task, metrics: dict[str, float]) -> float:
    """dev32 selection: the task's SuperGLUE score (CB: mean of accuracy and macro-F1; MultiRC: EM and F1a)."""
    return statistics.fmean(metrics[key] for key in AVERAGE_OF[task.name])


# ------------------------------------------------------------------------------------------------ one job


def manual_template(task: sg.Task, lm_kind: str) -> str:
    """The task pattern for this kind of LM without its prompt tokens: the manual prompt (MP)."""
    return re.sub(r"\s*\[P(\*\d+)?\]", "", task.adapter_template_for(lm_kind))


def adapter_config(args: argparse.Namespace, task: sg.Task, tokenizer: Any, lm_kind: str) -> Any:
    """The library adapter of ``--method`` on the task pattern (peft's own methods render the manual pattern)."""
    template = task.adapter_template_for(lm_kind)
    if args.method in ("manual", "finetune", *PEFT_NATIVE):
        return MixturePromptConfig(templates=[manual_template(task, lm_kind)], words="hard", learn_weights=False,
                                   tokenizer=tokenizer)
    if args.method in ("mixture", "deep"):
        config = MixturePromptConfig if args.method == "mixture" else DeepPerturbConfig
        return config(templates=[manual_template(task, lm_kind)], words="soft", tokenizer=tokenizer)
    return PTuningEncoderConfig(templates=[template], words="hard", encoder=args.encoder, tokenizer=tokenizer,
                                embed_size=args.embed_size, lstm_hidden_size=args.embed_size)


def native_peft_config(args: argparse.Namespace, task: sg.Task, lm_kind: str, embed_size: int) -> Any:
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


def train_settings(args: argparse.Namespace, task: sg.Task, n_train: int, seed: int) -> TrainSettings:
    hp = task.hparams
    batch = args.batch_size or hp.batch_size
    steps = args.max_steps or hp.max_steps
    epochs = max(1, math.ceil(steps / max(1, math.ceil(n_train / batch))))
    prompt_lr = args.lr or hp.prompt_encoder_lr
    # fit() puts parameters outside our adapters in the "base" group: peft's prompt encoders train at the prompt lr
    native = args.method in PEFT_NATIVE
    return TrainSettings(
        epochs=epochs, learning_rate=prompt_lr, batch_size=batch,
        eval_batch_size=hp.eval_batch_size, optimizer="adamw", schedule="linear",
        warmup_ratio=hp.warmup_steps / steps if steps else 0.0, max_grad_norm=1.0, dropout=True,
        improve_on_tie=True, patience=None, seed=seed, base_learning_rate=prompt_lr if native else args.lm_lr,
        base_weight_decay=0.0 if native else 0.1,
    )


def load_tokenizer(model: str) -> Any:
    """The checkpoint's tokenizer, with the end-of-sequence token as padding where it has no pad token (GPT-2)."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_job(args: argparse.Namespace, task: sg.Task, seed: int, accelerator: Accelerator) -> dict[str, Any]:
    started = time.time()
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(args.model)
    base = load_language_model(args.model).to(accelerator.device)
    lm_kind = detect_lm_kind(base)
    data = task_data(args, task, seed)
    native_config = None
    if args.method in PEFT_NATIVE:
        embed_size = int(base.get_input_embeddings().weight.shape[1])
        native_config = native_peft_config(args, task, lm_kind, embed_size)
    model = get_peft_model(base, adapter_config(args, task, tokenizer, lm_kind))
    limits = [task.hparams.max_seq_len, tokenizer.model_max_length,
              getattr(base.config, "max_position_embeddings", task.hparams.max_seq_len)]
    # peft prepends its virtual tokens to a causal LM's input: leave them room among the model's positions
    virtual = native_config.num_virtual_tokens if native_config is not None and lm_kind == "causal" else 0
    scorer = Scorer(task, model, tokenizer, min(limits) - virtual, lm_kind)
    if native_config is not None:
        scorer.model = PeftRows(get_peft_model(model.unload(), native_config), lm_kind)
    elif (args.method == "ptuning" and not args.frozen) or args.method == "finetune":
        for param in model.base_model.model.parameters():
            param.requires_grad_(True)
    history: list[dict[str, float]] = []
    if args.method != "manual":
        settings = train_settings(args, task, len(data.train), seed)
        result = fit(
            scorer.model, _BatchCollator(scorer), data.train, data.dev, settings,
            checkpoint_dir=Path(args.output) / "checkpoints" / f"{task.name}-seed{seed}",
            progress=accelerator.is_local_main_process, description=task.name,
            dev_metric=lambda: selection_score(task, scorer.score(data.dev, fast=args.dev_scoring == "fast")),
        )
        history = result.history
    metrics, predictions = scorer.score_with_predictions(data.test)
    references = [e["label"] for e in data.test]
    groups = [e["question_idx"] for e in data.test] if task.name == "MultiRC" else None
    return {"task": task.name, "seed": seed, "lm_kind": lm_kind, "metrics": metrics, "history": history,
            "sizes": {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)},
            "truncated_tokens": scorer.collate.truncated_tokens,
            "predictions": predictions, "references": references, "question_idx": groups,
            "seconds": round(time.time() - started, 1)}


class _BatchCollator:
    """Adapts Scorer.batch to the collator interface fit() expects (calls, candidate ids, templates)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.candidate_ids = scorer.collate.candidate_ids
        self.templates = scorer.collate.templates

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.scorer.batch(examples)


# ------------------------------------------------------------------------------------------------ report


def summarise(args: argparse.Namespace, records: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for name in dict.fromkeys(r["task"] for r in records):
        runs = [r["metrics"] for r in records if r["task"] == name]
        tasks[name] = {
            key: {"mean": 100 * statistics.fmean(m[key] for m in runs),
                  "std": 100 * statistics.stdev([m[key] for m in runs]) if len(runs) > 1 else 0.0}
            for key in runs[0]
        }
    means = {name: {k: v["mean"] / 100 for k, v in values.items()} for name, values in tasks.items()}
    return {
        "command": " ".join(sys.argv),
        "protocol": {"model": args.model, "lm_kind": records[0]["lm_kind"] if records else None,
                     "method": args.method, "setting": args.setting, "frozen": args.frozen,
                     "encoder": args.encoder, "embed_size": args.embed_size, "seeds": args.seeds,
                     "max_steps": args.max_steps, "max_eval": args.max_eval, "dev_scoring": args.dev_scoring},
        "versions": {"prompt_adapters": prompt_adapters.__version__, "torch": torch.__version__},
        "precision": args.precision,
        "elapsed_seconds": round(elapsed, 1),
        "job_seconds": {name: round(sum(r.get("seconds", 0.0) for r in records if r["task"] == name), 1)
                        for name in tasks},
        "tasks": tasks,
        "average": 100 * superglue_average(means) if len(means) == len(sg.TASKS) else None,
        "published": {t: v for t, v in (published_numbers(args) or {}).items() if t in tasks} or None,
    }


def markdown(summary: dict[str, Any]) -> str:
    p = summary["protocol"]
    lines = [
        f"# SuperGLUE {p['setting']}: {p['method']} on {p['model']}",
        "",
        f"Command: `{summary['command']}`",
        "",
        "Protocol: " + ", ".join(f"{k}={v}" for k, v in p.items()),
        "",
        "| task | metric | ours (mean ± std) | published (P-tuning, same setting) | gap |",
        "| --- | --- | --- | --- | --- |",
    ]
    published = summary["published"] or {}
    for task, metrics in summary["tasks"].items():
        for key, value in metrics.items():
            ref = published.get(task, {}).get(key)
            gap = "–" if ref is None else f"{value['mean'] - ref:+.1f}"
            lines.append(f"| {task} | {key} | {value['mean']:.1f} ± {value['std']:.1f} | "
                         f"{'–' if ref is None else f'{ref:.1f}'} | {gap} |")
    if summary["average"] is not None:
        lines += ["", f"Average (CB: mean of acc and F1; MultiRC: mean of EM and F1a): {summary['average']:.1f}"]
    per_task = ", ".join(f"{task} {seconds} s" for task, seconds in summary["job_seconds"].items())
    lines += ["", describe_precision(summary["precision"]), "",
              f"{summary['elapsed_seconds']} s; per task (all seeds): {per_task}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ comparisons


@dataclass
class TaskRuns:
    """One run's seeds on one task: predictions per seed over the same references (MultiRC: grouped by question)."""

    task: str
    predictions: list[list[Any]]
    references: list[Any]
    question_idx: list[int] | None

    @property
    def units(self) -> list[list[int]]:
        """The bootstrap's resampling units as row lists: one example each, or one MultiRC question's options."""
        if self.question_idx is None:
            return [[i] for i in range(len(self.references))]
        rows: dict[int, list[int]] = {}
        for i, question in enumerate(self.question_idx):
            rows.setdefault(question, []).append(i)
        return list(rows.values())

    def score(self, units: np.ndarray) -> float:
        """Mean over seeds of the task score on the resampled units (a unit drawn twice counts twice)."""
        groups = self.units
        rows = [(draw, row) for draw, unit in enumerate(units.tolist()) for row in groups[unit]]
        references = [self.references[row] for _, row in rows]
        ids = [draw for draw, _ in rows] if self.question_idx is not None else None
        return statistics.fmean(task_score(self.task, [seed[row] for _, row in rows], references, ids)
                                for seed in self.predictions)


def load_runs(out: Path) -> dict[str, TaskRuns]:
    """The per-task predictions of the finished jobs of an output directory (its jobs/; a run still going or
    stopped early contributes the tasks it finished)."""
    paths = sorted((out / "jobs").glob("*.json"))
    if not paths:
        raise SystemExit(f"{out} has no finished jobs (jobs/*.json); pass the --output folder of a run")
    runs: dict[str, TaskRuns] = {}
    for path in paths:
        record = json.loads(path.read_text())
        if "predictions" not in record:
            raise SystemExit(f"{path} has no predictions (written by an older version); rerun that job")
        task = runs.setdefault(record["task"], TaskRuns(record["task"], [], record["references"],
                                                        record.get("question_idx")))
        if record["references"] != task.references:
            raise SystemExit(f"{path} was scored on other examples than the other seeds of {record['task']}")
        task.predictions.append(record["predictions"])
    return runs


def compare(run_a: Path, run_b: Path, resamples: int = 1000, seed: int = 0) -> dict[str, PairedInterval]:
    """Paired bootstrap intervals of A - B for every task both runs scored and, over all of them, for the average
    of the task scores (each task's examples resampled within the task)."""
    a, b = load_runs(run_a), load_runs(run_b)
    shared = [task for task in a if task in b]
    if not shared:
        raise SystemExit(f"{run_a} ({sorted(a)}) and {run_b} ({sorted(b)}) share no task")
    for task in shared:
        if a[task].references != b[task].references or a[task].question_idx != b[task].question_idx:
            raise SystemExit(f"{task}: {run_a} and {run_b} were scored on different examples (same --max-eval?)")
    intervals = {task: paired_bootstrap(a[task].score, b[task].score, len(a[task].units), resamples, seed)
                 for task in shared}
    if len(shared) > 1:
        sizes = [len(a[task].units) for task in shared]
        starts = np.cumsum([0, *sizes[:-1]])

        def average(runs: dict[str, TaskRuns]) -> Any:
            return lambda index: statistics.fmean(
                runs[task].score(index[(index >= start) & (index < start + size)] - start)
                for task, start, size in zip(shared, starts, sizes, strict=True))

        intervals["average"] = paired_bootstrap(average(a), average(b), sizes, resamples, seed)
    return intervals


def comparison_markdown(run_a: Path, run_b: Path, intervals: dict[str, PairedInterval]) -> str:
    lines = [f"A = `{run_a}`, B = `{run_b}`: task score difference A - B (percentage points) with its paired "
             f"bootstrap 95% interval ({next(iter(intervals.values())).resamples} resamples of the evaluation "
             "examples, MultiRC questions, the same draws for both runs).", "",
             "| task | units | A - B [95% interval] | resolved |", "| --- | --- | --- | --- |"]
    for task, interval in intervals.items():
        verdict = ("A > B" if interval.low > 0 else "B > A") if interval.excludes_zero else "no"
        lines.append(f"| {task} | {interval.units} | {interval.describe(100)} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.compare:
        run_a, run_b = (Path(p) for p in args.compare)
        intervals = compare(run_a, run_b)
        print(comparison_markdown(run_a, run_b, intervals))
        return {task: vars(interval) for task, interval in intervals.items()}
    transformers_logging.disable_progress_bar()  # the run shows one bar, over its tasks
    names = list(sg.TASKS) if args.task == "all" else [sg.get_task(t).name for t in args.task.split(",")]
    check_model_source("--model", args.model)
    accelerator = Accelerator()
    args.precision = mixed_precision_used(accelerator)
    if args.precision["note"] and accelerator.is_main_process:
        print(f"warning: {args.precision['note']}", file=sys.stderr)
    started = time.time()
    out = Path(args.output)
    return run_locked(out, accelerator.is_main_process, lambda: run(args, accelerator, names, out, started))


def run_manifest(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """What a resumed run must share with the saved one: settings, library version, base model, data."""
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "output", "precision")}
    splits = ("train", "dev32" if args.setting == "fewshot" else "val", "val")
    data = {name: digest([_records(args, sg.TASKS[name], split) for split in splits]) for name in names}
    base = model_digest(load_language_model(args.model))
    return {"settings": settings, "library": prompt_adapters.__version__, "base_model": base, "data": data}


def run(args: argparse.Namespace, accelerator: Accelerator, names: list[str], out: Path,
        started: float) -> dict[str, Any] | None:
    """Run (or resume) every (task, seed) job of an output directory this process holds the lock of."""
    refuse_used_output(out, args.resume, accelerator.is_main_process)
    if accelerator.is_main_process:
        remove_stale_temporaries(out)
        remove_stale_temporaries(out / "jobs")
        try:
            check_manifest(out, run_manifest(args, names), args.resume)
        except ResumeMismatchError as error:
            raise SystemExit(str(error)) from None
    accelerator.wait_for_everyone()
    jobs = [(name, args.seed + i) for i in range(args.seeds) for name in names]
    mine = jobs[accelerator.process_index :: accelerator.num_processes]
    for name, seed in tqdm(mine, disable=not accelerator.is_local_main_process, desc="tasks"):
        target = out / "jobs" / f"{name}-seed{seed}.json"
        if args.resume and read_record(target) is not None:
            continue
        with accelerator.autocast():
            record = run_job(args, sg.TASKS[name], seed, accelerator)
        record["process"] = [accelerator.process_index, accelerator.num_processes]
        atomic_write_text(target, json.dumps(record))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    records = [json.loads((out / "jobs" / f"{n}-seed{s}.json").read_text()) for n, s in jobs]
    summary = summarise(args, records, time.time() - started)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "results.md", markdown(summary))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
