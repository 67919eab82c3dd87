"""The base-model facts an adapter records (``prompt_adapters.model_facts``): the embedding digest that tells two
checkpoints of one architecture apart, and the package's module layout (no two modules import each other)."""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model

import prompt_adapters
from prompt_adapters import MixturePromptConfig
from prompt_adapters.model_facts import embedding_digest
from prompt_adapters.testing import build_tiny_model

TEMPLATE = "[X] was born in [Y] ."


def saved_adapter(directory: Path, seed: int = 0) -> Path:
    """A mixture adapter made on the tiny BERT of ``seed`` and saved to ``directory``."""
    base, tokenizer = build_tiny_model("bert", seed=seed)
    get_peft_model(base, MixturePromptConfig(templates=[TEMPLATE], tokenizer=tokenizer)).save_pretrained(directory)
    return directory


def digest_warnings(directory: Path, base: torch.nn.Module) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(base, directory)
    return [str(w.message) for w in caught if "input-embedding digest" in str(w.message)]


def test_the_digest_is_saved_in_adapter_config(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path / "adapter")
    saved = json.loads((directory / "adapter_config.json").read_text())["model_fingerprint"]["embedding_digest"]
    assert saved == embedding_digest(build_tiny_model("bert")[0])
    assert saved.startswith("bfloat16:") and len(saved.split(":")[1]) == 16


def test_loading_onto_another_checkpoint_warns_naming_both_digests(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path / "adapter", seed=0)
    other = build_tiny_model("bert", seed=1)[0]
    found = digest_warnings(directory, other)
    saved, current = embedding_digest(build_tiny_model("bert", seed=0)[0]), embedding_digest(other)
    assert saved != current
    assert len(found) == 1 and saved in found[0] and current in found[0], found
    assert "expected the checkpoint the adapter was trained on" in found[0]


def test_the_same_checkpoint_loads_silently_in_float32_and_bfloat16(tmp_path: Path) -> None:
    directory = saved_adapter(tmp_path / "adapter", seed=0)
    assert digest_warnings(directory, build_tiny_model("bert", seed=0)[0]) == []
    assert digest_warnings(directory, build_tiny_model("bert", seed=0)[0].to(torch.bfloat16)) == []


def test_a_float16_digest_is_compared_only_with_float16_digests(tmp_path: Path) -> None:
    """float32 -> float16 -> bfloat16 rounding can differ from float32 -> bfloat16, so float16 models are a class of
    their own: no false warning for the same checkpoint, and another checkpoint in float16 still warns."""
    directory = saved_adapter(tmp_path / "adapter", seed=0)
    same = build_tiny_model("bert", seed=0)[0].half()
    assert embedding_digest(same).startswith("float16:")
    assert digest_warnings(directory, same) == []
    base, tokenizer = build_tiny_model("bert", seed=0)
    half = tmp_path / "half"
    get_peft_model(base.half(), MixturePromptConfig(templates=[TEMPLATE], tokenizer=tokenizer)).save_pretrained(half)
    assert len(digest_warnings(half, build_tiny_model("bert", seed=1)[0].half())) == 1


def test_an_adapter_saved_without_a_digest_loads_silently(tmp_path: Path) -> None:
    """Adapters saved by earlier versions have no digest: nothing to compare."""
    directory = saved_adapter(tmp_path / "adapter", seed=0)
    config = json.loads((directory / "adapter_config.json").read_text())
    del config["model_fingerprint"]["embedding_digest"]
    (directory / "adapter_config.json").write_text(json.dumps(config))
    assert digest_warnings(directory, build_tiny_model("bert", seed=1)[0]) == []


def test_the_digest_reads_sampled_rows_only() -> None:
    """Changing a row outside the sample keeps the digest (it does not read every weight); a sampled row changes it."""
    model = build_tiny_model("bert")[0]
    before = embedding_digest(model)
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight[1] += 1.0  # row 1 is not among the 16 evenly spaced rows of a 703-row vocabulary
    assert embedding_digest(model) == before
    with torch.no_grad():
        weight[0] += 1.0
    assert embedding_digest(model) != before


def _package_imports() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports anywhere (function-level imports included)."""
    root = Path(prompt_adapters.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = imported & set(modules)
    return graph


def test_no_two_modules_import_each_other() -> None:
    """The tuner and the checks share the base-model facts through ``model_facts``, a module below both."""
    graph = _package_imports()
    pairs = sorted((a, b) for a, imported in graph.items() for b in imported if a < b and a in graph[b])
    assert pairs == []
    assert not graph["prompt_adapters.model_facts"] & {"prompt_adapters.tuner", "prompt_adapters.validation"}


def test_model_facts_is_the_lowest_module() -> None:
    """Model facts import nothing of the package: the hooks, the tuner and the checks all build on them."""
    assert _package_imports()["prompt_adapters.model_facts"] == set()


def test_earlier_import_paths_keep_working() -> None:
    from prompt_adapters.model_facts import detect_lm_kind, tokenizer_fingerprint
    from prompt_adapters.tuner import detect_lm_kind as tuner_detect_lm_kind
    from prompt_adapters.validation import tokenizer_fingerprint as validation_fingerprint

    assert tuner_detect_lm_kind is detect_lm_kind and validation_fingerprint is tokenizer_fingerprint
    assert detect_lm_kind(build_tiny_model("gpt2")[0]) == "causal"
