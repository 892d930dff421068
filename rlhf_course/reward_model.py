"""The reward model: a transformer that reads a conversation and returns one number.

It is a Hugging Face ``AutoModelForSequenceClassification`` with ``num_labels=1`` whose backbone
starts from the SFT model, so it saves and loads like any HF model. The reward is the scalar head's
output at the *last real token* of each right-padded sequence (the closing ``<|end|>``), which has
attended to the whole prompt and response.

Losses, one per kind of feedback:

* comparisons, Bradley-Terry: ``-log sigmoid(r_chosen - r_rejected - margin)`` (as TRL's RewardTrainer);
* 1-5 ratings, regression of the reward on the centred rating;
* thumbs up/down, logistic: ``-log sigmoid(+/- r)``.

As in the PPO literature (Ziegler et al. 2019; Huang et al. 2024), the head starts at
N(0, 1/sqrt(d+1)) and after training the reward is normalised to mean 0 and std 1 on samples of the
SFT policy. The normalisation is stored in the model's config and applied by ``score``.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from rlhf_course import models, runtime
from rlhf_course.language_model import pad_batch
from rlhf_course.registry import expect_tensor, replaceable
from rlhf_course.sft import encode


def _validate_last(out, values, attention_mask):
    expect_tensor(out, shape=values.shape[:1], dtype=values.dtype, device=values.device, what="the rewards")


@replaceable("last_token_rewards", _validate_last)
def last_token_rewards(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The value at each row's last real token. values, attention_mask: (batch, seq), right-padded -> (batch,)."""
    last = attention_mask.sum(dim=1) - 1  # (batch,) index of the last 1 in a right-padded row
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


def _validate_bt(out, chosen, rejected, margin=None):
    expect_tensor(out, shape=(), what="the loss")


@replaceable("bradley_terry_loss", _validate_bt)
def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected - margin) over the batch. chosen, rejected, margin: (batch,)."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def rating_loss(rewards: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
    """Squared error between the reward and the rating mapped from 1..5 onto -2..2. Both (batch,)."""
    return F.mse_loss(rewards, ratings.float() - 3.0)


def thumbs_loss(rewards: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Logistic loss: a thumbs-up should have a positive reward, a thumbs-down a negative one. Both (batch,)."""
    return F.binary_cross_entropy_with_logits(rewards, up.float())


def build(backbone_dir: str | Path, dev: torch.device | None = None, seed: int = 0):
    """A fresh reward model: the backbone of ``backbone_dir`` with a new scalar head, seeded."""
    path = models.check_model_dir(Path(backbone_dir))
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, local_files_only=True, use_safetensors=True, trust_remote_code=False,
        dtype=torch.float32)
    head = model.score
    torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(model.config.hidden_size + 1),
                          generator=torch.Generator().manual_seed(seed))
    model.config.reward_mean, model.config.reward_std = 0.0, 1.0
    return model.to(dev or runtime.device())


def load(path: str | Path, dev: torch.device | None = None):
    path = models.check_model_dir(Path(path))
    model = AutoModelForSequenceClassification.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32)
    return model.to(dev or runtime.device())


def encode_conversations(tokenizer, prompts: list[list[dict]], responses: list[str], limit: int):
    """Right-padded (input_ids, attention_mask) of prompt + response; refuses sequences over ``limit``."""
    encoded = [encode(tokenizer, p, [{"role": "assistant", "content": r}])[0] for p, r in zip(prompts, responses)]
    longest = max(len(ids) for ids in encoded)
    if longest > limit:
        row = max(range(len(encoded)), key=lambda i: len(encoded[i]))
        raise ValueError(f"conversation {row} has {longest} tokens, more than the reward model's context of "
                         f"{limit}; shorten the response (the reward must see the end of the reply)")
    return pad_batch(encoded, tokenizer.pad_token_id, side="right")


def raw_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unnormalised head output at the last real token: (batch, seq) -> (batch,)."""
    dev = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
    with runtime.autocast(dev):
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        values = model.score(hidden).squeeze(-1).float()  # (batch, seq)
    return last_token_rewards(values, attention_mask)


@torch.no_grad()
def score(model, tokenizer, prompts: list[list[dict]], responses: list[str], batch_size: int = 128) -> torch.Tensor:
    """Normalised rewards (on the CPU) for each (prompt, response)."""
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_conversations(tokenizer, prompts[start:start + batch_size],
                                         responses[start:start + batch_size], models.context_length(model))
        out.append(raw_rewards(model, ids, mask).cpu())
    rewards = torch.cat(out)
    return (rewards - model.config.reward_mean) / model.config.reward_std


@torch.no_grad()
def normalise(model, tokenizer, prompts, responses) -> None:
    """Set the stored mean and std so that rewards of these (SFT) samples have mean 0 and std 1."""
    model.config.reward_mean, model.config.reward_std = 0.0, 1.0
    raw = score(model, tokenizer, prompts, responses)
    model.config.reward_mean, model.config.reward_std = raw.mean().item(), raw.std().clamp(min=1e-6).item()


@dataclass
class RewardConfig:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 50
    seed: int = 0


@dataclass
class RewardResult:
    losses: list[float]
    val_accuracy: list[tuple[int, float]]  # (step, accuracy on the validation comparisons)
    seconds: float


def train_on_comparisons(model, tokenizer, train_rows: list[dict], val_rows: list[dict] | None = None,
                         config: RewardConfig = RewardConfig(), weights: list[float] | None = None,
                         on_step=None) -> RewardResult:
    """Bradley-Terry training on rows ``{"prompt", "chosen", "rejected"[, "margin"]}`` (TRL's format).

    ``weights`` (one per row) scale each comparison's loss, e.g. by the reliability of its labeler.
    """
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    dev = next(model.parameters()).device
    limit = models.context_length(model)
    order = [i for _ in range(config.epochs) for i in rng.sample(range(len(train_rows)), len(train_rows))]
    batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) * max(0.0, 1 - s / len(batches)))
    losses, val_curve = [], []
    for step, indices in enumerate(runtime.progress(batches, desc="reward model")):
        model.train()
        rows = [train_rows[i] for i in indices]
        prompts = [r["prompt"] for r in rows] * 2
        replies = [r["chosen"][-1]["content"] for r in rows] + [r["rejected"][-1]["content"] for r in rows]
        ids, mask = encode_conversations(tokenizer, prompts, replies, limit)
        rewards = raw_rewards(model, ids, mask)  # (2 * batch,): chosen first, then rejected
        chosen, rejected = rewards[:len(rows)], rewards[len(rows):]
        margin = torch.tensor([r.get("margin") or 0.0 for r in rows], device=dev)
        if weights is None:
            loss = bradley_terry_loss(chosen, rejected, margin)
        else:  # weighted Bradley-Terry: the same loss, each comparison counted by its weight
            w = torch.tensor([weights[i] for i in indices], device=dev)
            loss = (-F.logsigmoid(chosen - rejected - margin) * w).sum() / w.sum().clamp(min=1e-8)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if val_rows and ((step + 1) % config.eval_every == 0 or step == len(batches) - 1):
            val_curve.append((step + 1, comparison_accuracy(model, tokenizer, val_rows)))
    model.eval()
    return RewardResult(losses, val_curve, time.time() - start)


def _validate_acc(out, chosen, rejected):
    expect_tensor(out, shape=(), what="the accuracy")


@replaceable("pairwise_accuracy", _validate_acc)
def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the chosen response gets the higher reward; a tie counts as half."""
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean()


def comparison_accuracy(model, tokenizer, rows: list[dict]) -> float:
    prompts = [r["prompt"] for r in rows]
    chosen = score(model, tokenizer, prompts, [r["chosen"][-1]["content"] for r in rows])
    rejected = score(model, tokenizer, prompts, [r["rejected"][-1]["content"] for r in rows])
    return pairwise_accuracy(chosen, rejected).item()
