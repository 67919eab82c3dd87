"""Sharding the frozen base model over processes with PyTorch's FSDP2 (``fully_shard``); the adapter stays whole.

A prompt adapter has a few thousand to a few million parameters, the frozen base model billions: only the base model
is worth splitting. ``shard_base_model`` applies ``torch.distributed.fsdp.fully_shard`` to every transformer block
and then to the base model itself (embeddings, final norm, LM head), as PyTorch's FSDP2 recipe does. The adapter's
parameters live outside the sharded modules, as ordinary tensors replicated on every process, so:

- ``prompt_adapters.training.fit`` trains them as in data parallel (each process takes its share of every global
  batch and the adapter's gradients are summed over processes), the same update as one process;
- the saved adapter is an ordinary adapter file (``save_pretrained`` on the main process), loadable without any
  distributed setup;
- checkpoints and ``resume`` are the single-process ones.

Every process must run the same forwards (each block's forward all-gathers its weights from every process), which
``fit`` guarantees, and which scoring on the full dev set in every process does too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

from prompt_adapters.model_facts import block_stacks


def is_sharded(model: nn.Module) -> bool:
    """Whether any module of ``model`` was sharded with ``fully_shard``."""
    return any(isinstance(module, FSDPModule) for module in model.modules())


def shard_base_model(model: nn.Module, mesh: Any = None, reshard_after_forward: bool = True) -> nn.Module:
    """Shard the frozen base model of ``model`` (a base model or a ``PeftModel``) over ``mesh`` with FSDP2.

    ``mesh`` is a one-dimensional ``DeviceMesh`` (default: every process of the default process group, on the
    device type of the model's weights, e.g. ``gloo`` processes on CPUs). ``reshard_after_forward`` frees each
    block's gathered weights after its forward (the least memory; gradient checkpointing and the backward gather them
    again). Returns ``model``, sharded in place. Call it in every process, before or after ``get_peft_model``.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if is_sharded(base):
        raise ValueError(f"{type(base).__name__} is already sharded; call shard_base_model once per model")
    # a bare base model is frozen later, by get_peft_model; a PeftModel's base must be frozen already
    trainable = [name for name, param in base.named_parameters() if param.requires_grad] if base is not model else []
    if trainable:
        raise ValueError(
            f"shard_base_model shards a frozen base model, but {len(trainable)} base-model parameters are trainable "
            f"(e.g. {trainable[:3]}); freeze them, or train them without sharding"
        )
    state = getattr(getattr(model, "base_model", None), "state", None)
    if state is not None:
        check_shardable(state)
    stacks = block_stacks(base)
    if not stacks:
        raise ValueError(
            f"{type(base).__name__} has no transformer blocks (GradientCheckpointingLayer modules or same-class "
            "modules in a ModuleList); shard_base_model cannot tell which modules to shard"
        )
    for stack in stacks:
        for block in stack:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(base, mesh=mesh, reshard_after_forward=reshard_after_forward)
    if state is not None:  # the adapter follows the sharded embedding weight, not the full one it was made with
        state.track_base(base)
    return model


def check_shardable(state: nn.Module) -> None:
    """Refuse a method whose adapter reads the base model's weights outside the base model's forward."""
    reason = getattr(state, "unshardable_reason", None)
    if reason:
        raise ValueError(f"{type(state).__name__} cannot run on a sharded base model: {reason}")


@contextmanager
def gathered_embeddings(model: nn.Module) -> Iterator[None]:
    """Within the block, the input-embedding weight of a sharded ``model`` is whole on every process (an all-gather:
    every process must enter it), so an adapter can be created from it; a model that is not sharded is left as is."""
    owners = _embedding_owners(model)
    for owner in owners:
        owner.unshard()
    try:
        yield
    finally:
        for owner in owners:
            owner.reshard()


def _embedding_owners(model: nn.Module) -> list[FSDPModule]:
    """The FSDP modules whose parameter group holds the input-embedding weight: the innermost sharded module around
    each embedding module."""
    embedding = model.get_input_embeddings()
    owners: list[FSDPModule] = []
    for _, module in model.named_modules():
        if isinstance(module, FSDPModule) and any(m is embedding for m in module.modules()):
            owners.append(module)
    innermost = [m for m in owners if not any(o is not m and any(x is o for x in m.modules()) for o in owners)]
    return innermost
