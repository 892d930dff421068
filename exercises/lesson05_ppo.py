"""Lesson 05 exercises: whitening, GAE, and PPO's clipped policy and value losses.

Write each function body, then check it from the lesson or with ``rlhf-course check ID``
(IDs: whiten, gae, ppo_policy_loss, ppo_value_loss). ``ppo_probes.run_probes()`` then trains tiny
problems with known answers using your functions.
"""

import torch


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise x (batch, resp) to unit variance (and zero mean if shift_mean) over positions where mask is 1.

    Use the population variance (divide by the number of masked positions) plus 1e-8 under the square
    root. With shift_mean=False, add the mean back after scaling. Padding positions return 0.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation. rewards, values, mask: (batch, resp), right-padded.

    delta_t = r_t + gamma * V_(t+1) - V_t, with V = 0 after each response's last token (padding values are
    garbage: never use them); A_t = delta_t + gamma * lam * A_(t+1). Return (advantages, returns) with
    returns = advantages + values, both 0 on padding.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> torch.Tensor:
    """PPO's clipped surrogate as a loss: masked mean of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)),
    ratio = exp(logprobs - old_logprobs). All inputs (batch, resp). Return a scalar."""
    # YOUR CODE HERE
    raise NotImplementedError()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float = 0.2
) -> torch.Tensor:
    """Clipped value loss: 0.5 * masked mean of max((V - R)^2, (V_clipped - R)^2), where
    V_clipped = old_values + clip(values - old_values, -eps, eps). All inputs (batch, resp)."""
    # YOUR CODE HERE
    raise NotImplementedError()
