"""How a per-token loss becomes one number, and what that choice does to reply length (lesson 06).

GRPO's loss is a sum of per-token terms. Three ways to average them over a batch of B replies of lengths L_i,
with TRL's ``loss_type`` names:

- ``sequence`` (TRL's "grpo", the course's ``grpo_loss``): the mean over each reply's tokens, then over the
  replies. A token of reply i weighs 1 / (B L_i): the longer the reply, the less each of its tokens counts.
- ``token`` (TRL's "bnpo"; "dapo" does the same over the whole generation batch): one mean over every real
  token of the batch. Each token weighs 1 / sum_j L_j.
- ``constant`` (TRL's "dr_grpo", Liu et al. 2025, "Understanding R1-Zero-like training"): the sum divided by
  B * T, T the most new tokens a reply may have. Each token weighs 1 / (B T), whatever the batch holds.

The sequence mean is biased on length. With a group-relative advantage A_i, a wrong reply (A_i < 0) spreads
its penalty over its tokens, so each token of a long wrong reply is pushed down less than a token of a short
one, and a right reply (A_i > 0) pushes its tokens up more the shorter it is. A policy that can tell the two
apart (a language model conditions on its own wrong reasoning) then learns long wrong replies and short right
ones, although the reward never looks at length. ``length_toy`` shows it on the smallest such policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_course.algorithms.grpo import group_advantages

AVERAGINGS = ("sequence", "token", "constant")


def token_weights(mask: torch.Tensor, how: str, max_tokens: int) -> torch.Tensor:
    """The weight of each token's term in the average, zero on padding.

    mask: (..., batch, resp), 1 on real tokens (leading dimensions are separate batches); max_tokens: T, the
    longest a reply may be (``constant`` only). Returns the mask's shape.
    """
    if how not in AVERAGINGS:
        raise ValueError(f"how must be one of {AVERAGINGS}, got {how!r}")
    mask = mask.float()
    batch = mask.shape[-2]
    if how == "sequence":
        return mask / (batch * mask.sum(dim=-1, keepdim=True).clamp(min=1))
    if how == "token":
        return mask / mask.sum(dim=(-2, -1), keepdim=True).clamp(min=1)
    return mask / (batch * max_tokens)


def average(per_token: torch.Tensor, mask: torch.Tensor, how: str, max_tokens: int) -> torch.Tensor:
    """One number per batch from per-token terms (..., batch, resp), averaged as ``how`` says: shape (...)."""
    return (per_token * token_weights(mask, how, max_tokens).to(per_token.dtype)).sum(dim=(-2, -1))


@dataclass
class LengthToyConfig:
    """A policy that only chooses lengths: the reward ignores them, so any drift comes from the averaging."""

    runs: int = 100  # independent runs, trained side by side (Adam's steps are per parameter)
    updates: int = 300
    prompts: int = 16  # groups per update
    group_size: int = 8
    max_tokens: int = 40  # T: the course's GRPO samples at most 40 new tokens
    right: float = 0.5  # the chance that a reply is right, fixed: the toy learns nothing else
    start_length: float = 10.0  # the expected length of right and wrong replies at the start
    lr: float = 0.02  # Adam, as the course's trainers use
    seed: int = 0


def expected_length(continue_logit: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """E[L] when each token is followed by another with probability p = sigmoid(logit), capped at T:
    sum over l < T of p**l = (1 - p**T) / (1 - p)."""
    p = torch.sigmoid(continue_logit)
    return (1 - p**max_tokens) / (1 - p)


def length_toy(how: str, config: LengthToyConfig = LengthToyConfig()) -> dict[str, torch.Tensor]:
    """Train the toy with GRPO's advantages and a plain policy-gradient loss averaged as ``how`` says.

    Each run's policy has two parameters: the logit of going on with a reply that is right, and with one that
    is wrong. Whether a reply is right is drawn first (probability ``config.right``); the reward is 1 if it is
    right, else 0. Returns the expected length of right and of wrong replies, exact from the parameters, before
    the first update and after each: (runs, updates + 1) for each kind.
    """
    generator = torch.Generator().manual_seed(config.seed)
    runs, batch, width = config.runs, config.prompts * config.group_size, config.max_tokens
    start = torch.tensor(1 - 1 / config.start_length).logit()  # E[L] = 1 / (1 - p) without the cap
    logits = torch.nn.Parameter(start.repeat(runs, 2))  # (runs, 2): go-on logits of [wrong, right] replies
    optimizer = torch.optim.Adam([logits], lr=config.lr)
    positions = torch.arange(width)  # (T,)
    history = []
    for update in range(config.updates + 1):
        with torch.no_grad():
            history.append(expected_length(logits, width))  # (runs, 2)
        if update == config.updates:
            break
        right = (torch.rand(runs, batch, generator=generator) < config.right).long()  # (runs, batch)
        logit = torch.gather(logits, 1, right)  # (runs, batch): each reply's go-on logit
        with torch.no_grad():
            stops = torch.rand(runs, batch, width, generator=generator) > torch.sigmoid(logit).unsqueeze(-1)
            # the first stop ends the reply; a reply with no stop runs to the cap and never emits one
            stopped = stops.any(dim=-1)  # (runs, batch)
            length = torch.where(stopped, stops.float().argmax(dim=-1) + 1, torch.full_like(right, width))
        mask = positions < length.unsqueeze(-1)  # (runs, batch, T)
        is_stop = (positions == (length - 1).unsqueeze(-1)) & stopped.unsqueeze(-1)  # (runs, batch, T)
        token_logprobs = torch.where(
            is_stop, F.logsigmoid(-logit).unsqueeze(-1), F.logsigmoid(logit).unsqueeze(-1)
        )  # (runs, batch, T): log p for going on, log (1 - p) for the stop
        # groups stay adjacent when the runs are flattened, so one call normalises every group of every run
        advantages = group_advantages(right.float().view(-1), config.group_size).view(runs, batch)
        per_token = -advantages.unsqueeze(-1) * token_logprobs
        optimizer.zero_grad()
        average(per_token, mask, how, width).sum().backward()  # runs share no parameter: a sum trains each
        optimizer.step()
    lengths = torch.stack(history, dim=1)  # (runs, updates + 1, 2)
    return {"wrong": lengths[..., 0], "right": lengths[..., 1]}
