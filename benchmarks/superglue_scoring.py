"""SuperGLUE scoring of one task on one adapted model: training batches, predictions and the task's metric.

Classification tasks are scored by the verbalizer words' log-probability at the answer slot (summed over the tokens
of a multi-token word). On masked LMs COPA is scored by gold-guided most-confident-first unmasking of each choice and
WSC by greedy most-confident-first decoding and a word-set match, as in the reference code; on causal and seq2seq LMs
COPA compares the two choices' continuation log-probabilities and WSC decodes greedily left to right before the same
word-set match. The answer and continuation scores come from ``prompt_adapters.scoring``.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

import torch
from peft_baselines import PeftRows

from prompt_adapters import PromptCollator
from prompt_adapters.data import superglue as sg
from prompt_adapters.metrics.superglue import AVERAGE_OF, superglue_metric
from prompt_adapters.model_facts import LMKind
from prompt_adapters.scoring import fill_most_confident_first, greedy_continuation
from prompt_adapters.training import on_model_device


class Scorer:
    """Builds training batches and predictions for one task on one adapted model.

    ``model`` both renders (its adapter's templates) and scores, unless ``scoring_model`` is set afterwards (peft's
    own prompt methods score the rows rendered for the manual pattern).
    """

    def __init__(self, task: sg.Task, model: torch.nn.Module, tokenizer: Any, max_length: int, lm_kind: LMKind) -> None:
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
                return self._batched(examples, batch_size,
                                     lambda out: out.choice_log_probs.argmax(-1).tolist(), int)
            if fast:
                return [int(self.model(**self.batch([e])).choice_log_probs.argmax()) for e in examples]
            return [self._copa(e) for e in examples]
        if self.task.answer == "wsc":
            return [self._wsc(e, fast) for e in examples]
        return self._batched(
            examples, batch_size,
            lambda out: (out.answer_log_probs if self.single else out.choice_log_probs).argmax(-1).tolist(),
            self.labels.__getitem__)

    def _batched(self, examples: list[dict[str, Any]], batch_size: int, best: Any, label: Any) -> list[Any]:
        """Predictions in the examples' order, scored in batches of similar length (fewer padding tokens: an
        evaluation set of long and short passages otherwise pads every batch to its longest row)."""
        order = sorted(range(len(examples)), key=lambda i: text_length(examples[i]))
        predictions: list[Any] = [None] * len(examples)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for index, choice in zip(chunk, best(self.model(**self.batch([examples[i] for i in chunk]))), strict=True):
                predictions[index] = label(choice)
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


def text_length(example: dict[str, Any]) -> int:
    """Characters in an example's text fields: the sort key that groups rows of similar token length."""
    return sum(len(value) for value in example.values() if isinstance(value, str))


def selection_score(task: sg.Task, metrics: dict[str, float]) -> float:
    """dev32 selection: the task's SuperGLUE score (CB: mean of accuracy and macro-F1; MultiRC: EM and F1a)."""
    return statistics.fmean(metrics[key] for key in AVERAGE_OF[task.name])
