"""Policy gradients: REINFORCE on the token MDP, with a baseline and a KL penalty to the reference.

The policy is the language model itself: ``pi(token | prefix)``. For a sampled response with per-token
rewards ``r_t`` (the KL penalty on every token, the reward model's score on the last), the return-to-go
``G_t = sum_{k >= t} r_k`` weighs the log-probability of the token chosen at step t:

    grad J = E[ sum_t grad log pi(a_t | s_t) * (G_t - b_t) ]

Any baseline ``b_t`` that does not depend on the action leaves the gradient unbiased and can shrink its
variance a lot. Here it is the leave-one-out mean of the other samples' returns at the same step: the
other samples of the batch, which answer other prompts. RLOO (Ahmadian et al. 2024) leaves one out among
several samples of the *same* prompt, which also takes out how hard each prompt is. One gradient step per
rollout: no value network, no clipping. PPO adds both.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from rlhf_course.algorithms.rollouts import Rollout, collect, freeze, kl_penalized_rewards, response_logprobs
from rlhf_course.core import distributed, runtime
from rlhf_course.core.registry import replaceable
from rlhf_course.simulation import world


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = sum of the rewards from step t to the end (undiscounted). (batch, resp) -> (batch, resp)."""
    rewards = rewards * mask
    return (rewards.flip(1).cumsum(1).flip(1)) * mask


def leave_one_out_baseline(returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For each sample and step, the mean return of the *other* samples that reached that step."""
    m = mask.to(returns.dtype)
    total, count = (returns * m).sum(0, keepdim=True), m.sum(0, keepdim=True)  # (1, resp)
    others = (count - m).clamp(min=1)
    return (total - returns * m) / others * m


@replaceable("reinforce_loss")
def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE loss: ``-sum_t log pi(a_t) * A_t`` over each response's tokens, averaged over responses.

    logprobs: (batch, resp) with gradient; advantages: (batch, resp), a constant weight (no gradient
    may flow into it); mask: (batch, resp), 1 on response tokens.
    """
    return -(logprobs * advantages.detach() * mask).sum(dim=1).mean()


@dataclass
class PGConfig:
    updates: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 40
    kl_coef: float = 0.1
    baseline: bool = True
    no_eos_penalty: float | None = -1.0
    seed: int = 0


@dataclass
class PGResult:
    history: list[dict]
    seconds: float


@replaceable("reinforce_step")
def reinforce_step(
    policy, optimizer, accelerator, rollout: Rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    """One REINFORCE step on ``rows`` of a rollout; returns (the loss, detached; the gradient's norm before clipping).

    ``policy(sequences, attention_mask, prompt_width, temperature)`` gives the (rows, resp) log-probabilities of
    the response tokens, with gradient. ``weight`` scales the loss before the backward pass (1 in one process).
    """
    logprobs = policy(rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, temperature)
    loss = reinforce_loss(logprobs, advantages[rows], rollout.response_mask[rows])  # a mean over the rows
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss * weight)
    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), grad_norm


def advantages_of(rollout: Rollout, kl_coef: float, baseline: bool) -> torch.Tensor:
    """(batch, resp) REINFORCE weights: returns-to-go of the KL-penalised rewards, minus the baseline."""
    mask = rollout.response_mask
    rewards = kl_penalized_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef)
    returns = returns_to_go(rewards, mask)
    return returns - leave_one_out_baseline(returns, mask) if baseline else returns


def train_pg(
    policy, reference, scorer, tokenizer, tasks: list[world.Task], config: PGConfig = PGConfig(), on_step=None
) -> PGResult:
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    freeze(reference)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)
    accelerator = distributed.accelerator()
    # the log-probabilities with the policy, so that DDP sees the forward pass (``distributed.Call``)
    policy_logprobs, optimizer = accelerator.prepare(distributed.Call(response_logprobs, policy), optimizer)
    history = []
    for update in runtime.progress(range(config.updates), desc="reinforce"):
        # 1. a rollout: one sampled response per prompt, scored, with log-probabilities under policy and reference
        rollout = collect(
            policy,
            reference,
            scorer,
            tokenizer,
            rng.sample(tasks, min(config.batch_size, len(tasks))),
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            no_eos_penalty=config.no_eos_penalty,
            seed=config.seed * 100_003 + update,
        )  # every process holds the whole batch's rollout
        # 2. advantages: KL-penalised returns-to-go, minus the leave-one-out baseline
        advantages = advantages_of(rollout, config.kl_coef, config.baseline)
        # 3. the loss on this process's rows (all of them, in one process), and one optimizer step
        # (reinforce_step: lesson 04's exercise)
        policy.train()
        rows, counted = distributed.my_rows(accelerator, list(range(len(rollout.tasks))))
        weight = distributed.share_weight(accelerator, len(rows) if counted else 0)
        loss, grad_norm = reinforce_step(
            policy_logprobs,
            optimizer,
            accelerator,
            rollout,
            advantages,
            rows,
            weight,
            config.max_grad_norm,
            config.temperature,
        )
        # 4. statistics
        row = {
            "update": update,
            "score": rollout.scores.mean().item(),
            "gold": sum(rollout.gold) / len(rollout.gold),
            "kl": rollout.kl.mean().item(),
            "length": rollout.lengths.float().mean().item(),
            "loss": accelerator.reduce(loss * weight, "mean").item(),
            "grad_norm": grad_norm.item(),
        }
        history.append(row)
        if on_step is not None:
            on_step(row)
    policy.eval()
    return PGResult(history, time.time() - start)


def gradient_variance(
    policy, rollout: Rollout, advantages: torch.Tensor, temperature: float = 1.0, groups: int = 8
) -> float:
    """How noisy the REINFORCE gradient is: split the rollout into ``groups`` equal parts, take each part's
    gradient, and return the total variance across parts (summed over parameters). Lower is better:
    the same expected gradient from fewer samples."""
    grads = []
    rows = torch.arange(len(rollout.tasks)).chunk(groups)
    policy.train()
    for part in rows:
        policy.zero_grad(set_to_none=True)
        logprobs = response_logprobs(
            policy, rollout.sequences[part], rollout.attention_mask[part], rollout.prompt_width, temperature
        )
        reinforce_loss(logprobs, advantages[part], rollout.response_mask[part]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    policy.zero_grad(set_to_none=True)
    policy.eval()
    stacked = torch.stack(grads)  # (groups, n_params)
    return float(stacked.var(dim=0).sum())
