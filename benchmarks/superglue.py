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
(task, seed) jobs are spread over the accelerate processes (``prompt_adapters.job_runner``); every finished job is
written atomically to ``OUTPUT/jobs/`` with its predictions, and ``--resume`` skips it; training checkpoints every
epoch. Scoring lives in ``superglue_scoring.py``, peft's own methods in ``peft_baselines.py`` and the paired
comparisons of ``--compare`` in ``superglue_compare.py``.
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
from transformers import AutoTokenizer
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peft_baselines import PeftRows, native_peft_config
from published import published_superglue
from superglue_compare import compare, comparison_markdown
from superglue_compare import load_runs as load_runs
from superglue_scoring import Scorer, selection_score

import prompt_adapters
from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PTuningEncoderConfig
from prompt_adapters.data import superglue as sg
from prompt_adapters.job_runner import Job, JobRunner, precision_report, run_locked
from prompt_adapters.metrics.superglue import superglue_average
from prompt_adapters.model_facts import LMKind, detect_lm_kind
from prompt_adapters.models import load_language_model
from prompt_adapters.run_dir import check_model_source, digest, model_digest, positive_int
from prompt_adapters.training import TrainSettings, atomic_write_text, describe_precision, fit

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
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each finished job's training checkpoint in OUTPUT/checkpoints (by default removed "
                             "once the job's record is written: with the LM trained each is the whole model and its "
                             "optimiser state)")
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
    if args.seeds is None:  # the counts' types refuse values below 1
        args.seeds = 1 if args.method == "manual" else 3
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


# ------------------------------------------------------------------------------------------------ one job


def manual_template(task: sg.Task, lm_kind: LMKind) -> str:
    """The task pattern for this kind of LM without its prompt tokens: the manual prompt (MP)."""
    return re.sub(r"\s*\[P(\*\d+)?\]", "", task.adapter_template_for(lm_kind))


def adapter_config(args: argparse.Namespace, task: sg.Task, tokenizer: Any, lm_kind: LMKind) -> Any:
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


def checkpoint_dir(args: argparse.Namespace, task_name: str, seed: int) -> Path:
    """Where the job of ``task_name`` and ``seed`` saves its training checkpoints."""
    return Path(args.output) / "checkpoints" / f"{task_name}-seed{seed}"


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
            scorer.model, scorer.batch, data.train, data.dev, settings,
            checkpoint_dir=checkpoint_dir(args, task.name, seed),
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
        "published": {t: v for t, v in (published_superglue(args.method, args.frozen, args.setting, args.model)
                                         or {}).items() if t in tasks} or None,
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
        f"| task | metric | ours ({'mean ± std' if p['seeds'] > 1 else 'one run'}) | published (P-tuning) | gap |",
        "| --- | --- | --- | --- | --- |",
    ]
    published = summary["published"] or {}
    for task, metrics in summary["tasks"].items():
        for key, value in metrics.items():
            ref = published.get(task, {}).get(key)
            gap = "–" if ref is None else f"{value['mean'] - ref:+.1f}"
            spread = f" ± {value['std']:.1f}" if p["seeds"] > 1 else ""
            lines.append(f"| {task} | {key} | {value['mean']:.1f}{spread} | "
                         f"{'–' if ref is None else f'{ref:.1f}'} | {gap} |")
    if summary["average"] is not None:
        lines += ["", f"Average (CB: mean of acc and F1; MultiRC: mean of EM and F1a): {summary['average']:.1f}"]
    per_task = ", ".join(f"{task} {seconds} s" for task, seconds in summary["job_seconds"].items())
    lines += ["", describe_precision(summary["precision"]), "",
              f"{summary['elapsed_seconds']} s; per task (all seeds): {per_task}."]
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
    args.precision = precision_report(accelerator)
    started = time.time()
    out = Path(args.output)
    return run_locked(out, accelerator.is_main_process, lambda: run(args, accelerator, names, out, started))


def run_manifest(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """What a resumed run must share with the saved one: settings, library version, base model, data."""
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "output", "precision", "keep_checkpoints")}
    splits = ("train", "dev32" if args.setting == "fewshot" else "val", "val")
    data = {name: digest([_records(args, sg.TASKS[name], split) for split in splits]) for name in names}
    base = model_digest(load_language_model(args.model))
    return {"settings": settings, "library": prompt_adapters.__version__, "base_model": base, "data": data}


def run(args: argparse.Namespace, accelerator: Accelerator, names: list[str], out: Path,
        started: float) -> dict[str, Any] | None:
    """Run (or resume) every (task, seed) job of an output directory this process holds the lock of."""
    runner = JobRunner(out, "jobs", args.resume, accelerator, keep_checkpoints=args.keep_checkpoints)
    runner.start(lambda: run_manifest(args, names))
    jobs = [(name, args.seed + i) for i in range(args.seeds) for name in names]

    def job(name: str, seed: int) -> Job:
        return Job((f"{name}-seed{seed}",), lambda _: [run_job(args, sg.TASKS[name], seed, accelerator)],
                   checkpoints=(checkpoint_dir(args, name, seed),))

    runner.run([job(name, seed) for name, seed in jobs], progress="tasks")
    records = runner.collect([f"{name}-seed{seed}" for name, seed in jobs])
    if records is None:
        return None
    summary = summarise(args, records, time.time() - started)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "results.md", markdown(summary))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
