"""The method contract (``prompt_adapters.tuner``): every method is a config, a layer typed with that config and a
tuner, each a direct subclass of the shared base, registered from ``prompt_adapters.METHODS``; a new method needs no
edit of the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

from prompt_adapters import METHODS
from prompt_adapters.tuner import PromptLayer, PromptTuner
from prompt_adapters.tuner import layer as layer_module

#: the hooks a method may override, each documented on the base layer
HOOKS = ("create", "prompt_table", "prompt_tables", "delta", "combine", "combine_rows", "prepare", "end_forward",
         "generation")


def test_every_method_is_flat_on_the_shared_base() -> None:
    for method in METHODS:
        layer = method.model_cls.layer_cls
        assert layer.__mro__[1] is PromptLayer, f"{method.name}: {layer.__mro__[1]}"
        assert method.model_cls.__mro__[1] is PromptTuner, f"{method.name}: {method.model_cls.__mro__[1]}"
        assert method.model_cls.tuner_layer_cls is layer


def test_every_layer_is_typed_with_its_own_config() -> None:
    for method in METHODS:
        hints = typing.get_type_hints(method.model_cls.layer_cls.create)
        assert hints["config"] is method.config_cls, f"{method.name}: create() takes {hints['config']}"


def test_every_hook_is_documented_where_a_method_author_looks() -> None:
    for hook in HOOKS:
        assert (getattr(PromptLayer, hook).__doc__ or "").startswith("Hook"), hook
        assert f"``{hook}" in layer_module.__doc__, hook


def test_the_methods_list_names_each_method_once_with_its_peft_type() -> None:
    assert [method.name for method in METHODS] == ["mixture", "deep", "ptuning", "promptgen"]
    assert [method.peft_type for method in METHODS] == ["MIXTURE_PROMPT", "DEEP_PERTURB", "PTUNING_ENCODER",
                                                        "PROMPT_GEN"]
    assert len({method.model_cls.prefix for method in METHODS}) == len(METHODS)


NEW_METHOD = '''
import json, sys
import torch
from dataclasses import dataclass
from typing import ClassVar
from peft import PeftModel, get_peft_model
from torch import nn
from prompt_adapters import PromptCollator
from prompt_adapters.peft_registry import Method, register_method
from prompt_adapters.testing import build_tiny_model
from prompt_adapters.tuner import PromptConfig, PromptLayer, PromptTuner


@dataclass
class FrozenWeightsConfig(PromptConfig):
    method_type: ClassVar[str] = "FROZEN_WEIGHTS_PROMPT"


class FrozenWeightsLayer(PromptLayer[FrozenWeightsConfig]):
    adapter_layer_names = ("table",)

    def create(self, name: str, config: FrozenWeightsConfig, model: nn.Module, init_ids: list[int]) -> None:
        self.create_table(name, model, init_ids, config.init)
        self.create_mixture(name, learn_weights=False, data_dependent=False)


class FrozenWeightsModel(PromptTuner):
    prefix = "frozenweights_"
    layer_cls = FrozenWeightsLayer
    tuner_layer_cls = FrozenWeightsLayer


register_method(Method("frozen_weights", FrozenWeightsConfig, FrozenWeightsModel))
base, tokenizer = build_tiny_model("bert")
config = FrozenWeightsConfig(templates=["[X] was born in [Y] .", "[P] [X] lived in [Y] ."], tokenizer=tokenizer)
model = get_peft_model(base, config)
batch = PromptCollator(tokenizer, model)([("Dante", "Paris"), ("Obama", "London")])
out = model(**batch)
out.loss.backward()
model.save_pretrained(sys.argv[1])
again = PeftModel.from_pretrained(build_tiny_model("bert")[0], sys.argv[1])
with torch.no_grad():
    reloaded = again(**batch).answer_log_probs
print(json.dumps({
    "peft_type": model.peft_config["default"].peft_type.value,
    "answers": list(out.answer_log_probs.shape),
    "weights": out.mixture_log_weights[0].exp().tolist(),
    "same_after_reload": bool(torch.allclose(reloaded, out.answer_log_probs.detach(), atol=1e-5)),
    "trained": bool(model.base_model.state.table["default"].grad.abs().sum() > 0),
}))
'''


def test_a_new_method_is_a_config_a_layer_and_a_tuner(tmp_path: Path) -> None:
    """A method written outside the package, on the contract alone: it trains, scores with the shared answer
    scoring (two templates, uniform frozen weights) and saves and loads through peft. Run in a process of its own,
    so its peft type does not stay registered for the other tests."""
    script = tmp_path / "new_method.py"
    script.write_text(NEW_METHOD, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "adapter")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["peft_type"] == "FROZEN_WEIGHTS_PROMPT"
    assert result["answers"][0] == 2
    assert result["weights"] == [0.5, 0.5]
    assert result["same_after_reload"] and result["trained"]
