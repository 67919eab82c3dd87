"""Train soft prompts with ``fit`` on a frozen causal LM partitioned over processes by DeepSpeed ZeRO-3 (accelerate).

    accelerate launch --config_file benchmarks/configs/zero3.yaml examples/train_zero3.py --methods deep --output z3
    accelerate launch --config_file benchmarks/configs/zero3.yaml examples/train_zero3.py ... --epochs 5 --resume
    python examples/train_zero3.py --methods deep --output single      # one process, no DeepSpeed, for comparison

Launched with the DeepSpeed config, ``fit`` hands the model to accelerate's DeepSpeed plugin: ZeRO-3 partitions every
weight over the processes, the engine runs backward and the optimiser step, and each global batch is split over the
processes, so a run gives the losses of one process. On a machine without a GPU, DeepSpeed runs its CPU accelerator
with ``gloo``. Each method trains in turn on the same base model (``fit`` gives it back whole after training).
The output folder gets, per method, ``METHOD/adapter/`` (an ordinary adapter file), ``METHOD/checkpoints/`` (every
epoch; ``--resume`` continues from the latest), ``METHOD/result.json`` (losses per epoch, parameter elements held per
process while training; peak memory per process while training, from partitioning to the last dev score, and over
the whole fit) and ``METHOD/test_scores.pt`` (the test facts' answer log-probs).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from train_sharded import (
    FACTS,
    METHODS,
    attach_adapter,
    load_base,
    peak_rss_mib,
    refuse_finished_runs,
    reset_peak_rss,
    save_report,
)

from prompt_adapters import PromptCollator
from prompt_adapters.training import TrainSettings, fit, precision_at_1, rank_answers
from prompt_adapters.zero3 import deepspeed_plugin, launch_accelerator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="causal LM folder (default: a tiny random Llama)")
    parser.add_argument("--methods", nargs="+", default=["mixture"], choices=METHODS,
                        help="train one adapter of each, one after the other, on the same base model")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--max-grad-norm", type=float, default=None,
                        help="clip the adapter's gradient norm (under ZeRO-3 DeepSpeed's engine clips)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    refuse_finished_runs(args)
    accelerator = launch_accelerator()
    base, tokenizer = load_base(args.model)  # loaded whole (launch_accelerator), then partitioned by DeepSpeed in fit
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    reports = {}
    for method in args.methods:
        reports[method] = train_one(method, base, tokenizer, accelerator, args)
        save_report(args.output / method, reports[method], accelerator)
    return reports


def train_one(method: str, base: Any, tokenizer: Any, accelerator: Accelerator,
              args: argparse.Namespace) -> dict[str, Any]:
    """Train, save and score one adapter of ``method`` on ``base``; the base is left as found."""
    out = args.output / method
    model = attach_adapter(method, base, tokenizer)
    try:
        collator = PromptCollator(tokenizer, model)
        train, dev, test = FACTS[:17], FACTS[17:20], FACTS[20:]
        held: list[int] = []
        peaks: list[float] = []

        def dev_p1() -> float:
            """Dev P@1. fit calls it while DeepSpeed partitions the model, first right after partitioning and then
            after every epoch: it also records the elements this process holds and its peak memory since then."""
            held.append(sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters()))
            peaks.append(peak_rss_mib())
            if len(peaks) == 1:
                reset_peak_rss()
            return precision_at_1(rank_answers(model, collator, dev))

        # the settings of examples/train_sharded.py: its one-process run gives the losses to compare with
        settings = TrainSettings(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                                 patience=None, dropout=True, improve_on_tie=True, seed=0,
                                 max_grad_norm=args.max_grad_norm)
        reset_peak_rss()  # after loading: the peak of the whole fit, partitioning and giving back included
        result = fit(model, collator, train, dev, settings, checkpoint_dir=out / "checkpoints", progress=False,
                     accelerator=accelerator if deepspeed_plugin(accelerator) is not None else None,
                     dev_metric=dev_p1)
        fit_peak = peak_rss_mib()
        training_peak = max(peaks[1:], default=0.0)  # 0: no epoch left to train (a finished run resumed)
        memory = accelerator.gather(torch.tensor([training_peak, fit_peak])).view(-1, 2).tolist()
        model.eval()
        with torch.no_grad():
            scores = model(**collator(test)).answer_log_probs
        if accelerator.is_main_process:
            model.save_pretrained(out / "adapter")  # fit gave the model back whole: an ordinary adapter file
            torch.save(scores, out / "test_scores.pt")
    finally:
        model.unload()
    return {"method": method, "processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "losses": [epoch["train_loss"] for epoch in result.history],
            "parameter_elements_per_process": min(held, default=None),
            "peak_rss_mib_training_per_process": [round(row[0], 1) for row in memory],
            "peak_rss_mib_fit_per_process": [round(row[1], 1) for row in memory]}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
