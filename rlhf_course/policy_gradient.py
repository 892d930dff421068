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

from rlhf_course import distributed, optimization, runtime, world
from rlhf_course.registry import expect_tensor, replaceable
from rlhf_course.rollouts import Rollout, collect, freeze, kl_penalized_rewards, response_logprobs


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


def _validate_reinforce(out, logprobs, advantages, mask):
    expect_tensor(out, shape=(), what="the loss")


@replaceable("reinforce_loss", _validate_reinforce)
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


def advantages_of(rollout: Rollout, kl_coef: float, baseline: bool) -> torch.Tensor:
    """(batch, resp) REINFORCE weights: returns-to-go of the KL-penalised rewards, minus the baseline."""
    mask = rollout.response_mask
    rewards = kl_penalized_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef)
    returns = returns_to_go(rewards, mask)
    return returns - leave_one_out_baseline(returns, mask) if baseline else returns


def train_pg(policy, reference, scorer, tokenizer, tasks: list[world.Task], config: PGConfig = PGConfig(),
             on_step=None) -> PGResult:
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    freeze(reference)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr, eps=1e-5)
    distributed.check_minibatches(min(config.batch_size, len(tasks)), config.batch_size)
    distributed.broadcast_parameters(policy)
    history = []
    for update in runtime.progress(range(config.updates), desc="reinforce"):
        rollout = collect(policy, reference, scorer, tokenizer, rng.sample(tasks, min(config.batch_size, len(tasks))),
                          temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                          no_eos_penalty=config.no_eos_penalty, seed=config.seed * 100_003 + update)
        advantages = advantages_of(rollout, config.kl_coef, config.baseline)
        policy.train()
        mine = distributed.shard  # each process takes the gradient of its share of the rows
        logprobs = response_logprobs(policy, mine(rollout.sequences), mine(rollout.attention_mask),
                                     rollout.prompt_width, config.temperature)
        loss = reinforce_loss(logprobs, mine(advantages), mine(rollout.response_mask))  # a mean over its rows
        rows = logprobs.shape[0]
        grad_norm = optimization.step(distributed.share_of_mean(loss, rows), optimizer, policy.parameters(),
                                      config.max_grad_norm)
        row = {"update": update, "score": rollout.scores.mean().item(), "gold": sum(rollout.gold) / len(rollout.gold),
               "kl": rollout.kl.mean().item(), "length": rollout.lengths.float().mean().item(),
               "loss": distributed.mean(loss, rows).item(), "grad_norm": grad_norm.item()}
        history.append(row)
        if on_step is not None:
            on_step(row)
    policy.eval()
    return PGResult(history, time.time() - start)


def gradient_variance(policy, rollout: Rollout, advantages: torch.Tensor, temperature: float = 1.0,
                      groups: int = 8) -> float:
    """How noisy the REINFORCE gradient is: split the rollout into ``groups`` equal parts, take each part's
    gradient, and return the total variance across parts (summed over parameters). Lower is better:
    the same expected gradient from fewer samples."""
    grads = []
    rows = torch.arange(len(rollout.tasks)).chunk(groups)
    policy.train()
    for part in rows:
        policy.zero_grad(set_to_none=True)
        logprobs = response_logprobs(policy, rollout.sequences[part], rollout.attention_mask[part],
                                     rollout.prompt_width, temperature)
        reinforce_loss(logprobs, advantages[part], rollout.response_mask[part]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    policy.zero_grad(set_to_none=True)
    policy.eval()
    stacked = torch.stack(grads)  # (groups, n_params)
    return float(stacked.var(dim=0).sum())


# --- why policy gradients: a toy token MDP, value-based against policy-based ----------------------
def toy_episodes_to_solve(method: str, vocab: int = 30, length: int = 3, prior_mass: float = 0.3, seed: int = 0,
                          max_episodes: int = 100_000, batch: int = 16, lr: float | None = None) -> int:
    """Episodes until a learner writes a target ``length``-token sequence reliably (reward 1 for it, else 0).

    ``"reinforce"`` starts from a "pretrained" policy that gives the right token ``prior_mass`` at each
    step (as an SFT model is often nearly right) and is solved when P(target) > 0.9. ``"q_learning"``
    is tabular Q-learning over prefixes with epsilon-greedy exploration; it cannot start from the
    pretrained distribution (a Q-table holds values, not probabilities) and is solved when its greedy
    answer is the target. Both see the same sparse, end-of-sequence reward.
    """
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(vocab, (length,), generator=gen)
    if method == "reinforce":
        prior = torch.full((length, vocab), (1 - prior_mass) / (vocab - 1))
        prior[torch.arange(length), target] = prior_mass
        logits = prior.log().clone().requires_grad_(True)  # (length, vocab): one distribution per step
        optimizer = torch.optim.SGD([logits], lr=5.0 if lr is None else lr)
        for episodes in range(batch, max_episodes + 1, batch):
            dist = torch.distributions.Categorical(logits=logits.expand(batch, -1, -1))
            tokens = dist.sample()  # (batch, length)
            reward = (tokens == target).all(dim=1).float()  # (batch,)
            advantage = reward - reward.mean()
            loss = -(dist.log_prob(tokens).sum(dim=1) * advantage).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if torch.log_softmax(logits, -1)[torch.arange(length), target].sum().exp() > 0.9:
                return episodes
        return max_episodes
    if method == "q_learning":
        goal = tuple(target.tolist())
        q = {}  # prefix (tuple of tokens) -> list of vocab action values; plain Python, it is tiny and scalar
        rng = random.Random(seed)
        for episode in range(1, max_episodes + 1):
            prefix = ()
            for step in range(length):
                values = q.setdefault(prefix, [0.0] * vocab)
                best = max(values)
                if rng.random() < 0.1 or best == 0.0:  # explore (always, until something was rewarded)
                    action = rng.randrange(vocab)
                else:
                    action = values.index(best)
                nxt = prefix + (action,)
                done = step == length - 1
                reward = float(done and nxt == goal)
                future = 0.0 if done else max(q.setdefault(nxt, [0.0] * vocab))
                values[action] += (0.5 if lr is None else lr) * (reward + future - values[action])
                prefix = nxt
            greedy = ()
            while len(greedy) < length and max(q.get(greedy, [0.0])) > 0:
                values = q[greedy]
                greedy += (values.index(max(values)),)
            if greedy == goal:
                return episode
        return max_episodes
    raise ValueError(f"method must be 'reinforce' or 'q_learning', got {method!r}")
