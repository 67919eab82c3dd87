"""Training with the frozen base model sharded over 2 CPU processes (PyTorch FSDP2, and DeepSpeed ZeRO-3 through
accelerate; gloo): the same losses as one process, an ordinary adapter file that loads in one process with the same
scores, resume; the LAMA harness sharded."""

from __future__ import annotations

import json
import os
import shutil
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
from prompt_adapters.training import latest_checkpoint
from prompt_adapters.zero3 import configure, launch_accelerator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_sharded.py"
EXAMPLE_ZERO3 = ROOT / "examples" / "train_zero3.py"
ZERO3_CONFIG = ROOT / "benchmarks" / "configs" / "zero3.yaml"
sys.path.insert(0, str(ROOT / "examples"))
import train_sharded  # noqa: E402
import train_zero3  # noqa: E402

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


ZERO3_METHODS = ("deep", "ptuning")


def _start_zero3(script: Path, *args: str, processes: int = 2) -> subprocess.Popen:
    """``script`` under accelerate launch with the ZeRO-3 config (DeepSpeed's CPU accelerator, gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CONFIG),
               "--num_processes", str(processes), str(script), *args]
    env = {key: value for key, value in _env().items() if key != "ACCELERATE_USE_CPU"}
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def zero3_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Deep perturbation and P-tuning trained by fit under ZeRO-3 on 2 processes, one after the other in each launch
    (a DeepSpeed engine each): 1 epoch, then resumed in a new launch up to 3; ``first`` keeps the epoch-1 results
    and checkpoints."""
    root = tmp_path_factory.mktemp("zero3")
    outs = {"zero3": root / "zero3", "first": root / "first"}
    _wait(_start_zero3(EXAMPLE_ZERO3, "--methods", *ZERO3_METHODS, "--epochs", "1", "--output", str(outs["zero3"])))
    shutil.copytree(outs["zero3"], outs["first"])
    _wait(_start_zero3(EXAMPLE_ZERO3, "--methods", *ZERO3_METHODS, "--epochs", "3", "--resume", "--output",
                       str(outs["zero3"])))
    return outs


@pytest.mark.parametrize("method", ZERO3_METHODS)
def test_zero3_fit_gives_the_losses_of_one_process_and_resumes(
    runs: dict[str, Path], zero3_runs: dict[str, Path], method: str
) -> None:
    first, resumed, single = (_result(path, method) for path in (zero3_runs["first"], zero3_runs["zero3"],
                                                                   runs["single"]))
    assert resumed["processes"] == 2 and resumed["distributed_type"].endswith("DEEPSPEED")
    # epoch 1 in one launch, epochs 2-3 in another: the losses of an uninterrupted one-process run
    assert first["losses"] == pytest.approx(single["losses"][:1], abs=1e-5)
    assert resumed["losses"] == pytest.approx(single["losses"], abs=1e-5)
    whole = sum(p.numel() for p in build_tiny_model("llama")[0].parameters())
    assert first["parameter_elements_per_process"] < 0.6 * whole  # partitioned while training


@pytest.mark.parametrize("method", ZERO3_METHODS)
def test_zero3_adapter_is_an_ordinary_file_that_loads_in_one_process(
    runs: dict[str, Path], zero3_runs: dict[str, Path], method: str
) -> None:
    adapter = zero3_runs["zero3"] / method / "adapter"
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    plain = load_file(str(runs["single"] / method / "adapter" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in plain.items()}
    base, tokenizer = build_tiny_model("llama")
    model = PeftModel.from_pretrained(base, adapter)
    with torch.no_grad():
        scores = model(**PromptCollator(tokenizer, model)(train_sharded.FACTS[20:])).answer_log_probs
    torch.testing.assert_close(scores, torch.load(zero3_runs["zero3"] / method / "test_scores.pt"), atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(scores, torch.load(runs["single"] / method / "test_scores.pt"), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ZERO3_METHODS)
def test_zero3_checkpoint_is_the_one_process_checkpoint(
    runs: dict[str, Path], zero3_runs: dict[str, Path], method: str
) -> None:
    """Gathered from the partitions: the one-process file (keys, shapes, optimiser layout), with its values."""
    zero3 = latest_checkpoint(zero3_runs["zero3"] / method / "checkpoints")
    single = latest_checkpoint(runs["single"] / method / "checkpoints")
    assert zero3 is not None and single is not None
    tensors, plain = (load_file(str(path / "state.safetensors")) for path in (zero3, single))
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in plain.items()}
    assert any(key.startswith("optim.") for key in tensors)
    for key, value in plain.items():
        torch.testing.assert_close(tensors[key], value, atol=1e-5, rtol=1e-4)
    meta, plain_meta = (json.loads((path / "meta.json").read_text()) for path in (zero3, single))
    assert meta["optim_scalars"] == plain_meta["optim_scalars"]  # Adam's step count: 3 epochs of 3 batches
    assert meta["param_groups"] == plain_meta["param_groups"]  # the learning rate (schedule) included
    assert meta["loop"]["epoch"] == plain_meta["loop"]["epoch"] == 3


def test_zero3_checkpoint_resumes_in_one_process(runs: dict[str, Path], zero3_runs: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """Epoch 1 under ZeRO-3 on 2 processes, epochs 2-3 in one plain process: the uninterrupted losses."""
    shutil.copytree(zero3_runs["first"] / "deep" / "checkpoints", tmp_path / "deep" / "checkpoints")
    report = train_sharded.main(["--methods", "deep", "--epochs", "3", "--resume", "--output", str(tmp_path)])
    assert report["deep"]["losses"] == pytest.approx(_result(runs["single"], "deep")["losses"], abs=1e-5)


def test_zero3_clips_gradients_as_one_process(tmp_path: Path) -> None:
    """fit's max_grad_norm becomes DeepSpeed's gradient_clipping: the clipped losses of one process."""
    args = ["--methods", "mixture", "--epochs", "2", "--max-grad-norm", "0.05"]
    _wait(_start_zero3(EXAMPLE_ZERO3, *args, "--output", str(tmp_path / "zero3")))
    clipped = train_zero3.main([*args, "--output", str(tmp_path / "single")])["mixture"]
    free = train_zero3.main([*args[:4], "--output", str(tmp_path / "free")])["mixture"]
    zero3 = _result(tmp_path / "zero3", "mixture")
    assert zero3["processes"] == 2 and clipped["processes"] == 1
    assert zero3["losses"] == pytest.approx(clipped["losses"], abs=1e-5)
    assert abs(clipped["losses"][1] - free["losses"][1]) > 1e-3  # the clipping bound


def test_zero3_refuses_promptgen_naming_why(tmp_path: Path) -> None:
    """PromptGen's prompt table reads the base model's embedding matrix outside its forward, when ZeRO-3 holds only
    a partition of it: fit refuses it before DeepSpeed starts."""
    generator = save_tiny_model("gpt2", tmp_path / "gpt2")
    script = tmp_path / "promptgen_zero3.py"
    script.write_text(PROMPTGEN_SCRIPT.format(generator=str(generator)))
    proc = _start_zero3(script, processes=1)
    log, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "PromptGenLayer cannot run on a sharded base model: its prompt table" in log, log[-3000:]


PROMPTGEN_SCRIPT = """
from peft import get_peft_model
from prompt_adapters import PromptCollator, PromptGenConfig
from prompt_adapters.testing import build_tiny_model
from prompt_adapters.training import TrainSettings, fit
from prompt_adapters.zero3 import launch_accelerator

accelerator = launch_accelerator()
assert accelerator.state.deepspeed_plugin is not None
base, tokenizer = build_tiny_model("llama")
config = PromptGenConfig(generator_name_or_path={generator!r}, tokenizer=tokenizer, num_before=2, num_after=1,
                         stopping="eos")
model = get_peft_model(base, config)
facts = [("Florence", "Italy"), ("Munich", "Germany")]
fit(model, PromptCollator(tokenizer, model), facts, facts, TrainSettings(epochs=1, batch_size=2), progress=False,
    accelerator=accelerator)
"""


@pytest.mark.parametrize(("changes", "message"), [
    ({"zero_optimization": {"stage": 2}}, r"fit runs DeepSpeed with ZeRO stage 3 \(zero_optimization.stage: 3\), "
                                          r"got stage 2"),
    ({"gradient_accumulation_steps": 4}, r"expected gradient_accumulation_steps 1 \(or 'auto'\) in the DeepSpeed "
                                         r"config, got 4"),
    ({"gradient_clipping": 1.0}, r"clips gradients at 1.0 but the training settings at max_grad_norm=None"),
])
def test_zero3_config_errors_name_the_bad_value(changes: dict, message: str) -> None:
    config = {"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    with pytest.raises(ValueError, match=message):
        configure({**config, **changes}, batch_size=8, max_grad_norm=None, world=2)


def test_zero3_config_gets_fits_batch_and_clipping() -> None:
    config = {"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": 1, "gradient_clipping": "auto"}
    configure(config, batch_size=9, max_grad_norm=0.5, world=2)
    assert config == {"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": 1, "gradient_clipping": 0.5,
                      "train_micro_batch_size_per_gpu": 5, "train_batch_size": 10}


def test_lama_harness_under_zero3_matches_one_process(fixture_data: Path, tmp_path: Path) -> None:
    """The documented command: accelerate launch with the ZeRO-3 config and --data-parallel; two relations, each a
    fit of its own (a DeepSpeed engine each), with the ranks and losses of one process."""
    llama = save_tiny_model("llama", tmp_path / "llama")
    args = ["--model", str(llama), "--data-dir", str(fixture_data / "lama"), "--relations", "P1376,P19",
            "--max-train", "24", "--max-test", "40", "--epochs", "2", "--batch-size", "8", "--method", "ptuning",
            "--data-parallel"]
    zero3 = _start_zero3(ROOT / "benchmarks" / "lama.py", *args, "--output", str(tmp_path / "zero3"))
    single = launch([*args, "--output", str(tmp_path / "single")])
    finish(zero3)
    finish(single)
    two, one = (records(tmp_path / name) for name in ("zero3", "single"))
    assert sorted(two) == sorted(one) == ["P1376-seed34.json", "P19-seed34.json"]
    for name in one:
        assert two[name]["process"] == [0, 2] and one[name]["process"] == [0, 1]
        assert two[name]["ranks"] == one[name]["ranks"] and two[name]["none_ranks"] == one[name]["none_ranks"]
        for a, b in zip(two[name]["history"], one[name]["history"], strict=True):
            assert a["dev_p1"] == b["dev_p1"] and a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "launched with DeepSpeed \\(ZeRO-3\\): add --data-parallel: every process must run every relation's"),
    (["--data-parallel", "--sharding", "fsdp2.json"], "drop --sharding: DeepSpeed already partitions the model"),
    (["--data-parallel", "--method", "promptgen"], "--method promptgen cannot run: its prompt table"),
    (["--data-parallel", "--method", "peft_p_tuning"], "--method peft_p_tuning \\(peft's own adapter\\) is not"),
    (["--data-parallel", "--em"], "--em cannot run: its M-step writes the mixture weights in place"),
])
def test_lama_harness_under_zero3_refuses_what_cannot_run(extra: list[str], message: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lama

    args = lama.parse_args(["--model", "unused", "--method", "mixture", "--output", "unused", *extra])
    with pytest.raises(SystemExit, match=message):
        lama.check_deepspeed(args)


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


def test_lama_harness_refuses_accelerates_fsdp_plugin(fixture_data: Path, tmp_path: Path) -> None:
    """On CPUs accelerate drops its FSDP plugin without a word (plain data parallel, MULTI_CPU): refused, naming the
    way this library shards."""
    llama = save_tiny_model("llama", tmp_path / "llama")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--use_fsdp",
               "--fsdp_version", "2", str(ROOT / "benchmarks" / "lama.py"), "--model", str(llama), "--data-dir",
               str(fixture_data / "lama"), "--method", "mixture", "--data-parallel", "--output", str(tmp_path / "out")]
    proc = subprocess.run(command, env={**_env(), "ACCELERATE_USE_CPU": "1"}, cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "accelerate's FSDP plugin was asked for (--use_fsdp or an FSDP launch config), but prompt_adapters" in (
        proc.stdout + proc.stderr), proc.stderr[-3000:]
    assert "--sharding benchmarks/configs/fsdp2.json" in proc.stderr


def test_launch_accelerator_refuses_processes_accelerate_does_not_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes started without a backend accelerate can use (on CPUs: no ACCELERATE_USE_CPU) would each train
    alone, each taking itself for the main process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"2 processes were started \(WORLD_SIZE=2\) but accelerate runs 1: it "
                                           r"found no distributed backend"):
        launch_accelerator()


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
