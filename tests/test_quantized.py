"""Prompt tuning on a base model loaded in 8-bit or 4-bit with bitsandbytes (its CPU backend), prepared with peft's
``prepare_model_for_kbit_training``: the adapter trains (the loss falls, the quantized weights do not change), saves,
and loads onto a freshly quantized base with the same scores (docs/quantized.md)."""

from __future__ import annotations

import copy
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from method_matrix import GENERATOR_METHODS, METHOD_NAMES
from method_matrix import make_config as make_method_config
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prompt_adapters import PromptCollator
from prompt_adapters.testing import build_tiny_model, widen_weights

FACTS = [("Dante", "Paris"), ("Mozart", "London"), ("Einstein", "Rome"), ("Newton", "Berlin")]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y] ."]
QUANTIZED_LINEAR = {8: bnb.nn.Linear8bitLt, 4: bnb.nn.Linear4bit}

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:MatMul8bitLt"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with widened weights (its answers depend on the prompt), saved in full precision. Its layers
    are 64 wide with 32-wide key/value projections: bitsandbytes' 4-bit CPU kernels need input widths of at least
    64 (their quantization block) and output widths divisible by 32."""
    tiny, tokenizer = build_tiny_model("llama")
    config = copy.deepcopy(tiny.config)
    config.hidden_size, config.intermediate_size, config.head_dim = 64, 128, 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        widen_weights(model, std=0.5)
    directory = tmp_path_factory.mktemp("llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_quantized(directory: Path, bits: int) -> PreTrainedModel:
    """The saved model loaded in ``bits`` bits, as a user loads a large checkpoint."""
    if bits == 8:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(directory, quantization_config=quantization)


def make_config(method: str, tokenizer: PreTrainedTokenizerBase) -> PeftConfig:
    return make_method_config(method, tokenizer, TEMPLATES)


def quantized_weights(model: torch.nn.Module, bits: int) -> dict[str, torch.Tensor]:
    return {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, QUANTIZED_LINEAR[bits])
    }


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("method", [name for name in METHOD_NAMES if name not in GENERATOR_METHODS])
def test_prompt_tuning_on_a_quantized_base_trains_saves_and_loads(
    method: str, bits: int, base_dir: Path, tmp_path: Path
) -> None:
    _, tokenizer = build_tiny_model("llama")
    base = load_quantized(base_dir, bits)
    frozen = quantized_weights(base, bits)
    assert len(frozen) == 14  # 2 layers x 7 projections; the LM head stays in full precision, as in transformers
    assert {w.dtype for w in frozen.values()} == {torch.int8 if bits == 8 else torch.uint8}
    base = prepare_model_for_kbit_training(base)  # gradient checkpointing on, inputs require grad
    assert base.is_gradient_checkpointing

    torch.manual_seed(0)
    model = get_peft_model(base, make_config(method, tokenizer))
    model.train()
    batch = PromptCollator(tokenizer, model)(FACTS)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    after = {name.removeprefix("base_model.model."): w for name, w in quantized_weights(model, bits).items()}
    assert after.keys() == frozen.keys()
    assert all(torch.equal(after[name], weight) for name, weight in frozen.items())

    model.eval()
    with torch.no_grad():
        trained = model(**batch).answer_log_probs
    model.save_pretrained(tmp_path)
    saved = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as saved_file:
        keys = list(saved_file.keys())
    prefix = model.base_model.prefix
    assert keys and all(prefix in key for key in keys), keys  # the adapter's tensors only, no base weight

    loaded = PeftModel.from_pretrained(load_quantized(base_dir, bits), tmp_path)
    with torch.no_grad():
        reloaded = loaded(**batch).answer_log_probs
    torch.testing.assert_close(reloaded, trained, rtol=1e-5, atol=1e-5)

    full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path)
    with torch.no_grad():
        unquantized = full(**batch).answer_log_probs
    assert torch.isfinite(unquantized).all()  # the same adapter file serves the full-precision model
    if bits == 8:  # 8-bit weights stay close enough to agree on every top answer
        assert torch.equal(unquantized.argmax(-1), trained.argmax(-1))
