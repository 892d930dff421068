"""Lesson 05 exercises: whitening, GAE, PPO's clipped policy and value losses, and PPO's update loop.

Write each function body, then check it from the lesson or with ``rlhf-course check ID``
(IDs: whiten, gae, ppo_policy_loss, ppo_value_loss, ppo_update). ``ppo_probes.run_probes()`` then trains
tiny problems with known answers using your functions.
"""

import torch

from rlhf_course.algorithms.ppo import minibatch_statistics
from rlhf_course.core.distributed import my_rows, share_weight


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whitening, as lesson 05's "Advantages" section defines it, over the positions where mask is 1.

    x: (batch, resp) float; mask: (batch, resp), 1 on real tokens. Constants: do not modify them.
    shift_mean=True: the result has mean 0 and variance 1 over the real tokens; shift_mean=False: variance 1
    and the mean of x kept. Return a new tensor of x's shape and dtype, 0 on padding.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, as in lesson 05's "Advantages" section.

    rewards, values: (batch, resp) float; mask: (batch, resp), 1 on each response's tokens, then 0 on
    padding (right-padded; the values on padding are garbage and must not be used); gamma, lam: floats.
    Constants: do not modify them. Return (advantages, returns), two new (batch, resp) tensors of the
    rewards' dtype, both 0 on padding.
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
    """PPO's clipped policy loss, lesson 05's L^policy (a mean over response tokens).

    logprobs: (batch, resp) float, under the current policy, with gradient; old_logprobs: under the policy
    that sampled the tokens; advantages: (batch, resp) float; mask: (batch, resp), 1 on response tokens;
    clip_range: the lesson's epsilon. All but logprobs are constants, computed before the update.
    Return a 0-dim tensor that keeps the gradient of the logprobs.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float = 0.2
) -> torch.Tensor:
    """PPO's clipped value loss, lesson 05's L^value (a mean over response tokens).

    values: (batch, resp) float, the value head's current estimates, with gradient; old_values: the
    estimates made before the update; returns: (batch, resp) float; mask: (batch, resp), 1 on response
    tokens; clip_range: the lesson's epsilon. All but values are constants, computed before the update.
    Return a 0-dim tensor that keeps the gradient of the values.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def ppo_update(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    """PPO's optimisation of one rollout: several epochs of minibatch steps, stopped early when the policy has
    moved too far from the one that sampled the rollout. Return ``(statistics, stopped)``.

    policy: a module; ``policy(sequences, attention_mask, prompt_width, temperature)`` returns
        ``(logprobs, values)``, each (rows, resp), for the response tokens of the rows given, with gradient.
    optimizer, accelerator: as in lesson 02's ``sft_step`` (back-propagate and clip through the accelerator;
        each minibatch's step must follow that minibatch's gradient alone).
    rollout: a ``rollouts.Rollout``, constants: ``sequences``, ``attention_mask`` (batch, seq) long;
        ``prompt_width`` an int; ``logprobs`` (batch, resp), the sampling policy's; ``response_mask``
        (batch, resp), 1 on response tokens.
    old_values, advantages, returns: (batch, resp) float, constants computed before this update.
    config: a ``PPOConfig``: ``ppo_epochs``, ``minibatch_size``, ``clip_range``, ``clip_range_value``,
        ``vf_coef`` (the value loss's weight in the one loss back-propagated), ``max_grad_norm``,
        ``temperature``, ``early_stop_kl`` (None: never stop early).
    new_order(): a fresh random order of the rollout's rows, a (batch,) long tensor. Each epoch visits every
        row once, in an order of its own; consecutive runs of ``minibatch_size`` rows of it form the minibatches.

    Under ``accelerate launch`` each process takes its share of a minibatch's rows and weights its loss:
        ``rows, counted = my_rows(accelerator, minibatch)`` and
        ``weight = share_weight(accelerator, (its number of response tokens) if counted else 0)``
    (in one process: the minibatch itself, weight 1; lesson 08 says why).
    After each optimizer step append ``minibatch_statistics(accelerator, weight, logprobs, old_logprobs,
    mask, pg_loss, vf_loss, config.clip_range)`` (of that minibatch's rows) to the statistics you return; its
    ``"approx_kl"`` is the minibatch's approximate KL from the rollout's policy. Stop after an epoch whose
    minibatches' mean approximate KL exceeds ``config.early_stop_kl``; ``stopped`` says whether that happened.
    """
    # YOUR CODE HERE
    raise NotImplementedError()
