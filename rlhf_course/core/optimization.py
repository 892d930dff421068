"""The optimizer every trainer uses, and the learning-rate schedule most of them follow.

The step itself is written out in each trainer: ``accelerator.backward``, ``accelerator.clip_grad_norm_``,
``optimizer.step()``, then the schedule moves on (``distributed``).
"""

from __future__ import annotations

import torch


def adam(
    parameters, lr: float, *, weight_decay: float = 0.0, decoupled: bool = True, **kwargs
) -> torch.optim.Optimizer:
    """AdamW (``decoupled``) or Adam; on a GPU the fused kernel (one launch per step for all parameters)."""
    parameters = list(parameters)
    fused = True if parameters and all(p.is_cuda for p in parameters) else None  # None: PyTorch's CPU default
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    return kind(parameters, lr=lr, weight_decay=weight_decay, fused=fused, **kwargs)


def warmup_then_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up over ``warmup_steps`` (0: none), times a linear decay to 0 at ``total_steps``."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"expected warmup_steps >= 0 and total_steps >= 1, got {warmup_steps} and {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(warmup_steps, 1)) * max(0.0, 1 - s / total_steps)
    )
