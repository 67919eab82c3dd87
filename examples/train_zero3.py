"""Train a soft prompt on a frozen causal LM partitioned over processes by DeepSpeed ZeRO-3 (through accelerate).

    accelerate launch --config_file benchmarks/configs/zero3.yaml examples/train_zero3.py --method deep --output z3
    python examples/train_zero3.py --method deep --output single      # one process, no DeepSpeed, for comparison

ZeRO-3 partitions every parameter over the processes, the frozen base model's and the adapter's. The DeepSpeed
engine owns the backward pass and the optimiser step, so this is accelerate's ordinary loop (``prepare``,
``backward``, ``step``) rather than ``prompt_adapters.training.fit``, which owns both. Each global batch is split
over the processes and weighted so that DeepSpeed's gradient average is the global batch's mean: the same losses as
one process. On a machine without a GPU, DeepSpeed runs its CPU accelerator with ``gloo``. One method per launch:
a second DeepSpeed engine in the same process was seen not to train. The output folder gets ``METHOD/adapter/`` (an
ordinary adapter file, gathered from the partitions), ``METHOD/result.json`` (losses per epoch, parameter elements
held per process, peak memory of process 0) and ``METHOD/test_scores.pt`` (the test facts' answer log-probs).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from peft import get_peft_model
from train_sharded import FACTS, METHODS, adapter_config, peak_rss_mib, reset_peak_rss
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import unset_hf_deepspeed_config

from prompt_adapters import PromptCollator
from prompt_adapters.testing import build_tiny_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="causal LM folder (default: a tiny random Llama)")
    parser.add_argument("--method", default="mixture", choices=METHODS,
                        help="one per launch: a second DeepSpeed engine in the same process does not train")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--output", type=Path, required=True)
    return parser.parse_args(argv)


def process_group() -> tuple[int, int]:
    """(rank, world size) from torch.distributed: under DeepSpeed on CPUs accelerate reports one process of index 0
    in every process, so splitting batches by ``accelerator.process_index`` would give each the same examples."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    accelerator = Accelerator()
    rank, world = process_group()
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:  # no dataloader to read them from: a global batch and its per-process share
        micro = math.ceil(args.batch_size / world)
        plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=micro, train_batch_size=micro * world)
    report = train_one(args.method, accelerator, rank, world, args)
    if rank == 0:
        (args.output / args.method / "result.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report))
    return report


def train_one(method: str, accelerator: Accelerator, rank: int, world: int,
              args: argparse.Namespace) -> dict[str, Any]:
    out = args.output / method
    if args.model is None:
        base, tokenizer = build_tiny_model("llama")
    else:  # loaded whole, then partitioned by DeepSpeed in prepare(): adapters are created from whole embeddings
        unset_hf_deepspeed_config()  # (transformers would otherwise load straight into ZeRO-3 partitions)
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)  # the same adapter initialisation in every process
    config = adapter_config(method)
    config.compile(tokenizer)
    model = get_peft_model(base, config)
    collator = PromptCollator(tokenizer, model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    reset_peak_rss()  # after DeepSpeed partitioned the weights: the training peak
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    train, test = FACTS[:17], FACTS[20:]
    losses = []
    model.train()  # transformers checkpoints activations in train mode only; Llama's dropout is 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch)).tolist()
        total = 0.0
        for start in range(0, len(train), args.batch_size):
            index = order[start : start + args.batch_size]
            local, weight = index[rank::world], len(index[rank::world]) / len(index)
            if not local:  # every process runs each forward: the partitioned weights are gathered from all of them
                local, weight = index[:1], 0.0
            loss = model(**collator([train[i] for i in local])).loss * weight
            accelerator.backward(loss * world)  # DeepSpeed averages the gradients over the processes
            optimizer.step()
            optimizer.zero_grad()
            summed = loss.detach().clone()
            if world > 1:
                dist.all_reduce(summed)
            total += float(summed) * len(index)
        losses.append(total / len(train))
    model.eval()
    with torch.no_grad():
        scores = model(**collator(test)).answer_log_probs
    state = accelerator.get_state_dict(model)  # under ZeRO-3: gathered from every process's partition
    if rank == 0:
        accelerator.unwrap_model(model).save_pretrained(out / "adapter", state_dict=state)
        torch.save(scores, out / "test_scores.pt")
    accelerator.wait_for_everyone()
    return {"method": method, "processes": world, "distributed_type": str(accelerator.distributed_type),
            "losses": losses, "parameter_elements_per_process": held, "peak_rss_mib_training": round(peak_rss_mib(), 1)}


if __name__ == "__main__":
    main()
