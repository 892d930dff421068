"""A linear reward head on a reward model's frozen features: the same kind of model, fitted in seconds.

Lessons 03 and 07 use it for experiments that would take minutes with the whole network: how accuracy
grows with the number of comparisons, which kind of judgment (ratings, thumbs, comparisons) teaches most,
what a biased labeler teaches, how a proxy is over-optimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_course.algorithms.reward_model import encode_conversations, rating_loss, reply_text, thumbs_loss
from rlhf_course.core import models


@torch.no_grad()
def features(model, tokenizer, prompts: list[list[dict]], responses: list[str], batch_size: int = 128) -> torch.Tensor:
    """The backbone's hidden state at the last real token of each conversation: (n, hidden), on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_conversations(
            tokenizer,
            prompts[start : start + batch_size],
            responses[start : start + batch_size],
            models.context_length(model),
        )
        hidden = models.backbone(model)(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        last = (mask.sum(dim=1) - 1).to(dev)  # (batch,)
        out.append(hidden[torch.arange(len(last), device=dev), last].float().cpu())
    return torch.cat(out)


def pair_features(model, tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of each preference row's chosen and rejected reply: (rows, hidden) each.

    A reply that appears in many comparisons (all K(K-1)/2 pairs of a prompt's K samples) is encoded once.
    """
    index, prompts, replies = {}, [], []
    for row in rows:
        for side in ("chosen", "rejected"):
            key = (repr(row["prompt"]), reply_text(row[side]))
            if key not in index:
                index[key] = len(prompts)
                prompts.append(row["prompt"])
                replies.append(key[1])
    feats = features(model, tokenizer, prompts, replies)
    return tuple(
        feats[torch.tensor([index[(repr(row["prompt"]), reply_text(row[side]))] for row in rows])]
        for side in ("chosen", "rejected")
    )


def fit_head(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    weights: torch.Tensor | None = None,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
) -> torch.Tensor:
    """A linear reward ``r = features @ w`` fitted by (weighted) Bradley-Terry. chosen, rejected: (n, d) -> (d,)."""
    diff = chosen - rejected  # (n, d): r_chosen - r_rejected is linear in it
    weights = torch.ones(len(diff)) if weights is None else weights
    w = torch.zeros(diff.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = (-F.logsigmoid(diff @ w) * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return w.detach()


def fit_single_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    kind: str,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
) -> torch.Tensor:
    """A linear reward ``r = features @ w + b`` fitted to judgments of single replies with the reward model's own
    loss for them: ``kind`` "ratings" (1-5, ``rating_loss``) or "thumbs" (1.0 up, 0.0 down, ``thumbs_loss``).

    features: (n, d); targets: (n,). Returns ``w``, (d,): the bias ``b`` places the rewards on the judgments'
    absolute scale, which a comparison of two replies never sees.
    """
    losses = {"ratings": rating_loss, "thumbs": thumbs_loss}
    if kind not in losses:
        raise ValueError(f"kind should be one of {sorted(losses)} (comparisons are fitted by fit_head), got {kind!r}")
    w = torch.zeros(features.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = losses[kind](features @ w + b, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return w.detach()
