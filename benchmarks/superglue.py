"""SuperGLUE / FewGLUE with P-tuning: cloze patterns with prompt tokens and anchors, the reference tables side by side.

    accelerate launch benchmarks/superglue.py --task rte --model albert-xxlarge-v2 --method ptuning \
        --setting fewshot --data-dir DATA/superglue

Tasks are declared as data in ``prompt_adapters.data.superglue.TASKS`` (template, verbalizer, preprocessing,
hyper-parameters). Classification tasks are scored by the verbalizer logits at the answer slot (a multiple choice
over the verbalizer words' token sequences when a word is several tokens); COPA by gold-guided most-confident-first
unmasking of each choice, WSC by greedy most-confident-first decoding and a word-set match, as in the reference code.
(task, seed) jobs are spread over the accelerate processes; every finished job is written atomically to
``OUTPUT/jobs/`` and ``--resume`` skips it; training checkpoints every epoch.
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

import torch
from accelerate import Accelerator
from peft import get_peft_model
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

import prompt_adapters
from prompt_adapters import PromptCollator, PTuningEncoderConfig
from prompt_adapters.data import superglue as sg
from prompt_adapters.metrics.superglue import AVERAGE_OF, superglue_average, superglue_metric
from prompt_adapters.run_dir import (
    ResumeMismatchError,
    check_manifest,
    check_model_source,
    digest,
    model_digest,
    positive_int,
    refuse_used_output,
    remove_stale_temporaries,
    run_locked,
)
from prompt_adapters.scoring import fill_most_confident_first
from prompt_adapters.training import (
    TrainSettings,
    atomic_write_text,
    describe_precision,
    fit,
    mixed_precision_used,
    on_model_device,
)

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


def published_numbers(args: argparse.Namespace) -> dict[str, dict[str, float]] | None:
    """The P-tuning numbers of the same setting: Table 5 (few-shot) or Table 3/4 by model (full)."""
    if args.method != "ptuning":
        return None
    if args.setting == "fewshot":
        return PUBLISHED_FEWSHOT
    return PUBLISHED_FULL.get(args.model.rstrip("/").split("/")[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="all", help="comma-separated tasks, or 'all': " + ", ".join(sg.TASKS))
    parser.add_argument("--model", default="albert-xxlarge-v2", help="masked LM: Hub id or local directory")
    parser.add_argument("--method", default="ptuning", choices=("ptuning", "manual"),
                        help="ptuning, or manual = the task pattern without prompt tokens, untrained (MP zero-shot)")
    parser.add_argument("--setting", default="fewshot", choices=("fewshot", "full"))
    parser.add_argument("--data-dir", default=str(sg.default_superglue_dir()),
                        help="FewGLUE / SuperGLUE folder (default: where download_fewglue() puts it)")
    parser.add_argument("--frozen", action="store_true", help="freeze the LM (default: joint fine-tuning, as P-tuning)")
    parser.add_argument("--encoder", default="lstm", choices=("lstm", "mlp", "none"))
    parser.add_argument("--embed-size", type=positive_int, default=128,
                        help="prompt-encoder embedding size (paper: 128)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="override the task's optimiser steps")
    parser.add_argument("--lr", type=float, default=None, help="override the task's prompt-encoder learning rate")
    parser.add_argument("--lm-lr", type=float, default=1e-5, help="learning rate of the fine-tuned LM")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="override the task's effective batch size")
    parser.add_argument("--max-eval", type=positive_int, default=None, help="score at most N examples of the eval set")
    parser.add_argument("--dev-scoring", default="pet", choices=("pet", "fast"),
                        help="COPA/WSC model selection: the reference's iterative unmasking, or one forward")
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="runs/superglue")
    parser.add_argument("--resume", action="store_true")
    return parser.parse_args(argv)


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
    test = make_examples(task, _records(args, task, "val")[: args.max_eval], False, rng)
    return TaskData(train, dev, test)


# ------------------------------------------------------------------------------------------------ scoring


class Scorer:
    """Builds training batches and predictions for one task on one adapted model."""

    def __init__(self, task: sg.Task, model: torch.nn.Module, tokenizer: Any, max_length: int) -> None:
        self.task, self.model, self.tokenizer = task, model, tokenizer
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
            pad = "pad" if task.answer == "wsc" else "ignore"
            self.collate = PromptCollator(tokenizer, model, max_length=max_length, answers="many", pad_answer=pad)

    def batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.task.answer == "verbalizer" and not self.single:
            words = [self.task.verbalizer[label] for label in self.labels]  # type: ignore[index]
            examples = [{**e, "choices": words, "label": self.labels.index(e["label"])} for e in examples]
        if self.task.answer == "wsc":
            examples = [{**e, "answer_length": len(self.collate.answer_tokens(e["Y"])) + e["extra_masks"]}
                        for e in examples]
        return on_model_device(self.model, self.collate(examples))

    @torch.no_grad()
    def predict(self, examples: list[dict[str, Any]], batch_size: int = 16, fast: bool = False) -> list[Any]:
        """One prediction per example, in the label space of the task's metric.

        ``fast`` scores COPA by one forward per example (the choices' sequence log-probabilities) and WSC by one
        forward (argmax at every mask) instead of the reference's one forward per filled mask.
        """
        self.model.eval()
        if self.task.answer == "copa":
            if fast:
                return [int(self.model(**on_model_device(self.model, self.collate([e]))).choice_log_probs.argmax())
                        for e in examples]
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

    def _wsc(self, example: dict[str, Any], fast: bool = False) -> bool:
        """Greedy most-confident-first decoding of the masks, then PET's word-set match with the candidate."""
        batch = self.batch([example])
        positions = batch["score_positions"][0].tolist()
        if fast:
            filled = self.model(input_ids=batch["input_ids"][:1]).logits[0, positions].argmax(-1).tolist()
        else:
            filled, _ = fill_most_confident_first(self.model, batch["input_ids"][:1], positions)
        decoded = self.tokenizer.decode(filled, skip_special_tokens=True)
        words = set(re.findall(r"[a-z]+", decoded.lower()))
        gold = set(re.findall(r"[a-z]+", example["Y"].lower()))
        return bool(words) and (words <= gold or gold <= words)

    def score(self, examples: list[dict[str, Any]], fast: bool = False) -> dict[str, float]:
        predictions = self.predict(examples, fast=fast)
        references = [e["label"] for e in examples]
        kwargs = {"question_idx": [e["question_idx"] for e in examples]} if self.task.name == "MultiRC" else {}
        return superglue_metric(self.task.name).compute(predictions=predictions, references=references, **kwargs)


def selection_score(task: sg.Task, metrics: dict[str, float]) -> float:
    """dev32 selection: the task's SuperGLUE score (CB: mean of accuracy and macro-F1; MultiRC: EM and F1a)."""
    return statistics.fmean(metrics[key] for key in AVERAGE_OF[task.name])


# ------------------------------------------------------------------------------------------------ one job


def adapter_config(args: argparse.Namespace, task: sg.Task, tokenizer: Any) -> Any:
    """P-tuning on the task pattern, or (manual) the pattern without its prompt tokens as a hard prompt."""
    template = task.adapter_template
    if args.method == "manual":
        stripped = re.sub(r"\s*\[P(\*\d+)?\]", "", template)
        return prompt_adapters.MixturePromptConfig(templates=[stripped], words="hard", tokenizer=tokenizer)
    return PTuningEncoderConfig(templates=[template], words="hard", encoder=args.encoder, tokenizer=tokenizer,
                                embed_size=args.embed_size, lstm_hidden_size=args.embed_size)


def train_settings(args: argparse.Namespace, task: sg.Task, n_train: int, seed: int) -> TrainSettings:
    hp = task.hparams
    batch = args.batch_size or hp.batch_size
    steps = args.max_steps or hp.max_steps
    epochs = max(1, math.ceil(steps / max(1, math.ceil(n_train / batch))))
    return TrainSettings(
        epochs=epochs, learning_rate=args.lr or hp.prompt_encoder_lr, batch_size=batch,
        eval_batch_size=hp.eval_batch_size, optimizer="adamw", schedule="linear",
        warmup_ratio=hp.warmup_steps / steps if steps else 0.0, max_grad_norm=1.0, dropout=True,
        improve_on_tie=True, patience=None, seed=seed, base_learning_rate=args.lm_lr, base_weight_decay=0.1,
    )


def run_job(args: argparse.Namespace, task: sg.Task, seed: int, accelerator: Accelerator) -> dict[str, Any]:
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForMaskedLM.from_pretrained(args.model).to(accelerator.device)
    data = task_data(args, task, seed)
    model = get_peft_model(base, adapter_config(args, task, tokenizer))
    if args.method == "ptuning" and not args.frozen:
        for param in model.base_model.model.parameters():
            param.requires_grad_(True)
    limits = [task.hparams.max_seq_len, tokenizer.model_max_length,
              getattr(base.config, "max_position_embeddings", task.hparams.max_seq_len)]
    scorer = Scorer(task, model, tokenizer, min(limits))
    history: list[dict[str, float]] = []
    if args.method == "ptuning":
        settings = train_settings(args, task, len(data.train), seed)
        result = fit(
            model, _BatchCollator(scorer), data.train, data.dev, settings,
            checkpoint_dir=Path(args.output) / "checkpoints" / f"{task.name}-seed{seed}",
            progress=accelerator.is_local_main_process, description=task.name,
            dev_metric=lambda: selection_score(task, scorer.score(data.dev, fast=args.dev_scoring == "fast")),
        )
        history = result.history
    metrics = scorer.score(data.test)
    return {"task": task.name, "seed": seed, "metrics": metrics, "history": history,
            "sizes": {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)}}


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
        "protocol": {"model": args.model, "method": args.method, "setting": args.setting, "frozen": args.frozen,
                     "encoder": args.encoder, "embed_size": args.embed_size, "seeds": args.seeds,
                     "max_steps": args.max_steps, "max_eval": args.max_eval, "dev_scoring": args.dev_scoring},
        "versions": {"prompt_adapters": prompt_adapters.__version__, "torch": torch.__version__},
        "precision": args.precision,
        "elapsed_seconds": round(elapsed, 1),
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
    lines += ["", describe_precision(summary["precision"]), "", f"{summary['elapsed_seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
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
    base = model_digest(AutoModelForMaskedLM.from_pretrained(args.model))
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
        if args.resume and target.exists():
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
