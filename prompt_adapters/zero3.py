"""``fit`` under DeepSpeed ZeRO-3 through accelerate's DeepSpeed plugin: the engine owns backward and the step.

When the ``Accelerator`` given to ``fit`` has a DeepSpeed plugin, ``fit`` hands the model and its optimiser to
``accelerator.prepare``. DeepSpeed then partitions every weight over the processes (the frozen base model's and the
adapter's), its engine runs the backward pass, averages the gradients, clips them (``gradient_clipping`` of its
config) and steps the optimiser inside ``accelerator.backward``. ``Zero3Run`` is that engine's side of ``fit``:

- the DeepSpeed config gets ``fit``'s batch size and gradient clipping (a config that asks for something else is
  refused, naming both values);
- the adapter's parameters and its optimiser state are gathered whole, in ``torch.optim``'s own layout, for the best
  parameters and the checkpoints, so a checkpoint is the one-process file (safetensors, written crash-safely by
  ``fit``) and a ZeRO-3 run and a one-process run resume each other; DeepSpeed's own checkpoints are not used, since
  reading them unpickles arbitrary objects (``torch.load(weights_only=False)``);
- at the end, the model is whole again, as ``fit`` received it (``release``): the engine is freed the way accelerate
  asks between two trainings (``Accelerator.free_memory``), so the next ``fit`` in the same process builds its own.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from torch import nn

from prompt_adapters.sharding import check_shardable


def launch_accelerator() -> Accelerator:
    """``Accelerator()`` for the processes ``accelerate launch`` started, with their true index and count.

    Under DeepSpeed on a machine without an accelerator device (GPU), accelerate (1.16) finds no distributed backend
    and reports one process of index 0 in every process, although DeepSpeed starts ``gloo`` with all of them; every
    process would then act as the main one. Naming ``gloo`` as the backend there makes accelerate read the process
    group. Elsewhere (GPUs, or no DeepSpeed) this is plain ``Accelerator()``.

    Two launches that would silently not do what they say are refused: accelerate's FSDP plugin (this library shards
    with ``shard_base_model``; accelerate would shard the adapter too, and drops the plugin on CPUs), and processes
    that accelerate does not connect (launched without a backend: each would run alone).

    accelerate also registers the DeepSpeed config with transformers even when its ``zero3_init_flag`` is off, and
    ``from_pretrained`` then loads models straight into ZeRO-3 partitions; the registration is withdrawn when the flag
    is off, so models load whole (an adapter is created from the whole embedding matrix) and ``fit`` partitions them.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise RuntimeError(
            "accelerate's FSDP plugin was asked for (--use_fsdp or an FSDP launch config), but prompt_adapters does "
            "not use it: its prepare() would shard the adapter with the model, and on CPUs accelerate drops it without "
            "a word (the processes run as plain data parallel, MULTI_CPU). Shard the frozen base model with "
            "prompt_adapters.sharding.shard_base_model instead (benchmarks/lama.py: --sharding "
            "benchmarks/configs/fsdp2.json), or launch with a DeepSpeed ZeRO-3 config"
        )
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
    if deepspeed and launched and not torch.accelerator.is_available():
        PartialState(backend="gloo")
    accelerator = Accelerator()
    started = int(os.environ.get("WORLD_SIZE", 1))
    if started > accelerator.num_processes:
        raise RuntimeError(
            f"{started} processes were started (WORLD_SIZE={started}) but accelerate runs {accelerator.num_processes}: "
            "it found no distributed backend (no GPU), so every process would train alone. On CPUs launch with "
            "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N, or with a DeepSpeed config"
        )
    plugin = deepspeed_plugin(accelerator)
    if plugin is not None and not plugin.zero3_init_flag:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    return accelerator


def deepspeed_plugin(accelerator: Accelerator | None) -> Any | None:
    """The accelerator's active DeepSpeed plugin (None without an accelerator or without DeepSpeed)."""
    return None if accelerator is None else accelerator.state.deepspeed_plugin


def configure(config: dict[str, Any], batch_size: int, max_grad_norm: float | None, world: int) -> None:
    """Check a DeepSpeed config against fit's settings, then give it fit's batch sizes and clipping (in place).

    fit splits every global batch of ``batch_size`` over the ``world`` processes and steps once per batch, so the
    config must be ZeRO stage 3 without gradient accumulation; its ``gradient_clipping`` must be ``auto`` or the
    settings' ``max_grad_norm`` (0 or None: no clipping).
    """
    stage = config.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ValueError(f"fit runs DeepSpeed with ZeRO stage 3 (zero_optimization.stage: 3), got stage {stage!r}")
    accumulation = config.get("gradient_accumulation_steps", "auto")
    if accumulation not in ("auto", 1):
        raise ValueError(f"fit steps once per global batch: expected gradient_accumulation_steps 1 (or 'auto') in the "
                         f"DeepSpeed config, got {accumulation!r}; set the global batch with batch_size")
    clipping = max_grad_norm or 0.0
    configured = config.get("gradient_clipping", "auto")
    if configured != "auto" and float(configured) != clipping:
        raise ValueError(f"the DeepSpeed config clips gradients at {configured!r} but the training settings at "
                         f"max_grad_norm={max_grad_norm!r} (0 and None: no clipping); make them agree")
    micro = math.ceil(batch_size / world)
    config.update(train_micro_batch_size_per_gpu=micro, train_batch_size=micro * world, gradient_accumulation_steps=1,
                  gradient_clipping=clipping)


class Zero3Run:
    """One ``fit`` under ZeRO-3: prepares the model and optimiser, runs backward, gathers and scatters the adapter.

    Rank and world size come from ``torch.distributed``: under DeepSpeed on CPUs, accelerate (1.16) reports one
    process of index 0 in every process, while DeepSpeed's process group has them all.
    """

    def __init__(self, accelerator: Accelerator, model: nn.Module, params: dict[str, torch.Tensor],
                 batch_size: int, max_grad_norm: float | None) -> None:
        state = getattr(getattr(model, "base_model", None), "state", None)
        if state is not None:  # ZeRO-3 partitions the base model's weights as FSDP2 does
            check_shardable(state)
        base = [name for name in params if not ("_state." in name or "modules_to_save" in name)]
        if base:
            raise ValueError(f"fit under DeepSpeed trains adapter parameters only; base-model parameters {base[:3]} "
                             "are trainable: freeze them, or train them without DeepSpeed")
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        configure(deepspeed_plugin(accelerator).deepspeed_config, batch_size, max_grad_norm, self.world)
        self.accelerator = accelerator
        self.model = model
        self.params = params
        self.engine: Any = model  # DeepSpeed's engine once prepared
        self.optimizer: torch.optim.Optimizer  # set by prepare()
        self._attributes: list[tuple[Any, dict[str, Any]]] = []
        self._replaced: dict[int, set[str]] = {}
        self._group_sizes: list[int] = []

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Partition the model and hand ``optimizer`` (a plain torch one, over ``params``) to DeepSpeed's engine.

        The optimiser object stays the one DeepSpeed steps (on its flat partitions), so a learning-rate scheduler
        built on it drives the engine's updates.
        """
        objects = [*self.model.modules(), *self.model.parameters()]
        self._attributes = [(obj, dict(vars(obj))) for obj in objects]
        self._group_sizes = [len(group["params"]) for group in optimizer.param_groups]
        self.engine, _ = self.accelerator.prepare(self.model, optimizer)
        self.optimizer = optimizer
        # what DeepSpeed replaced (e.g. a module's parameter dict), to put back in release()
        self._replaced = {id(obj): {name for name, value in before.items() if vars(obj).get(name) is not value}
                          for obj, before in self._attributes}

    def backward(self, loss: torch.Tensor) -> None:
        """Backward, gradient average, clipping and optimiser step, all by the engine (accelerate's backward).

        ``loss`` is this process's share of the global batch's mean; DeepSpeed averages gradients over processes,
        so it is scaled by the world size to make the update the one-process one.
        """
        self.accelerator.backward(loss * self.world)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over every process."""
        total = value.detach().clone()
        if self.world > 1:
            dist.all_reduce(total)
        return total

    # ------------------------------------------------------------------------- whole values (collective calls)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every adapter parameter, whole, on the CPU (gathered from the partitions: every process must call it)."""
        from deepspeed.utils import safe_get_full_fp32_param

        return {name: safe_get_full_fp32_param(param).detach().cpu().clone() for name, param in self.params.items()}

    def set_parameters(self, values: dict[str, torch.Tensor]) -> None:
        """Set every adapter parameter from whole ``values``: the engine's fp32 copy and the model's partition."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        for name, param in self.params.items():
            safe_set_full_fp32_param(param, values[name].to(torch.float32))
        with deepspeed.zero.GatheredParameters(list(self.params.values()), modifier_rank=0), torch.no_grad():
            for name, param in self.params.items():
                param.copy_(values[name])

    def _flat_states(self) -> list[dict[str, Any]]:
        """The optimiser's state of each flat partition DeepSpeed steps (empty before the first step)."""
        flats = self.engine.optimizer.fp32_partitioned_groups_flat
        return [self.optimizer.state[flat] for flat in flats]

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The optimiser's state as ``torch.optim.Optimizer.state_dict()`` gives it in one process, gathered whole."""
        from deepspeed.utils import safe_get_full_optimizer_state

        flats = self._flat_states()
        state: dict[int, dict[str, Any]] = {}
        if any(flats):
            step = _one_step({float(slots["step"]) for slots in flats if slots})
            names = sorted({key for slots in flats for key in slots if key != "step"})
            for index, param in enumerate(self.params.values()):
                state[index] = {"step": torch.tensor(step)}
                for key in names:
                    state[index][key] = safe_get_full_optimizer_state(param, key).detach().cpu().clone()
        groups, start = [], 0
        for group, count in zip(self.optimizer.param_groups, self._group_sizes, strict=True):
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + count))})
            start += count
        return {"state": state, "param_groups": groups}

    def load_optimizer_state_dict(self, saved: dict[str, Any]) -> None:
        """Load a one-process optimiser state (``torch.optim`` layout, whole tensors) into DeepSpeed's partitions."""
        from deepspeed.utils import safe_set_full_optimizer_state

        for group, values in zip(self.optimizer.param_groups, saved["param_groups"], strict=True):
            group.update({key: value for key, value in values.items() if key != "params"})
        if not saved["state"]:
            return
        step = _one_step({float(slots["step"]) for slots in saved["state"].values()})
        names = sorted({key for slots in saved["state"].values() for key in slots if key != "step"})
        for flat in self.engine.optimizer.fp32_partitioned_groups_flat:
            # the layout torch's Adam creates at its first step, filled in below
            self.optimizer.state[flat] = {"step": torch.tensor(step), **{k: torch.zeros_like(flat) for k in names}}
        for index, param in enumerate(self.params.values()):
            for key in names:
                safe_set_full_optimizer_state(param, saved["state"][index][key].to(torch.float32), key)

    def release(self) -> None:
        """Make the model whole again, as ``fit`` received it, and free the engine (every process must call it).

        The weights are gathered, accelerate frees the engine (``free_memory``, which also drops whatever else the
        accelerator had prepared: accelerate asks for it between two trainings), and the attributes DeepSpeed set
        on the modules and parameters are removed, so the next ``fit`` partitions the model afresh.
        """
        import deepspeed

        params = list(self.model.parameters())
        whole = []
        for param in params:  # one at a time: the partitions and the whole copies, never the model gathered twice
            with deepspeed.zero.GatheredParameters([param]), torch.no_grad():
                whole.append(param.data.clone())
        self.accelerator.free_memory()
        for obj, before in self._attributes:
            now = vars(obj)
            for name in set(now) - set(before):
                delattr(obj, name)
            for name, value in before.items():
                if now.get(name) is not value and name in self._replaced.get(id(obj), ()):
                    now[name] = value
        for param, data in zip(params, whole, strict=True):
            param.data = data
        self.engine = self.model


def _one_step(steps: set[float]) -> float:
    if len(steps) != 1:
        raise RuntimeError(f"expected every adapter parameter stepped equally often, got step counts {sorted(steps)}")
    return steps.pop()
