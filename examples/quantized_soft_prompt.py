"""Train a soft prompt on a base model loaded in 4-bit (or 8-bit) with bitsandbytes, save it, and load it again.

Runs on a CPU (bitsandbytes' CPU backend): by default on a tiny Llama built here and saved in full precision, or on
a real checkpoint folder with ``--model DIR`` (e.g. SmolLM2 made by ``python benchmarks/models.py smollm2 --out DIR``).
The base model is loaded quantized and prepared with peft's ``prepare_model_for_kbit_training``; only the adapter
trains. See docs/quantized.md.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LlamaForCausalLM

from prompt_adapters import MixturePromptConfig, PromptCollator
from prompt_adapters.testing import build_tiny_model, widen_weights

FACTS = [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Japan", "Tokyo")]


def save_tiny_llama(directory: Path) -> Path:
    """A tiny Llama 64 wide (bitsandbytes' 4-bit CPU kernels need layers at least that wide), saved with its
    tokenizer; large random weights so that its answers depend on the prompt."""
    tiny, tokenizer = build_tiny_model("llama")
    config = copy.deepcopy(tiny.config)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    widen_weights(model, std=0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_quantized(model_dir: Path, bits: int) -> torch.nn.Module:
    if bits == 8:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a causal LM checkpoint folder (default: a tiny Llama)")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp())
    model_dir = args.model or save_tiny_llama(workdir / "base")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    base = prepare_model_for_kbit_training(load_quantized(model_dir, args.bits))
    torch.manual_seed(0)
    model = get_peft_model(base, MixturePromptConfig(templates=["The capital of [X] is [Y] ."], tokenizer=tokenizer))
    model.print_trainable_parameters()
    batch = PromptCollator(tokenizer, model)(FACTS)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.3f}")

    model.eval()
    with torch.no_grad():
        trained = model(**batch).answer_log_probs
    model.save_pretrained(workdir / "adapter")
    loaded = PeftModel.from_pretrained(load_quantized(model_dir, args.bits), workdir / "adapter")
    with torch.no_grad():
        reloaded = loaded(**batch).answer_log_probs
    difference = float((reloaded - trained).abs().max())
    print(f"{args.bits}-bit base: adapter saved and reloaded, largest score difference {difference:.2e}")


if __name__ == "__main__":
    main()
