"""Every architecture of transformers' causal, masked and seq2seq LM auto mappings, built tiny, with every method.

For each architecture (``tests/architectures.py`` discovers and shrinks them) and each method: the adapter changes
the answer scores, gradients reach only adapter parameters, ``generate`` runs through the template with the
adapter in effect (causal and seq2seq LMs), and save/load round-trips. CI runs ``CI_ARCHITECTURES`` (one or two per
kind of model, the families prompt methods broke on most); ``python -m pytest -m architectures
tests/test_architectures.py`` runs every architecture transformers knows (docs/architectures.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from architectures import Architecture, NotBuildableTiny, build, check_runs_bare, discover
from method_matrix import METHOD_NAMES
from method_matrix import make_config as make_method_config
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from prompt_adapters import (
    DeepPerturbConfig,
    PromptCollator,
    PromptGenCollator,
)
from prompt_adapters.testing import perturb_trainable, save_tiny_model

METHODS = METHOD_NAMES
EXAMPLES = [
    {"X": "Dante", "Y": "Paris", "template": "[X] was born in [Y] ."},
    {"X": "Barack Obama", "Y": "London", "template": "[X] died in [Y] ."},
]
TEMPLATES = ["[X] was born in [Y] .", "[X] is a native of [Y] ."]

#: the CI subset: the 2025-26 families prompt methods broke on, state-space and hybrid layouts, and the layouts that
#: needed fixes (CTRL's plain blocks, OpenAI GPT's list outputs, ALBERT's narrower embeddings, the decoder head of
#: EncoderDecoderModel)
CI_ARCHITECTURES = (
    "causal:qwen3",
    "causal:gemma3_text",
    "causal:gemma2",
    "causal:mistral",
    "causal:mamba",
    "causal:ctrl",
    "causal:openai-gpt",
    "masked:albert",
    "masked:modernbert",
    "masked:deberta-v2",
    "masked:bart",
    "seq2seq:t5gemma2",
    "seq2seq:mt5",
    "seq2seq:encoder-decoder",
)

#: cases that build tiny but fail a check, with the reason (docs/architectures.md lists them too): keys are an
#: architecture id (every method fails) or ``id-method``
KNOWN_FAILURES: dict[str, str] = {
    "causal:dory": "the bare model fails on a padded batch (attention mask of twice the sequence length)",
    "causal:cpmant-deep": "CPM-Ant embeds the whole sequence at every cached generation step, then runs its blocks on "
    "the last token only",
    "causal:hy_v4-deep": "its blocks carry several residual streams per position (refused with a clear error)",
    "causal:xlnet-promptgen": "XLNet embeds time-major (sequence, batch) ids; per-row prompt tables need batch-major",
    "masked:ibert": "I-BERT's QuantEmbedding returns (embeddings, scale) tuples, not an embedding tensor",
    "masked:mra-ptuning": "MRA's approximate attention makes the tiny model's answer independent of these positions",
    "masked:mra-promptgen": "MRA's approximate attention makes the tiny model's answer independent of these positions",
    "masked:neomme": "NeoMME looks the input ids up in a second table that is not the input embedding",
    "seq2seq:encoder-decoder-deep": "the decoder has its own (untied) embedding, so its block stack has no prompt "
    "positions of its own",
    "seq2seq:fsmt": "FSMT runs time-major (sequence, batch) hidden states",
    "seq2seq:pegasus_x-deep": "PEGASUS-X pads its encoder input to a multiple of its block size inside the encoder",
}

ALL = discover()
BY_ID = {arch.id: arch for arch in ALL}


def _cases(ids: list[str], marks: tuple[pytest.MarkDecorator, ...]) -> list[Any]:
    cases = []
    for arch_id in ids:
        for method in METHODS:
            case_marks = list(marks)
            reason = KNOWN_FAILURES.get(arch_id, KNOWN_FAILURES.get(f"{arch_id}-{method}"))
            if reason is not None:
                case_marks.append(pytest.mark.xfail(reason=reason, strict=True))
            cases.append(pytest.param(BY_ID[arch_id], method, id=f"{arch_id}-{method}", marks=case_marks))
    return cases


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PromptGen's generator: a tiny BART saved once for the module."""
    return str(save_tiny_model("bart", tmp_path_factory.mktemp("generator") / "bart"))


def make_config(method: str, tokenizer: PreTrainedTokenizerBase, generator_dir: str, lm_kind: str | None) -> PeftConfig:
    return make_method_config(method, tokenizer, TEMPLATES, generator_dir, lm_kind=lm_kind)


def answer_scores(model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).answer_log_probs


def check_architecture(arch: Architecture, method: str, generator_dir: str, directory: Path) -> None:
    """Build ``arch`` tiny and run the four checks of ``method`` on it (an AssertionError names the one failing)."""
    built = build(arch)
    check_runs_bare(built.model, built.tokenizer)
    tokenizer = built.tokenizer
    torch.manual_seed(0)
    model = get_peft_model(built.model, make_config(method, tokenizer, generator_dir, built.lm_kind_given))
    perturb_trainable(model, 0.1)  # deltas start at zero and soft words at their embeddings: look trained
    if method == "promptgen":
        collate: PromptCollator = PromptGenCollator(tokenizer, model, leak_rows=False)
    else:
        collate = PromptCollator(tokenizer, model)
    batch = collate(EXAMPLES)

    adapted = answer_scores(model, batch)
    assert torch.isfinite(adapted).all(), "answer scores are not finite"
    with model.disable_adapter():
        disabled = answer_scores(model, batch)
    change = float((adapted - disabled).abs().max())
    assert change > 1e-5, f"the adapter does not change the answer scores (largest change {change:.2e})"

    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss), f"loss {float(loss)}"
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    leaked = [name for name, param in model.named_parameters() if param.grad is not None and name not in trainable]
    assert not leaked, f"gradients reached base parameters {leaked[:3]}"
    prefix = model.base_model.prefix
    assert trainable and all(prefix in name for name in trainable), f"trainable non-adapter {sorted(trainable)[:3]}"
    reached = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
    assert reached > 0, "no gradient reached the adapter"
    model.zero_grad()

    if built.lm_kind != "masked":
        inputs = collate.inputs(EXAMPLES[:1])
        generated = _generate(model, inputs, tokenizer)
        with model.disable_adapter():
            plain = _generate(model, inputs, tokenizer)
            bare_gap = _first_step_gap(model, inputs, plain)
        assert not torch.allclose(generated.scores[0], plain.scores[0], atol=1e-6), "generate ignores the adapter"
        if bare_gap <= 1e-4:  # where the bare model's first generated step is its forward, so is the adapter's
            gap = _first_step_gap(model, inputs, generated)
            assert gap <= 1e-4, f"generate's first step differs from the forward by {gap:.2e}"

    model.save_pretrained(directory)
    loaded = PeftModel.from_pretrained(build(arch).model, directory)
    assert torch.equal(answer_scores(loaded, batch), adapted), "the reloaded adapter scores differently"


def _generate(model: PeftModel, inputs: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase) -> Any:
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )


def _first_step_gap(model: PeftModel, inputs: dict[str, torch.Tensor], generated: Any) -> float:
    """Largest difference between the first generated step's scores and the forward's last logits."""
    with torch.no_grad():
        forward = model(**inputs).logits[:, -1].float()
    return float((generated.scores[0].float() - forward).abs().max())


def _run(arch: Architecture, method: str, generator_dir: str, directory: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # model-specific init and generation notices
        check_architecture(arch, method, generator_dir, directory)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("arch", "method"), _cases(list(CI_ARCHITECTURES), ()))
def test_ci_architectures(arch: Architecture, method: str, generator_dir: str, tmp_path: Path) -> None:
    """The CI subset must build tiny: a build failure here fails the test."""
    _run(arch, method, generator_dir, tmp_path)


@pytest.mark.parametrize(("arch", "method"), _cases(sorted(BY_ID), (pytest.mark.architectures,)))
def test_every_architecture(arch: Architecture, method: str, generator_dir: str, tmp_path: Path) -> None:
    """The full sweep (``-m architectures``): an architecture the generic rules cannot build tiny is skipped with
    the reason (docs/architectures.md counts them)."""
    try:
        _run(arch, method, generator_dir, tmp_path)
    except NotBuildableTiny as error:
        pytest.skip(f"{arch.id} is not buildable tiny: {error}")


def test_discovery_reads_the_auto_mappings() -> None:
    """Every kind is discovered and each (model type, class) once; the CI subset and known failures exist."""
    kinds = {arch.kind for arch in ALL}
    assert kinds == {"causal", "masked", "seq2seq"}
    assert len(ALL) == len({(arch.model_type, arch.class_name) for arch in ALL}) > 200
    assert set(CI_ARCHITECTURES) <= set(BY_ID)
    cases = {f"{arch_id}-{method}" for arch_id in BY_ID for method in METHODS}
    assert all(key in BY_ID or key in cases for key in KNOWN_FAILURES)


def test_deep_perturbation_refuses_hidden_states_it_cannot_place() -> None:
    """A model whose blocks pass several residual streams per position gets a clear error, not a shape crash."""
    built = build(BY_ID["causal:hy_v4"])
    model = get_peft_model(built.model, DeepPerturbConfig(templates=TEMPLATES, tokenizer=built.tokenizer))
    batch = PromptCollator(built.tokenizer, model)(EXAMPLES)
    with pytest.raises(ValueError, match=r"carries hidden states of shape \(\d+, \d+, \d+, 64\).*MixturePromptConfig"):
        model(**batch)
