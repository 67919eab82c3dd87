"""Quickstart: train a mixture-of-soft-prompts adapter on a tiny masked LM and compare answers before and after.

Runs offline on a CPU in seconds: the model is a tiny BERT built from a config (prompt_adapters.testing), with
large random weights so that its answers depend on the prompt. With a real checkpoint, replace the first lines by
``AutoModelForMaskedLM.from_pretrained("bert-base-cased")`` and its tokenizer.
"""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model

import prompt_adapters
from prompt_adapters import MixturePromptConfig, PromptCollator
from prompt_adapters.testing import build_tiny_model, widen_weights

FACTS = [("Dante", "Paris"), ("Obama", "London"), ("Einstein", "Rome"), ("Newton", "Berlin")]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y] ."]


def answers(model: PeftModel, collate: PromptCollator, tokenizer) -> list[str]:  # type: ignore[no-untyped-def]
    """The model's top answer for every fact (the mixture's argmax over the vocabulary)."""
    with torch.no_grad():
        log_probs = model(**collate(FACTS)).answer_log_probs
    return tokenizer.convert_ids_to_tokens(log_probs.argmax(-1).tolist())


def main() -> None:
    torch.manual_seed(0)
    base, tokenizer = build_tiny_model("bert")
    widen_weights(base)

    model = get_peft_model(base, MixturePromptConfig(templates=TEMPLATES, tokenizer=tokenizer))
    model.print_trainable_parameters()
    collate = PromptCollator(tokenizer, model)
    before = answers(model, collate, tokenizer)

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(80):
        optimizer.zero_grad()
        loss = model(**collate(FACTS)).loss
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    after = answers(model, collate, tokenizer)

    print(f"\n{'subject':<10} {'gold':<8} {'before':<12} {'after':<12}")
    for (subject, gold), old, new in zip(FACTS, before, after, strict=True):
        print(f"{subject:<10} {gold:<8} {old:<12} {new:<12}")
    hits = [sum(a == gold for a, (_, gold) in zip(preds, FACTS, strict=True)) for preds in (before, after)]
    weights = model.base_model.state.log_weights("default").exp().tolist()
    print(f"\nP@1 before {hits[0]}/{len(FACTS)}, after {hits[1]}/{len(FACTS)}; mixture weights {weights}")

    # Raw text through the adapter's template: plain tokenizer output would run the bare model (with a warning).
    inputs = collate.inputs(["Dante", "Obama"], template=0)
    with torch.no_grad():
        logits = model(**inputs).logits
    at_mask = logits[inputs["input_ids"] == tokenizer.mask_token_id].argmax(-1)
    print(f"template 0 on raw subjects answers {tokenizer.convert_ids_to_tokens(at_mask.tolist())}")
    generate_with_a_causal_lm()
    print(f"prompt_adapters {prompt_adapters.__version__}")


def generate_with_a_causal_lm() -> None:
    """``generate`` on a causal LM: the soft prompt is written once, then decoding continues at ``[Y]``."""
    base, tokenizer = build_tiny_model("gpt2")
    model = get_peft_model(base, MixturePromptConfig(templates=["[X] was born in [Y]"], tokenizer=tokenizer))
    tokenizer.padding_side = "left"  # batched generation with a causal LM pads on the left
    inputs = PromptCollator(tokenizer, model).inputs(["Dante", "Barack Obama"])
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new_tokens = generated[:, inputs["input_ids"].shape[1]:]
    print(f"generated continuations (tiny random GPT-2): {tokenizer.batch_decode(new_tokens)}")


if __name__ == "__main__":
    main()
