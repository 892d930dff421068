"""GRPO: PPO without a value model, against a verifiable reward (Shao et al. 2024, DeepSeekMath).

For each prompt the policy samples a *group* of G responses. Each is scored by a verifier (here the
task world's exact-match check: 1 if correct, 0 if not; no reward model at all), and its advantage is
its reward relative to the group's:

    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)

so the group plays the role PPO's value head played. Every token of a response shares its advantage.
The loss is PPO's clipped ratio plus a KL penalty to the reference added to the loss (not to the
reward), with the always-positive "k3" estimator ``exp(ref - logp) - (ref - logp) - 1``. Each
response's per-token loss is averaged over its tokens, then over the batch (TRL's ``loss_type="grpo"``).
A group whose responses all get the same reward has zero advantage everywhere: it teaches nothing.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from rlhf_course.algorithms.rollouts import Rollout, collect, freeze, response_logprobs
from rlhf_course.core import distributed, optimization, runtime
from rlhf_course.core.registry import replaceable
from rlhf_course.simulation import world


@replaceable("group_advantages")
def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards: (groups * group_size,), each group's responses next to each other. Returns the same shape:
    each reward minus its group's mean, divided by its group's (unbiased) standard deviation + 1e-4."""
    grouped = rewards.float().view(-1, group_size)  # (groups, G)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)  # Bessel-corrected, as TRL
    return ((grouped - mean) / (std + 1e-4)).view(-1)


@replaceable("grpo_loss")
def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    beta: float = 0.04,
) -> torch.Tensor:
    """Clipped surrogate plus ``beta`` times the k3 KL to the reference, per token; mean over each
    response's tokens, then over responses.

    logprobs (with grad), old_logprobs (the sampling policy), ref_logprobs, mask: (batch, resp);
    advantages: (batch,), one per response.
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)  # (batch, resp)
    adv = advantages.unsqueeze(1)  # (batch, 1): every token shares its response's advantage
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    log_ref_ratio = ref_logprobs - logprobs
    # k3 estimate of KL(pi || ref) per token, >= 0. The tokens were sampled from the old policy, so the
    # estimate is weighted by the ratio; this also gives the KL's score-function gradient term
    # (TRL's default, use_bias_correction_kl).
    kl = (torch.exp(log_ref_ratio) - log_ref_ratio - 1) * ratio  # (batch, resp)
    per_token = -surrogate + beta * kl
    per_response = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (batch,)
    return per_response.mean()


@dataclass
class GRPOConfig:
    """CPU defaults: 16 prompts x 8 samples per update (128 responses), two passes over each batch."""

    updates: int = 25
    prompts_per_update: int = 16
    group_size: int = 8
    iterations: int = 2  # optimisation passes over each batch (TRL's num_iterations); >1 makes the clip matter
    minibatch_size: int = 32
    lr: float = 2e-5
    beta: float = 0.04
    clip_range: float = 0.2
    temperature: float = 1.0
    max_new_tokens: int = 40
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class GRPOResult:
    history: list[dict]
    seconds: float


def minibatch_statistics(accelerator, weight, counted, logprobs, old_logprobs, mask, loss, clip_range: float):
    """One minibatch's statistics over every process: the loss (a mean over responses) and the fraction of its
    tokens whose ratio was clipped."""
    with torch.no_grad():
        ratio = torch.exp(logprobs - old_logprobs)  # (rows, resp)
        tokens = mask.sum() if counted else torch.zeros((), device=mask.device)
        clipped_tokens = (((ratio - 1).abs() > clip_range).float() * mask).sum()
        token_weight = distributed.share_weight(accelerator, tokens)
        return {
            "loss": accelerator.reduce((loss * weight).detach(), "mean"),
            "clipfrac": accelerator.reduce(clipped_tokens.double() / tokens.clamp(min=1) * token_weight, "mean"),
        }


@replaceable("grpo_update")
def grpo_update(policy, optimizer, accelerator, rollout: Rollout, advantages, config: GRPOConfig, new_order):
    """GRPO's optimisation of one rollout: ``config.iterations`` passes over shuffled minibatches, one optimizer
    step each. ``policy(sequences, attention_mask, prompt_width, temperature)`` gives the response tokens'
    log-probabilities; ``new_order()`` a fresh permutation of the rollout's rows. Returns every minibatch's
    ``minibatch_statistics``."""
    mask = rollout.response_mask  # (batch, resp)
    measured = []
    for _ in range(config.iterations):
        for minibatch in new_order().split(config.minibatch_size):
            mb, counted = distributed.my_rows(accelerator, minibatch)  # this process's rows of the minibatch
            logprobs = policy(
                rollout.sequences[mb], rollout.attention_mask[mb], rollout.prompt_width, config.temperature
            )
            loss = grpo_loss(
                logprobs,
                rollout.logprobs[mb],
                rollout.ref_logprobs[mb],
                advantages[mb],
                mask[mb],
                config.clip_range,
                config.beta,
            )  # a mean over this process's responses
            weight = distributed.share_weight(accelerator, len(mb) if counted else 0)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss * weight)
            accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            measured.append(
                minibatch_statistics(
                    accelerator, weight, counted, logprobs, rollout.logprobs[mb], mask[mb], loss, config.clip_range
                )
            )
    return measured


def train_grpo(
    policy, reference, scorer, tokenizer, tasks: list[world.Task], config: GRPOConfig = GRPOConfig(), on_step=None
) -> GRPOResult:
    """``scorer(tasks, responses)`` is the verifiable reward (``rollouts.correctness_scorer``). Under
    ``accelerate launch`` each process samples and trains on its share of every batch (see ``distributed``)."""
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    freeze(reference)
    optimizer = optimization.adam(policy.parameters(), config.lr, eps=1e-5, decoupled=False)
    accelerator = distributed.accelerator()
    # the log-probabilities with the policy, so that DDP sees the forward pass (``distributed.Call``)
    policy_logprobs, optimizer = accelerator.prepare(distributed.Call(response_logprobs, policy), optimizer)
    history = []
    for update in runtime.progress(range(config.updates), desc="grpo"):
        # 1. a rollout: group_size samples of each prompt, scored by the verifier
        prompts = rng.sample(tasks, min(config.prompts_per_update, len(tasks)))
        group_tasks = [task for task in prompts for _ in range(config.group_size)]  # groups stay adjacent
        # no EOS penalty: a reply cut off at the length limit is simply not a correct answer
        rollout = collect(
            policy,
            reference,
            scorer,
            tokenizer,
            group_tasks,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            no_eos_penalty=None,
            seed=config.seed * 100_003 + update,
        )  # every process holds the whole batch's rollout
        # 2. advantages: each score against its own group's mean and spread
        advantages = group_advantages(rollout.scores, config.group_size)  # (batch,)
        mask = rollout.response_mask

        # 3. passes over shuffled minibatches, one optimizer step each (grpo_update: lesson 06's exercise)
        def new_order():
            order = torch.randperm(len(group_tasks), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
            return order.to(mask.device)  # once per pass: a copy from host memory waits for the GPU's queue

        policy.train()
        measured = grpo_update(policy_logprobs, optimizer, accelerator, rollout, advantages, config, new_order)
        # 4. statistics
        group_std = rollout.scores.view(-1, config.group_size).std(dim=1)  # (groups,)
        # statistics stay tensors until here: one read from the device per update, not one per minibatch
        row = runtime.to_host(
            [
                {
                    "update": update,
                    "score": rollout.scores.mean(),
                    "gold": sum(rollout.gold) / len(rollout.gold),
                    "kl": rollout.kl.mean(),
                    "length": rollout.lengths.float().mean(),
                    "loss": torch.stack([m["loss"] for m in measured]).double().mean(),
                    "clipfrac": torch.stack([m["clipfrac"] for m in measured]).mean(),
                    "uninformative_groups": (group_std == 0).float().mean(),
                }
            ]
        )[0]
        history.append(row)
        if on_step is not None:
            on_step(row)
    policy.eval()
    return GRPOResult(history, time.time() - start)
