"""PPO for language models, top to bottom, with the implementation details that matter.

One update:

1. **Rollout** (``rollouts.collect``): sample a response per prompt, keep its log-probabilities under
   the policy and the frozen reference, and score it with the reward model (-1 if it never ends).
2. **Rewards**: a per-token KL penalty ``-beta * (log pi - log pi_ref)``, with the score added on the
   last real token (``rollouts.kl_penalized_rewards``). ``beta`` follows an adaptive controller.
3. **Advantages**: GAE over the response tokens with the value head's estimates, then whitened.
4. **Optimisation**: several epochs over shuffled minibatches of the rollout, each minimising the
   clipped policy loss plus ``vf_coef`` times the clipped value loss, with gradient clipping, and
   stopping early when the approximate KL to the rollout policy grows too large.

The value head is a zero-initialised linear layer on the policy's last hidden state (so the first
advantages are just the rewards). Four pieces are exercises: ``whiten``, ``gae``, ``ppo_policy_loss``,
``ppo_value_loss``; the probe tasks in ``ppo_probes`` catch a broken one in seconds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlhf_course.algorithms.rollouts import (
    Rollout,
    collect,
    forward_response,
    freeze,
    kl_penalized_rewards,
    token_logprobs,
)
from rlhf_course.core import distributed, models, optimization, resume, runtime
from rlhf_course.core.registry import replaceable
from rlhf_course.simulation import world


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


# --- the four exercise pieces ----------------------------------------------------------------------
@replaceable("whiten")
def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale ``x`` (batch, resp) to unit variance over the positions where ``mask`` is 1, and (if
    ``shift_mean``) to zero mean. Padding does not enter the statistics and comes back as 0."""
    m = mask.to(x.dtype)
    mean = (x * m).sum() / m.sum()
    var = ((x - mean) ** 2 * m).sum() / m.sum()
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * m


@replaceable("gae")
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    rewards, values, mask: (batch, resp), right-padded (mask 1 on response tokens). With
    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (and ``V`` = 0 after the last token),
    ``A_t = sum_k (gamma * lam)^k delta_{t+k}``. Returns ``(advantages, returns = advantages + values)``,
    both 0 on padding. Computed for all steps at once with a discount matrix instead of a loop.
    """
    m = mask.to(values.dtype)
    values = values * m
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # (batch, resp)
    deltas = (rewards + gamma * next_values - values) * m
    steps = torch.arange(rewards.shape[1], device=rewards.device)
    ahead = (steps.unsqueeze(0) - steps.unsqueeze(1)).to(values.dtype)  # (resp, resp): k - t
    discount = torch.where(ahead >= 0, (gamma * lam) ** ahead.clamp(min=0), torch.zeros_like(ahead))
    advantages = deltas @ discount.T  # (batch, resp): A_t = sum_k discount[t, k] * delta_k
    advantages = advantages * m
    return advantages, (advantages + values) * m


@replaceable("ppo_policy_loss")
def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> torch.Tensor:
    """The clipped surrogate, as a loss to minimise: mean over response tokens of
    ``max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))`` with ``ratio = exp(logprobs - old_logprobs)``.

    All inputs (batch, resp); ``old_logprobs`` and ``advantages`` are constants from the rollout.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return masked_mean(torch.maximum(unclipped, clipped), mask)


@replaceable("ppo_value_loss")
def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float = 0.2
) -> torch.Tensor:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clipped - R)^2))`` over response tokens, where
    ``V_clipped`` keeps the new value within ``clip_range`` of the rollout's value. All (batch, resp)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


# --- the KL controller and the policy with its value head ------------------------------------------
@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move beta so the measured KL tracks ``target``, by at most 20% per horizon."""

    value: float
    target: float | None = 6.0  # None keeps beta fixed
    horizon: int = 10_000

    def update(self, kl: float, n_samples: int) -> float:
        if self.target is not None:
            error = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.value *= 1.0 + error * n_samples / self.horizon
        return self.value


class PolicyWithValue(torch.nn.Module):
    """A causal LM and a value head on its last hidden state, sharing the backbone."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = torch.nn.Linear(lm.config.hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)  # zero values at first: advantages start as rewards
        torch.nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(lm.parameters()).device)

    def forward(self, sequences, attention_mask, prompt_width: int, temperature: float):
        """(logprobs, values), each (batch, resp), for the response tokens of ``sequences``."""
        hidden, logits = forward_response(self.lm, sequences, attention_mask, prompt_width)
        values = self.value_head(hidden.float()).squeeze(-1)
        return token_logprobs(logits, sequences[:, prompt_width:], temperature), values

    def save(self, tokenizer, path: Path) -> Path:
        models.save(self.lm, tokenizer, path)
        save_file(
            {k: v.contiguous() for k, v in self.value_head.state_dict().items()}, Path(path) / "value_head.safetensors"
        )
        return Path(path)

    def load_value_head(self, path: Path) -> None:
        self.value_head.load_state_dict(load_file(Path(path) / "value_head.safetensors"))


# --- training ---------------------------------------------------------------------------------------
@dataclass
class PPOConfig:
    """CPU defaults: 64 prompts per rollout, 4 epochs of 4 minibatches; a GPU run raises ``updates``/``batch_size``."""

    updates: int = 50
    batch_size: int = 64  # prompts per rollout
    minibatch_size: int = 16
    ppo_epochs: int = 4
    lr: float = 1e-5
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 40
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    init_kl_coef: float = 0.1
    target_kl: float | None = 1.0  # per-sequence KL (nats) the adaptive controller aims for; None: fixed beta
    kl_horizon: int = 1_000  # samples over which beta may move by 20%; short, because CPU runs are short
    early_stop_kl: float | None = (
        0.1  # stop an update's epochs when the approximate KL to the rollout policy exceeds it
    )
    whiten_rewards: bool = False
    no_eos_penalty: float | None = -1.0
    seed: int = 0
    samples_to_log: int = 3
    checkpoint_every: int = 0  # save the run's state every this many updates (into train_ppo's checkpoint_dir)


@dataclass
class PPOResult:
    history: list[dict]  # one row of statistics per update
    samples: list[list[tuple[str, str, float, float]]] = field(default_factory=list)  # (prompt, response, score, gold)
    seconds: float = 0.0


def rollout_advantages(rollout: Rollout, values: torch.Tensor, kl_coef: float, config: PPOConfig):
    """Per-token rewards, advantages (whitened) and returns for a rollout. All (batch, resp)."""
    mask = rollout.response_mask
    rewards = kl_penalized_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef)
    if config.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
    return rewards, whiten(advantages, mask), returns


def minibatch_statistics(
    accelerator, weight, logprobs, old_logprobs, mask, pg_loss, vf_loss, clip_range: float
) -> dict[str, torch.Tensor]:
    """One minibatch's statistics, each a mean over its tokens in every process (so every process holds the
    same values, and takes the same early-stopping decision): the two losses, the fraction of clipped
    ratios, the approximate KL from the rollout's policy (k2, ``mean(log_ratio ** 2) / 2``) and the entropy
    (a sampled estimate, nats per token)."""
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs  # (rows, resp)
        measured = {
            "pg_loss": pg_loss,
            "vf_loss": vf_loss,
            "clipfrac": masked_mean(((log_ratio.exp() - 1).abs() > clip_range).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "entropy": masked_mean(-logprobs, mask),
        }
        return {name: accelerator.reduce(value * weight, "mean") for name, value in measured.items()}


@replaceable("ppo_update")
def ppo_update(
    policy, optimizer, accelerator, rollout: Rollout, old_values, advantages, returns, config: PPOConfig, new_order
) -> tuple[list[dict[str, torch.Tensor]], bool]:
    """PPO's optimisation of one rollout: ``config.ppo_epochs`` epochs over shuffled minibatches, one optimizer
    step each, stopping after an epoch whose mean approximate KL exceeds ``config.early_stop_kl``.

    ``policy(sequences, attention_mask, prompt_width, temperature)`` gives (logprobs, values) of the response
    tokens; ``new_order()`` a fresh permutation of the rollout's rows. Returns every minibatch's
    ``minibatch_statistics`` and whether the epochs stopped early.
    """
    mask = rollout.response_mask  # (batch, resp)
    measured = []
    for _ in range(config.ppo_epochs):
        epoch = []
        for minibatch in new_order().split(config.minibatch_size):
            mb, counted = distributed.my_rows(accelerator, minibatch)  # this process's rows of the minibatch
            logprobs, values = policy(
                rollout.sequences[mb], rollout.attention_mask[mb], rollout.prompt_width, config.temperature
            )
            pg_loss = ppo_policy_loss(logprobs, rollout.logprobs[mb], advantages[mb], mask[mb], config.clip_range)
            vf_loss = ppo_value_loss(values, old_values[mb], returns[mb], mask[mb], config.clip_range_value)
            # the losses are means over this process's tokens
            weight = distributed.share_weight(accelerator, mask[mb].sum() if counted else 0)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward((pg_loss + config.vf_coef * vf_loss) * weight)
            accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            epoch.append(
                minibatch_statistics(
                    accelerator, weight, logprobs, rollout.logprobs[mb], mask[mb], pg_loss, vf_loss, config.clip_range
                )
            )
        measured.extend(epoch)
        epoch_kl = torch.stack([stats["approx_kl"] for stats in epoch]).double().mean()
        if config.early_stop_kl is not None and epoch_kl.item() > config.early_stop_kl:
            return measured, True
    return measured, False


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over response tokens: 1 is perfect, 0 no better than a constant."""
    m = mask.bool()
    r, v = returns[m], values[m]
    return float(1 - (r - v).var() / r.var().clamp(min=1e-8))


def train_ppo(
    policy: PolicyWithValue,
    reference,
    scorer,
    tokenizer,
    tasks: list[world.Task],
    config: PPOConfig = PPOConfig(),
    on_step=None,
    checkpoint_dir: str | Path | None = None,
) -> PPOResult:
    """Run ``config.updates`` PPO updates on prompts drawn from ``tasks``; ``on_step(row)`` sees each row.

    With ``checkpoint_dir``, a checkpoint found there is resumed (weights, optimizer, random generators,
    KL coefficient, history), and the run's state is saved there every ``config.checkpoint_every`` updates.
    """
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    freeze(reference)
    batch_size = min(config.batch_size, len(tasks))
    optimizer = optimization.adam(policy.parameters(), config.lr, eps=1e-5, decoupled=False)
    kl_ctl = AdaptiveKLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
    history, samples, first = [], [], 0
    # a run may be resumed with more updates than it first asked for: nothing in an update depends on the total
    identity = (
        resume.run_identity(policy, config, ("checkpoint_every", "updates"), tasks=len(tasks))
        if checkpoint_dir is not None
        else None
    )
    saved = (
        resume.load(checkpoint_dir, {"policy": policy}, optimizer, rng, identity=identity)
        if checkpoint_dir is not None
        else None
    )
    if saved is not None:
        first, history, kl_ctl.value = saved["updates_done"], saved["history"], saved["kl_coef"]
        samples = [[tuple(s) for s in group] for group in saved["samples"]]
    accelerator = distributed.accelerator()
    ddp_policy, optimizer = accelerator.prepare(policy, optimizer)  # the policy itself, in one process
    for update in runtime.progress(range(first, config.updates), desc="ppo", initial=first, total=config.updates):
        # 1. a rollout: one sampled response per prompt, scored, with log-probabilities under policy and reference
        batch_tasks = rng.sample(tasks, batch_size)
        rollout = collect(
            policy.lm,
            reference,
            scorer,
            tokenizer,
            batch_tasks,
            temperature=config.temperature,
            max_new_tokens=config.max_new_tokens,
            no_eos_penalty=config.no_eos_penalty,
            seed=config.seed * 100_003 + update,
        )  # every process holds the whole batch's rollout
        mask = rollout.response_mask
        # 2. the value head's estimates, then rewards, GAE advantages and returns
        with torch.no_grad():
            policy.eval()
            _, old_values = policy(rollout.sequences, rollout.attention_mask, rollout.prompt_width, config.temperature)
        rewards, advantages, returns = rollout_advantages(rollout, old_values, kl_ctl.value, config)

        # 3. epochs over shuffled minibatches, one optimizer step each, stopping early if the policy moved too far
        # (ppo_update: lesson 05's exercise)
        def new_order():
            order = torch.randperm(batch_size, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
            return order.to(mask.device)  # once per epoch: a copy from host memory waits for the GPU's queue

        policy.train()
        measured, stopped = ppo_update(
            ddp_policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order
        )
        kl = rollout.kl.mean().item()
        row = {
            "update": update,
            "score": rollout.scores.mean().item(),
            "gold": sum(rollout.gold) / len(rollout.gold),
            "kl": kl,
            "kl_coef": kl_ctl.value,
            "non_score_reward": (rewards.sum(dim=1) - rollout.scores).mean().item(),
            "length": rollout.lengths.float().mean().item(),
            "ended": rollout.ended.float().mean().item(),
            "explained_variance": explained_variance(old_values, returns, mask),
            "early_stopped": stopped,
            # 4. statistics: means over the minibatches
            **{name: torch.stack([m[name] for m in measured]).double().mean().item() for name in measured[0]},
        }
        kl_ctl.update(kl, batch_size)
        history.append(row)
        samples.append(
            [
                (t.prompt[-1]["content"], r, s, g)
                for t, r, s, g in zip(rollout.tasks, rollout.responses, rollout.scores.tolist(), rollout.gold)
            ][: config.samples_to_log]
        )
        if on_step is not None:
            on_step(row)
        if checkpoint_dir is not None and config.checkpoint_every and (update + 1) % config.checkpoint_every == 0:
            resume.save(
                checkpoint_dir,
                {"policy": policy},
                optimizer,
                rng,
                identity=identity,
                state={"updates_done": update + 1, "history": history, "samples": samples, "kl_coef": kl_ctl.value},
            )
    policy.eval()
    return PPOResult(history, samples, time.time() - start)
