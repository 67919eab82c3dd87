"""Training with the frozen base model sharded over 2 CPU processes (PyTorch FSDP2, gloo): the same losses as one
process, an ordinary adapter file that loads in one process with the same scores, resume; the LAMA harness sharded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lama_runs import finish, launch, records
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from prompt_adapters import MixturePromptConfig, PromptCollator, PromptGenConfig
from prompt_adapters.sharding import is_sharded, shard_base_model
from prompt_adapters.testing import build_tiny_model, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_sharded.py"
sys.path.insert(0, str(ROOT / "examples"))
import train_sharded  # noqa: E402

METHODS = ("mixture", "deep", "ptuning")
TIMEOUT = 420


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def _start(out: Path, *extra: str, processes: int = 2) -> subprocess.Popen:
    """examples/train_sharded.py under torchrun with ``processes`` CPU processes (plain python for one)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), str(EXAMPLE), "--output", str(out), *extra]
    return subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait(proc: subprocess.Popen) -> None:
    try:
        log, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"the run did not finish in {TIMEOUT}s (a process waiting for the others?):\n{log[-3000:]}")
    assert proc.returncode == 0, log[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every method trained in one plain process for 3 epochs, and sharded over 2 processes: 1 epoch, then resumed
    in a new launch up to 3 (the single run goes on alongside); ``first`` keeps the sharded epoch-1 results."""
    root = tmp_path_factory.mktemp("sharded")
    outs = {"sharded": root / "sharded", "single": root / "single", "first": root / "first"}
    single = _start(outs["single"], "--methods", *METHODS, processes=1)
    _wait(_start(outs["sharded"], "--methods", *METHODS, "--epochs", "1"))
    for method in METHODS:
        (outs["first"] / method).mkdir(parents=True)
        (outs["first"] / method / "result.json").write_bytes((outs["sharded"] / method / "result.json").read_bytes())
    _wait(_start(outs["sharded"], "--methods", *METHODS, "--epochs", "3", "--resume"))
    _wait(single)
    return outs


def _result(out: Path, method: str) -> dict:
    return json.loads((out / method / "result.json").read_text())


@pytest.mark.parametrize("method", METHODS)
def test_sharded_training_gives_the_losses_of_one_process_and_resumes(runs: dict[str, Path], method: str) -> None:
    first, resumed, single = (_result(runs[name], method) for name in ("first", "sharded", "single"))
    assert resumed["sharded"] and resumed["processes"] == 2 and resumed["distributed_type"].endswith("MULTI_CPU")
    assert not single["sharded"] and single["processes"] == 1
    assert len(single["losses"]) == 3 and single["losses"][-1] < single["losses"][0]  # it trained
    # epoch 1 in one launch, epochs 2-3 in another: the losses of an uninterrupted one-process run
    assert first["losses"] == pytest.approx(single["losses"][:1], abs=1e-5)
    assert resumed["losses"] == pytest.approx(single["losses"], abs=1e-5)
    # each process holds about half the base model's weights
    assert resumed["parameter_mib_per_process"] < single["parameter_mib_per_process"]


@pytest.mark.parametrize("method", METHODS)
def test_sharded_adapter_is_an_ordinary_file_that_loads_in_one_process(runs: dict[str, Path], method: str) -> None:
    adapter = runs["sharded"] / method / "adapter"
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    plain = load_file(str(runs["single"] / method / "adapter" / "adapter_model.safetensors"))
    # the adapter alone (no base-model weight), whole: the keys and shapes of a one-process run's file
    assert tensors and {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in plain.items()}
    assert all("_state." in key for key in tensors)
    base, tokenizer = build_tiny_model("llama")
    model = PeftModel.from_pretrained(base, adapter)
    collator = PromptCollator(tokenizer, model)
    with torch.no_grad():
        scores = model(**collator(train_sharded.FACTS[20:])).answer_log_probs
    sharded_scores = torch.load(runs["sharded"] / method / "test_scores.pt")
    single_scores = torch.load(runs["single"] / method / "test_scores.pt")
    torch.testing.assert_close(scores, sharded_scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, single_scores, atol=1e-4, rtol=1e-4)
    torch.manual_seed(0)  # the adapter as the runs started it: training moved the scores
    config = train_sharded.adapter_config(method)
    config.compile(tokenizer)
    untrained = get_peft_model(build_tiny_model("llama")[0], config)
    with torch.no_grad():
        start = untrained(**PromptCollator(tokenizer, untrained)(train_sharded.FACTS[20:])).answer_log_probs
    assert (scores - start).abs().max() > 1e-2


@pytest.fixture
def one_process_group(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A gloo process group of this process alone: enough to shard a model (every shard is whole)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.usefixtures("one_process_group")
def test_adapter_on_a_sharded_base_scores_as_on_the_plain_base() -> None:
    plain, tokenizer = build_tiny_model("llama")
    sharded, _ = build_tiny_model("llama")
    shard_base_model(sharded)
    assert is_sharded(sharded) and not is_sharded(plain)
    config = {"templates": ["[X] is a city in [Y]"], "init": "vocab"}
    models = []
    for base in (plain, sharded):
        torch.manual_seed(3)
        models.append(get_peft_model(base, MixturePromptConfig(**config, tokenizer=tokenizer)))
    torch.testing.assert_close(models[1].base_model.state.table["default"], models[0].base_model.state.table["default"])
    facts = train_sharded.FACTS[:4]
    with torch.no_grad():
        scores = [model(**PromptCollator(tokenizer, model)(facts)).answer_log_probs for model in models]
    torch.testing.assert_close(scores[1], scores[0])


@pytest.mark.usefixtures("one_process_group")
def test_promptgen_on_a_sharded_base_is_refused(tmp_path: Path) -> None:
    generator = save_tiny_model("gpt2", tmp_path / "gpt2")
    base, tokenizer = build_tiny_model("llama")
    config = PromptGenConfig(generator_name_or_path=str(generator), tokenizer=tokenizer, num_before=2, num_after=1,
                             stopping="eos")
    shard_base_model(base)
    with pytest.raises(ValueError, match="PromptGenLayer cannot run on a sharded base model: its prompt table"):
        get_peft_model(base, config)
    unsharded, _ = build_tiny_model("llama")
    with pytest.raises(ValueError, match="PromptGenLayer cannot run on a sharded base model"):
        shard_base_model(get_peft_model(unsharded, config))


@pytest.mark.usefixtures("one_process_group")
def test_shard_base_model_refuses_trainable_base_weights_and_a_second_call() -> None:
    base, tokenizer = build_tiny_model("llama")
    model = get_peft_model(base, MixturePromptConfig(templates=["[X] is a city in [Y]"], tokenizer=tokenizer))
    model.base_model.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=r"shards a frozen base model, but 1 base-model parameters are trainable "
                                         r"\(e.g. \['lm_head.weight'\]\)"):
        shard_base_model(model)
    model.base_model.model.lm_head.weight.requires_grad_(False)
    shard_base_model(model)
    with pytest.raises(ValueError, match="LlamaForCausalLM is already sharded"):
        shard_base_model(model)


def test_zero3_gives_the_losses_of_one_process_and_an_adapter_that_loads_in_one_process(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """DeepSpeed ZeRO-3 through accelerate's plugin on 2 CPU processes (DeepSpeed's CPU accelerator, gloo); deep
    perturbation, whose table and per-block deltas are read by hooks."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "benchmarks" / "configs" / "zero3.yaml"), str(ROOT / "examples" / "train_zero3.py"),
               "--method", "deep", "--output", str(tmp_path)]
    env = {key: value for key, value in _env().items() if key != "ACCELERATE_USE_CPU"}
    _wait(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    zero3, single = _result(tmp_path, "deep"), _result(runs["single"], "deep")
    assert zero3["processes"] == 2 and zero3["distributed_type"].endswith("DEEPSPEED")
    assert zero3["losses"] == pytest.approx(single["losses"], abs=1e-5)  # fit's batches and seeds, one process
    base, tokenizer = build_tiny_model("llama")
    assert zero3["parameter_elements_per_process"] < sum(p.numel() for p in base.parameters())  # partitioned
    model = PeftModel.from_pretrained(base, tmp_path / "deep" / "adapter")
    with torch.no_grad():
        scores = model(**PromptCollator(tokenizer, model)(train_sharded.FACTS[20:])).answer_log_probs
    torch.testing.assert_close(scores, torch.load(tmp_path / "deep" / "test_scores.pt"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, torch.load(runs["single"] / "deep" / "test_scores.pt"), atol=1e-4, rtol=1e-4)


def test_lama_harness_sharded_over_two_processes_matches_one_process(fixture_data: Path, tmp_path: Path) -> None:
    llama = save_tiny_model("llama", tmp_path / "llama")
    args = ["--model", str(llama), "--data-dir", str(fixture_data / "lama"), "--relations", "P1376",
            "--max-train", "24", "--max-test", "40", "--epochs", "2", "--batch-size", "8", "--method", "ptuning",
            "--data-parallel"]
    sharded = launch([*args, "--sharding", str(ROOT / "benchmarks" / "configs" / "fsdp2.json"),
                      "--output", str(tmp_path / "sharded")], processes=2)
    single = launch([*args, "--output", str(tmp_path / "single")])
    finish(sharded)
    finish(single)
    two, one = (records(tmp_path / name)["P1376-seed34.json"] for name in ("sharded", "single"))
    assert two["process"] == [0, 2] and one["process"] == [0, 1]
    assert two["ranks"] == one["ranks"] and two["none_ranks"] == one["none_ranks"]
    for a, b in zip(two["history"], one["history"], strict=True):
        assert a["dev_p1"] == b["dev_p1"] and a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


def test_lama_harness_sharding_needs_data_parallel_and_refuses_promptgen(fixture_data: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lama

    config = ROOT / "benchmarks" / "configs" / "fsdp2.json"
    with pytest.raises(SystemExit, match="--sharding needs --data-parallel: every process must run"):
        lama.main(["--model", "unused", "--data-dir", str(fixture_data / "lama"), "--sharding", str(config),
                   "--method", "mixture", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="--sharding cannot be used with --method promptgen: its prompt table"):
        lama.main(["--model", "unused", "--data-dir", str(fixture_data / "lama"), "--sharding", str(config),
                   "--method", "promptgen", "--data-parallel", "--output", str(tmp_path)])


@pytest.mark.parametrize(("text", "message"), [
    ('{"engine": "zero3"}', r"got unknown keys \[\] and engine 'zero3'"),
    ('{"reshard": true}', r"expected the keys \['activation_checkpointing', 'engine', 'reshard_after_forward'\] with "
                          r"engine 'fsdp2', got unknown keys \['reshard'\]"),
    ("{not json", "expected a readable JSON file"),
])
def test_lama_harness_sharding_file_errors_name_the_bad_value(tmp_path: Path, text: str, message: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lama

    path = tmp_path / "sharding.json"
    path.write_text(text)
    with pytest.raises(SystemExit, match=message):
        lama.shard_harness_base(build_tiny_model("llama")[0], path)
