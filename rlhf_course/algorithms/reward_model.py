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
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from rlhf_course.algorithms.sft import length_grouped_batches
from rlhf_course.core import distributed, models, optimization, runtime
from rlhf_course.core.chat import encode_many
from rlhf_course.core.language_model import pad_batch
from rlhf_course.core.registry import replaceable


@replaceable("last_token_rewards")
def last_token_rewards(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The value at each row's last real token. values, attention_mask: (batch, seq), right-padded -> (batch,)."""
    last = attention_mask.sum(dim=1) - 1  # (batch,) index of the last 1 in a right-padded row
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


@replaceable("bradley_terry_loss")
def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
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


def build(
    backbone_dir: str | Path, dev: torch.device | None = None, seed: int = 0, memory: models.MemoryConfig | None = None
):
    """A fresh reward model: the backbone of ``backbone_dir`` with a new scalar head, seeded, with ``memory``'s
    savers applied for training."""
    path = models.check_model_dir(Path(backbone_dir))
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new score head is "missing" from the checkpoint by design
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=1,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            dtype=torch.float32,
        )
    finally:
        hf_logging.set_verbosity(previous)
    head = model.score
    torch.nn.init.normal_(
        head.weight, std=1.0 / math.sqrt(model.config.hidden_size + 1), generator=torch.Generator().manual_seed(seed)
    )
    model.config.reward_mean, model.config.reward_std = 0.0, 1.0
    return models.for_training(model.to(dev or runtime.device()), memory, "SEQ_CLS")


def load(path: str | Path, dev: torch.device | None = None):
    path = models.check_model_dir(Path(path))
    model = AutoModelForSequenceClassification.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
    )
    return model.to(dev or runtime.device())


def encode_conversations(tokenizer, prompts: list[list[dict]], responses: list[str], limit: int):
    """Right-padded (input_ids, attention_mask) of prompt + response; refuses sequences over ``limit``."""
    encoded = encode_many(tokenizer, prompts, responses)
    longest = max(len(ids) for ids in encoded)
    if longest > limit:
        row = max(range(len(encoded)), key=lambda i: len(encoded[i]))
        raise ValueError(
            f"conversation {row} has {longest} tokens, more than the reward model's context of "
            f"{limit}; shorten the response (the reward must see the end of the reply)"
        )
    return pad_batch(encoded, tokenizer.pad_token_id, side="right")


def raw_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unnormalised head output at the last real token: (batch, seq) -> (batch,)."""
    dev = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
    with runtime.autocast(dev):
        hidden = models.backbone(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        values = model.score(hidden).squeeze(-1).float()  # (batch, seq)
    return last_token_rewards(values, attention_mask)


@torch.no_grad()
def score(model, tokenizer, prompts: list[list[dict]], responses: list[str], batch_size: int = 128) -> torch.Tensor:
    """Normalised rewards (on the CPU) for each (prompt, response)."""
    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_conversations(
            tokenizer,
            prompts[start : start + batch_size],
            responses[start : start + batch_size],
            models.context_length(model),
        )
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
    feedback: Literal["comparisons", "ratings", "thumbs"] = (
        "comparisons"  # which loss: Bradley-Terry, regression, logistic
    )
    epochs: int = 1
    batch_size: int = 32
    lr: float = 4e-4  # 2e-4 left gold accuracy at 0.80 (seed 0); 4e-4 gave 0.80-0.84 over 3 seeds
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 100
    seed: int = 0


@dataclass
class RewardResult:
    losses: list[float]
    val_accuracy: list[tuple[int, float]]  # (step, accuracy on the validation comparisons)
    seconds: float


def reply_text(message_list: list[dict]) -> str:
    return message_list[-1]["content"]


def comparison_batch(tokenizer, rows: list[dict], limit: int) -> dict[str, torch.Tensor]:
    """Rows ``{"prompt", "chosen", "rejected"[, "margin"]}`` (TRL's format) as one right-padded batch: every chosen
    conversation first, then every rejected one (``input_ids``, ``attention_mask``: (2 * pairs, seq)), and how
    much each chosen reply must win by (``margin``: (pairs,), 0 where a row has none)."""
    ids, mask = encode_conversations(
        tokenizer,
        [r["prompt"] for r in rows] * 2,
        [reply_text(r["chosen"]) for r in rows] + [reply_text(r["rejected"]) for r in rows],
        limit,
    )
    margin = torch.tensor([r.get("margin") or 0.0 for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "margin": margin}


@replaceable("reward_step")
def reward_step(model, optimizer, accelerator, batch: dict[str, torch.Tensor], weight=1.0, max_grad_norm=1.0):
    """One optimizer step of the Bradley-Terry loss on a ``comparison_batch`` (on the model's device); returns the
    loss, detached. ``model(input_ids, attention_mask)`` gives each conversation's reward (``raw_rewards``);
    ``weight`` scales the loss before the backward pass (1 in one process)."""
    rewards = model(batch["input_ids"], batch["attention_mask"])  # (2 * pairs,): chosen first, then rejected
    chosen, rejected = rewards.split(len(batch["margin"]))
    loss = bradley_terry_loss(chosen, rejected, batch["margin"])
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def comparison_loss(model, tokenizer, rows, weights, limit):
    """Bradley-Terry on comparison rows; with ``weights`` (pairs,), each comparison counted by its weight (e.g. its
    labeler's reliability)."""
    batch = comparison_batch(tokenizer, rows, limit)
    rewards = raw_rewards(model, batch["input_ids"], batch["attention_mask"])
    chosen, rejected = rewards.split(len(rows))
    margin = batch["margin"].to(rewards.device)
    if weights is None:
        return bradley_terry_loss(chosen, rejected, margin)
    return (-F.logsigmoid(chosen - rejected - margin) * weights).sum() / weights.sum().clamp(min=1e-8)


def _single_loss(field, loss_fn):
    """Rows ``{"prompt", "completion", field}``: one judged response each."""

    def loss(model, tokenizer, rows, weights, limit):
        ids, mask = encode_conversations(
            tokenizer, [r["prompt"] for r in rows], [reply_text(r["completion"]) for r in rows], limit
        )
        rewards = raw_rewards(model, ids, mask)  # (batch,)
        return loss_fn(rewards, torch.tensor([float(r[field]) for r in rows], device=rewards.device))

    return loss


LOSSES = {  # the losses of train's other paths (plain comparisons go through reward_step)
    "comparisons": comparison_loss,
    "ratings": _single_loss("rating", rating_loss),
    "thumbs": _single_loss("label", thumbs_loss),
}


def train(
    model,
    tokenizer,
    train_rows: list[dict],
    val_rows: list[dict] | None = None,
    config: RewardConfig = RewardConfig(),
    weights: list[float] | None = None,
    on_step=None,
) -> RewardResult:
    """Train on one kind of feedback (``config.feedback``); ``val_rows`` are comparisons for the curve.
    Under ``accelerate launch`` each process trains on its share of every batch (see ``distributed``).

    ``weights`` (one per row, comparisons only) scale each comparison's loss, e.g. by the
    reliability of its labeler. ``on_step(row)`` sees each step's ``{"step", "loss"}``, with
    ``"val_accuracy"`` on the steps that measure it.
    """
    if config.feedback not in LOSSES:
        raise ValueError(f"unknown feedback {config.feedback!r}; expected one of {list(LOSSES)}")
    if weights is not None and (config.feedback != "comparisons" or len(weights) != len(train_rows)):
        raise ValueError("weights need comparisons and one weight per training row")
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    dev = next(model.parameters()).device
    limit = models.context_length(model)
    # rows of similar length share a batch, so little compute goes to padding (characters stand in for tokens)
    lengths = [
        sum(len(m["content"]) for key in ("prompt", "chosen", "rejected", "completion") for m in row.get(key, []))
        for row in train_rows
    ]
    batches = [b for _ in range(config.epochs) for b in length_grouped_batches(lengths, config.batch_size, rng)]
    optimizer = optimization.adam(model.parameters(), config.lr, weight_decay=config.weight_decay)
    scheduler = optimization.warmup_then_decay(optimizer, config.warmup_steps, len(batches))
    accelerator = distributed.accelerator()
    plain = config.feedback == "comparisons" and weights is None  # lesson 03's path, through reward_step
    # the forward pass with the model, so that DDP sees it (``distributed.Call``): the rewards, or another path's loss
    forward, optimizer = accelerator.prepare(
        distributed.Call(raw_rewards if plain else LOSSES[config.feedback], model), optimizer
    )
    losses, val_curve = [], []
    for step, indices in enumerate(runtime.progress(batches, desc=f"reward model ({config.feedback})")):
        model.train()
        # 1. this process's rows of the batch (all of them, in one process)
        share, counted = distributed.my_rows(accelerator, indices)
        rows = [train_rows[i] for i in share]
        w = None if weights is None else torch.tensor([weights[i] for i in share], device=dev)
        count = (len(share) if w is None else w.sum()) if counted else 0  # what the loss is a mean over
        weight = distributed.share_weight(accelerator, count)
        # 2. the loss and the optimizer step
        if plain:  # Bradley-Terry on comparisons (reward_step: lesson 03's exercise)
            batch = {k: v.to(dev) for k, v in comparison_batch(tokenizer, rows, limit).items()}
            loss = reward_step(forward, optimizer, accelerator, batch, weight, config.max_grad_norm)
        else:  # ratings, thumbs or weighted comparisons: the same step around their own loss
            loss = forward(tokenizer, rows, w, limit)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss * weight)
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            loss = loss.detach()
        scheduler.step()
        # 3. statistics: the whole batch's mean loss, read back at the end (runtime.to_host)
        losses.append(accelerator.reduce(loss * weight, "mean"))
        row = {"step": step, "loss": losses[-1]}
        if val_rows and ((step + 1) % config.eval_every == 0 or step == len(batches) - 1):
            val_curve.append((step + 1, comparison_accuracy(model, tokenizer, val_rows)))
            row["val_accuracy"] = val_curve[-1][1]
        if on_step is not None:
            on_step(runtime.to_host([row])[0])
    model.eval()
    return RewardResult(torch.stack(losses).tolist() if losses else [], val_curve, time.time() - start)


@replaceable("pairwise_accuracy")
def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the chosen response gets the higher reward; a tie counts as half."""
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean()


def comparison_accuracy(model, tokenizer, rows: list[dict]) -> float:
    prompts = [r["prompt"] for r in rows]
    chosen = score(model, tokenizer, prompts, [reply_text(r["chosen"]) for r in rows])
    rejected = score(model, tokenizer, prompts, [reply_text(r["rejected"]) for r in rows])
    return pairwise_accuracy(chosen, rejected).item()
