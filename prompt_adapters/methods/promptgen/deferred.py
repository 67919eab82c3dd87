"""One weight-gradient matmul per linear layer and generation, instead of one per decoding step.

The generator writes a prompt one token at a time, so each of its linear layers runs once per step on a handful of
rows (the batch). Autograd then computes that layer's weight gradient once per step, as a product of rank "batch"
added into a full-size gradient: on a CPU this reads and writes the whole matrix at every step and costs more than
the products themselves. Here every step's backward only passes the gradient on to its input and keeps
(input, output gradient); once the last step's backward has run, one matmul over all the kept rows gives the weight
gradient. The gradients are the same up to float rounding (the sum over steps happens inside one matmul).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

_Kept = list[tuple[torch.Tensor, torch.Tensor]]


class _WeightForSteps(torch.autograd.Function):
    """The weight as every step sees it; its backward runs after all the steps' and sums their kept rows."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, kept: _Kept) -> torch.Tensor:
        ctx.kept = kept
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        kept: _Kept = ctx.kept
        if not kept:
            return grad, None
        inputs = torch.cat([rows for rows, _ in kept])
        output_grads = torch.cat([rows for _, rows in kept])
        kept.clear()
        total = output_grads.T @ inputs
        return (total if grad is None else total + grad), None


class _StepLinear(torch.autograd.Function):
    """``x W^T + b`` whose backward returns the input and bias gradients and keeps the rows for the weight's."""

    @staticmethod
    def forward(
        ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kept: _Kept
    ) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight)
        ctx.kept = kept
        ctx.has_bias = bias is not None
        return nn.functional.linear(inputs, weight, bias)

    @staticmethod
    def backward(
        ctx: Any, output_grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, torch.Tensor | None, None]:
        inputs, weight = ctx.saved_tensors
        rows = output_grad.reshape(-1, output_grad.shape[-1])
        if ctx.needs_input_grad[1]:
            ctx.kept.append((inputs.reshape(-1, inputs.shape[-1]), rows))
        input_grad = output_grad @ weight if ctx.needs_input_grad[0] else None
        bias_grad = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return input_grad, None, bias_grad, None


def _step_linear(inputs: torch.Tensor, *, weight: torch.Tensor, bias: torch.Tensor | None, kept: _Kept) -> torch.Tensor:
    return _StepLinear.apply(inputs, weight, bias, kept)


@contextmanager
def one_weight_gradient_per_layer(module: nn.Module) -> Iterator[None]:
    """While active, the trainable ``nn.Linear`` layers of ``module`` compute their weight gradients once, over every
    call made inside the block. Nothing changes without gradients or under autocast (whose casts the plain layers
    handle), and layer types other than ``nn.Linear``, or layers whose ``forward`` was replaced already (as
    accelerate's offloading hooks do), keep their own backward."""
    device_type = next(module.parameters()).device.type
    if not torch.is_grad_enabled() or torch.is_autocast_enabled(device_type):
        yield
        return
    linears = [
        layer
        for layer in module.modules()
        if type(layer) is nn.Linear and layer.weight.requires_grad and "forward" not in vars(layer)
    ]
    for layer in linears:
        kept: _Kept = []
        weight = _WeightForSteps.apply(layer.weight, kept)
        layer.forward = partial(_step_linear, weight=weight, bias=layer.bias, kept=kept)
    try:
        yield
    finally:
        for layer in linears:
            del layer.forward
