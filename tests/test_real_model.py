"""Smoke tests on a real pretrained model: SmolLM2-135M (from ``python benchmarks/models.py smollm2 --out DIR``).

Set ``PROMPT_ADAPTERS_SMOLLM2=DIR`` to run them; without it they are skipped with that instruction. They check the
converted folder, then tune a soft prompt on real LAMA facts (T-REx P27, shipped in examples/data) and require it
to beat the manual prompt on held-out facts. The manual template "[X] is [Y] citizen ." makes the model answer "a"
("is a citizen"), so the manual prompt scores 0 P@1 over the whole vocabulary; the tuned prompt learns to answer
with a country (25 P@1 after three epochs on 32 facts when this test was written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

MODEL_ENV = "PROMPT_ADAPTERS_SMOLLM2"
MODEL_DIR = os.environ.get(MODEL_ENV)
FACTS = Path(__file__).resolve().parents[1] / "examples" / "data" / "trex_P27.jsonl"

pytestmark = pytest.mark.skipif(
    not MODEL_DIR,
    reason=f"set {MODEL_ENV} to a folder written by `python benchmarks/models.py smollm2 --out DIR` to run the "
    "real-model tests",
)


@pytest.fixture(scope="module")
def smollm2() -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval(), tokenizer


def test_converted_folder_is_smollm2_and_knows_a_fact(smollm2: tuple[torch.nn.Module, object]) -> None:
    from prompt_adapters.models import PACKAGED_MODELS, fetch_model, is_converted

    assert is_converted(Path(MODEL_DIR), PACKAGED_MODELS["smollm2"])
    messages: list[str] = []
    fetch_model("smollm2", MODEL_DIR, log=messages.append)  # the finished folder is reused, nothing downloaded
    assert messages == [f"{MODEL_DIR} already holds smollm2; nothing to do"]
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_token = model(**ids).logits[0, -1].argmax()
    assert tokenizer.decode([int(next_token)]) == " Paris"


def test_soft_prompt_beats_the_manual_prompt_on_held_out_facts(smollm2: tuple[torch.nn.Module, object]) -> None:
    from peft import get_peft_model

    from prompt_adapters import MixturePromptConfig, PromptCollator
    from prompt_adapters.training import TrainSettings, fit, precision_at_1, rank_answers

    base, tokenizer = smollm2
    facts: dict[str, list[dict[str, str]]] = {"train": [], "dev": [], "test": []}
    for line in FACTS.read_text(encoding="utf-8").splitlines():
        fact = json.loads(line)
        facts[fact.pop("split")].append(fact)
    torch.manual_seed(0)
    model = get_peft_model(base, MixturePromptConfig(templates=["[X] is [Y] citizen ."], tokenizer=tokenizer))
    try:
        collate = PromptCollator(tokenizer, model)  # ranks the whole vocabulary
        test = facts["test"]
        manual = precision_at_1(rank_answers(model, collate, test))  # the soft prompt starts as the template's words
        settings = TrainSettings(epochs=4, learning_rate=5e-2, batch_size=8, seed=0)
        result = fit(model, collate, facts["train"][:32], facts["dev"], settings, progress=False)
        tuned = precision_at_1(rank_answers(model, collate, test))
    finally:
        model.unload()
    assert result.best_epoch >= 1, result.history  # training changed the prompt
    assert tuned >= manual + 0.10, (manual, tuned, result.history)
