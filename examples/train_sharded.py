"""Train a soft prompt on a frozen causal LM whose weights are sharded over processes with PyTorch's FSDP2.

    torchrun --nproc_per_node 2 examples/train_sharded.py --model DIR --methods mixture --output runs/sharded
    python examples/train_sharded.py --model DIR --methods mixture --output runs/single   # one process, for comparison

Each process holds 1/N of every transformer block, the embeddings and the LM head (``shard_base_model``); the
adapter stays whole in every process and its gradient is summed over processes, so a run gives the same losses as
one process with the same global batch. Gradient checkpointing is on. On CPUs the processes talk through ``gloo``.

For each method the output folder gets ``METHOD/adapter/`` (an ordinary adapter: ``PeftModel.from_pretrained``
loads it in one process), ``METHOD/checkpoints/`` (every epoch; ``--resume`` continues from the latest),
``METHOD/result.json`` (losses per epoch, memory per process) and ``METHOD/test_scores.pt`` (the test facts' answer
log-probs). Without ``--model`` a tiny random Llama is built.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from prompt_adapters import DeepPerturbConfig, MixturePromptConfig, PromptCollator, PTuningEncoderConfig
from prompt_adapters.sharding import shard_base_model
from prompt_adapters.testing import build_tiny_model
from prompt_adapters.training import TrainSettings, fit

#: (city, country) facts, split into train / dev / test below
FACTS = [
    ("Florence", "Italy"), ("Milan", "Italy"), ("Venice", "Italy"), ("Naples", "Italy"), ("Pisa", "Italy"),
    ("Munich", "Germany"), ("Hamburg", "Germany"), ("Frankfurt", "Germany"), ("Bonn", "Germany"),
    ("Barcelona", "Spain"), ("Seville", "Spain"), ("Malaga", "Spain"), ("Salzburg", "Austria"), ("Lyon", "France"),
    ("Marseille", "France"), ("Manchester", "England"), ("Liverpool", "England"), ("Leiden", "Netherlands"),
    ("Kyoto", "Japan"), ("Osaka", "Japan"), ("Toronto", "Canada"), ("Montreal", "Canada"), ("Chicago", "America"),
    ("Ravenna", "Italy"),
]
TEMPLATES = ["[X] is a city in [Y]", "[X] lies in [Y]"]
METHODS = ("mixture", "deep", "ptuning")


def adapter_config(method: str) -> Any:
    if method == "mixture":
        return MixturePromptConfig(templates=TEMPLATES)
    if method == "deep":
        return DeepPerturbConfig(templates=TEMPLATES)
    return PTuningEncoderConfig(templates=["[P*3] [X] [P*2] [Y]"], encoder="mlp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="causal LM folder (default: a tiny random Llama)")
    parser.add_argument("--methods", nargs="+", default=["mixture"], choices=METHODS,
                        help="train one adapter of each, one after the other, on the same sharded model")
    parser.add_argument("--no-shard", action="store_true", help="plain data parallel: every process holds the model")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    """This process's peak resident memory since start, or since the last ``reset_peak_rss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start the peak-memory count afresh (Linux), so the training peak excludes loading the full model."""
    clear = Path("/proc/self/clear_refs")
    if clear.exists():
        clear.write_text("5")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    refuse_finished_runs(args)
    # the processes of torchrun or accelerate launch (one without either), on CPUs when there is no GPU
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    base, tokenizer = load_base(args.model)
    base.to(accelerator.device)
    loaded_mib = peak_rss_mib()
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    sharded = not args.no_shard and accelerator.num_processes > 1
    if sharded:
        shard_base_model(base)  # once; each adapter below is added to (and removed from) the sharded model
    reports = {}
    for method in args.methods:
        reset_peak_rss()
        reports[method] = train_one(method, base, tokenizer, accelerator, args)
        reports[method].update(sharded=sharded, peak_rss_mib_loading=round(loaded_mib, 1))
        save_report(args.output / method, reports[method], accelerator)
    return reports


def refuse_finished_runs(args: argparse.Namespace) -> None:
    """Stop before loading anything when ``--output`` already holds a finished method and ``--resume`` is off."""
    done = [method for method in args.methods if (args.output / method / "result.json").exists()]
    if done and not args.resume:
        raise SystemExit(f"--output {args.output} already holds finished runs of {done}; pass --resume or another "
                         "folder")


def load_base(model_dir: Path | None) -> tuple[Any, Any]:
    """The frozen causal LM and its tokenizer from ``model_dir`` (float32), or a tiny random Llama without one."""
    if model_dir is None:
        return build_tiny_model("llama")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(model_dir)


def attach_adapter(method: str, base: Any, tokenizer: Any) -> Any:
    """``method``'s adapter on ``base``, initialised alike in every process."""
    torch.manual_seed(0)
    config = adapter_config(method)
    config.compile(tokenizer)
    return get_peft_model(base, config)


def save_report(folder: Path, report: dict[str, Any], accelerator: Accelerator) -> None:
    """``folder/result.json`` and the report on stdout from the main process; the others wait for it."""
    if accelerator.is_main_process:
        (folder / "result.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report))
    accelerator.wait_for_everyone()


def train_one(method: str, base: Any, tokenizer: Any, accelerator: Accelerator,
              args: argparse.Namespace) -> dict[str, Any]:
    """Train, save and score one adapter of ``method`` on ``base`` (sharded or not); the base is left as found."""
    out = args.output / method
    model = attach_adapter(method, base, tokenizer)
    try:
        collator = PromptCollator(tokenizer, model)
        train, dev, test = FACTS[:17], FACTS[17:20], FACTS[20:]
        # dropout=True: the model in train mode, where transformers runs gradient checkpointing (Llama's dropout is 0);
        # improve_on_tie: a dev score equal to the best keeps the later epoch (a tiny random model's dev P@1 stays 0)
        settings = TrainSettings(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                                 patience=None, dropout=True, improve_on_tie=True, seed=0)
        result = fit(model, collator, train, dev, settings, checkpoint_dir=out / "checkpoints", progress=False,
                     accelerator=accelerator if accelerator.num_processes > 1 else None)
        model.eval()
        with torch.no_grad():
            scores = model(**collator(test)).answer_log_probs
        local_bytes = sum(_local(p).numel() * p.element_size() for p in model.parameters())
        memory = accelerator.gather(torch.tensor([peak_rss_mib()])).tolist()
        if accelerator.is_main_process:
            model.save_pretrained(out / "adapter")
            torch.save(scores, out / "test_scores.pt")  # answer log-probs of the test facts
    finally:
        model.unload()
    return {
        "method": method,
        "processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "losses": [epoch["train_loss"] for epoch in result.history],
        "dev_p1": [epoch["dev_p1"] for epoch in result.history],
        "peak_rss_mib_training_per_process": [round(value, 1) for value in memory],
        "parameter_mib_per_process": round(local_bytes / 2**20, 1),
    }


def _local(param: torch.Tensor) -> torch.Tensor:
    """A sharded parameter's own shard on this process; a plain tensor as it is."""
    return param.to_local() if hasattr(param, "to_local") else param


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
