"""The optimizer step every trainer takes, and the learning-rate schedule most of them follow.

A step is: gradients of the loss, summed over processes when there are several (``distributed``),
clipped to a maximum norm, applied; then the schedule moves on. Clipping comes after the sum, so every
process clips the same gradient and takes the same step.
"""

from __future__ import annotations

import torch

from rlhf_course.core import distributed


def adam(
    parameters, lr: float, *, weight_decay: float = 0.0, decoupled: bool = True, **kwargs
) -> torch.optim.Optimizer:
    """AdamW (``decoupled``) or Adam; on a GPU the fused kernel (one launch per step for all parameters)."""
    parameters = list(parameters)
    fused = True if parameters and all(p.is_cuda for p in parameters) else None  # None: PyTorch's CPU default
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    return kind(parameters, lr=lr, weight_decay=weight_decay, fused=fused, **kwargs)


def warmup_then_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up over ``warmup_steps``, times a linear decay to 0 at ``total_steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) * max(0.0, 1 - s / total_steps)
    )


def step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters, max_grad_norm: float, scheduler=None
) -> torch.Tensor:
    """Backward, sum over processes, clip, apply; returns the gradient norm before clipping.

    A ``loss`` without a graph (a process whose share of the batch was empty) only joins the sum.
    """
    parameters = list(parameters)
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
    distributed.sum_gradients(parameters)
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return grad_norm
