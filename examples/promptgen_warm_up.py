"""PromptGen from a warm start: teach the generator the manual prompts, then train it end to end.

Runs offline on a CPU in seconds: the downstream model is a tiny BERT and the generator a tiny BART, both built from
configs (prompt_adapters.testing). With real checkpoints, use e.g. ``bert-base-cased`` and ``facebook/bart-large``
(or the downstream model's own checkpoint as a decoder-only generator). docs/promptgen.md describes every option.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import get_peft_model

from prompt_adapters import PromptGenCollator, PromptGenConfig
from prompt_adapters.methods.promptgen import warm_up
from prompt_adapters.testing import build_tiny_model, save_tiny_model

FACTS = [
    {"X": "Dante", "Y": "Paris", "template": "[X] was born in [Y] ."},
    {"X": "Obama", "Y": "London", "template": "[X] died in [Y] ."},
    {"X": "Einstein", "Y": "Rome", "template": "[X] was born in [Y] ."},
]


def main() -> None:
    torch.manual_seed(0)
    base, tokenizer = build_tiny_model("bert")
    with tempfile.TemporaryDirectory() as folder:  # the generator's checkpoint and tokenizer
        generator = save_tiny_model("bart", Path(folder) / "bart")
        config = PromptGenConfig(generator_name_or_path=generator, tokenizer=tokenizer, num_before=4, num_after=2)
        model = get_peft_model(base, config)
        model.print_trainable_parameters()
        scoring = PromptGenCollator(tokenizer, model, leak_rows=False)
        training = PromptGenCollator(tokenizer, model)  # adds the None rows of the leak penalty
    print("untrained generator:", model.base_model.generated_prompts(scoring(FACTS), tokenizer))

    report = warm_up(model, scoring, FACTS, epochs=30, learning_rate=3e-3, batch_size=4)
    print(f"warm-up: {report['targets']} targets, loss {report['first_epoch_loss']:.2f} -> "
          f"{report['last_epoch_loss']:.2f}")
    print("after the warm-up:", model.base_model.generated_prompts(scoring(FACTS), tokenizer))

    # then the end-to-end training (benchmarks/lama.py runs it with early stopping on dev facts); one step here
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss = model(**training(FACTS)).loss
    loss.backward()
    optimizer.step()
    print(f"end-to-end loss of the first batch (answer + 0.3 x leak): {loss.item():.3f}")

if __name__ == "__main__":
    main()
