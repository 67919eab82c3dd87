"""Fine-tune a soft prompt and a P-tuning adapter with TRL's SFTTrainer on a small chat dataset, then serve them.

    pip install "prompt-adapters[trl]"
    python examples/sft_soft_prompt.py                          # a tiny random Llama built here (seconds)
    python examples/sft_soft_prompt.py --model models/smollm2   # SmolLM2-135M-Instruct (benchmarks/models.py)

The conversations ask for the capital of a country; the answers use one fixed format ("Capital: Paris."). Each
conversation goes through the tokenizer's chat template with the adapter's soft prompt in front
(``prompt_adapters.sft.sft_example``); only the assistant's answer is trained. ``SFTTrainer`` gets our config as its
``peft_config`` and wraps the model itself. For each method the script prints the loss on the training and the
held-out conversations before and after training, saves the adapter and reloads it (same loss), compares ``generate``
with the bare model's on held-out questions, and checks that the input embeddings ``input_embeds`` exports for an
inference server (vLLM ``prompt_embeds``, SGLang ``input_embeds``) make the bare model generate the same tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from prompt_adapters import MixturePromptConfig, PTuningEncoderConfig
from prompt_adapters.serving import input_embeds
from prompt_adapters.sft import chat_prompt_ids, sft_example
from prompt_adapters.testing import build_tiny_model

TRAIN = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Greece", "Athens"), ("Poland", "Warsaw"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Hungary", "Budapest"),
    ("Egypt", "Cairo"), ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Peru", "Lima"),
    ("Cuba", "Havana"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Chile", "Santiago"), ("Turkey", "Ankara"),
]
HELD_OUT = [("Belgium", "Brussels"), ("Thailand", "Bangkok"), ("Argentina", "Buenos Aires"), ("Iran", "Tehran")]
#: for tokenizers without a chat template (the tiny test tokenizer)
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def question(country: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of {country}?"}]


def conversation(country: str, capital: str) -> list[dict[str, str]]:
    return [*question(country), {"role": "assistant", "content": f"Capital: {capital}."}]


def load(model_dir: Path | None) -> tuple[Any, Any]:
    """The base model and its tokenizer: a checkpoint folder, or a tiny random Llama built the same way every time."""
    if model_dir is not None:
        return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model("llama")
    with torch.no_grad():  # larger random weights (norms kept), so that the answers depend on the prompt
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.2)
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return model, tokenizer


def make_config(method: str, tokenizer: Any) -> Any:
    """A soft prompt initialised from an instruction's words (as peft's ``PromptTuningInit.TEXT``), or P-tuning's
    eight pseudo tokens produced by an MLP encoder; both sit in front of the conversation."""
    if method == "soft prompt":
        return MixturePromptConfig(templates=["Answer with the capital only . [Y]"], tokenizer=tokenizer)
    return PTuningEncoderConfig(templates=["[P*8] [Y]"], encoder="mlp", tokenizer=tokenizer)


def greedy(model: Any, ids: list[int], tokenizer: Any, new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


def run(method: str, args: argparse.Namespace, out_dir: Path) -> None:
    started = time.time()
    base, tokenizer = load(args.model)
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    plain_ids = [tokenizer.apply_chat_template(question(country), add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"] for country, _ in HELD_OUT]
    bare_answers = [greedy(base, ids, tokenizer, args.new_tokens) for ids in plain_ids]  # before any adapter

    config = make_config(method, tokenizer)
    train = Dataset.from_list([sft_example(conversation(*pair), tokenizer, config, base) for pair in TRAIN])
    held_out = Dataset.from_list([sft_example(conversation(*pair), tokenizer, config, base) for pair in HELD_OUT])
    settings = SFTConfig(output_dir=str(out_dir / "run"), max_steps=args.steps, learning_rate=args.learning_rate,
                         per_device_train_batch_size=8, logging_steps=max(1, args.steps // 5), save_strategy="no",
                         report_to="none", bf16=False, use_cpu=not torch.cuda.is_available(), seed=0)
    trainer = SFTTrainer(model=base, peft_config=config, train_dataset=train, processing_class=tokenizer,
                         eval_dataset={"train": train, "held_out": held_out}, args=settings)
    before = trainer.evaluate()
    tuning = time.time()
    trainer.train()
    tuning = time.time() - tuning
    after = trainer.evaluate()
    trainer.save_model(str(out_dir / "adapter"))

    fresh, _ = load(args.model)
    reloaded = PeftModel.from_pretrained(fresh, str(out_dir / "adapter")).eval()
    batch = trainer.data_collator([held_out[i] for i in range(len(held_out))])
    with torch.no_grad():
        trained_loss, reloaded_loss = trainer.model.cpu().eval()(**batch).loss, reloaded(**batch).loss
    torch.testing.assert_close(reloaded_loss, trained_loss)

    prompted = [chat_prompt_ids(question(country), tokenizer, config, reloaded) for country, _ in HELD_OUT]
    tuned_answers = [greedy(reloaded, ids, tokenizer, args.new_tokens) for ids in prompted]
    served = input_embeds(reloaded, {"input_ids": torch.tensor([prompted[0]])})[0]  # for vLLM / SGLang
    bare = reloaded.unload()  # the base model without the adapter's hooks, as a server runs it
    with torch.no_grad():
        from_embeds = bare.generate(inputs_embeds=served[None], attention_mask=torch.ones(1, len(served),
                                    dtype=torch.long), max_new_tokens=args.new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
    assert from_embeds[0].tolist() == tuned_answers[0], "served embeddings must generate the adapter's tokens"
    assert tuned_answers != bare_answers, "the trained adapter should change what the model generates"

    print(f"\n== {method} ({type(config).__name__}) on {type(base).__name__}")
    for split in ("train", "held_out"):
        print(f"  loss on {split:<9} conversations: {before[f'eval_{split}_loss']:.3f} -> "
              f"{after[f'eval_{split}_loss']:.3f}")
    print(f"  saved and reloaded: held-out loss {float(reloaded_loss):.4f} (trained model {float(trained_loss):.4f})")
    for (country, _), plain, tuned in zip(HELD_OUT, bare_answers, tuned_answers, strict=True):
        plain_text, tuned_text = tokenizer.decode(plain).strip(), tokenizer.decode(tuned).strip()
        print(f"  {country:<10} bare: {plain_text!r:<40} tuned: {tuned_text!r}")
    print(f"  served as input embeddings {tuple(served.shape)}: the bare model generates the adapter's tokens")
    print(f"  {args.steps} steps in {tuning:.0f} s; {time.time() - started:.0f} s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="a causal LM folder with a chat template (default: a tiny random Llama built here)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 40 tiny, 60 SmolLM2)")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: 0.05 tiny, 0.01 checkpoint")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per held-out question")
    args = parser.parse_args()
    args.steps = args.steps or (40 if args.model is None else 60)
    args.learning_rate = args.learning_rate or (0.05 if args.model is None else 0.01)
    with tempfile.TemporaryDirectory() as scratch:
        for method in ("soft prompt", "P-tuning"):
            run(method, args, Path(scratch) / method.replace(" ", "_"))


if __name__ == "__main__":
    main()
