"""Pretraining the base model on the world's plain text (what `rlhf-course pretrain` runs).

The text is packed: paragraphs joined by the end-of-text token and cut into blocks of the context
length, so no compute goes to padding. Fresh paragraphs are generated for every step, so the model
never sees a paragraph twice. The whole run is a function of its seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf_course.algorithms import tokenizer as tokenizer_lib
from rlhf_course.core import models, runtime
from rlhf_course.core.language_model import next_token_loss
from rlhf_course.simulation import world


@dataclass
class PretrainConfig:
    steps: int = 2000
    batch_size: int = 32
    block_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    vocab_size: int = 1024
    model: models.ModelConfig = field(default_factory=models.ModelConfig)


def cosine_lr(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def packed_blocks(tok, n_blocks: int, block_size: int, seed: int) -> torch.Tensor:
    """(n_blocks, block_size) token ids of plain world text, paragraphs separated by EOS."""
    n_paragraphs = n_blocks * block_size // 20 + 100  # paragraphs average ~30 tokens: enough with margin
    ids: list[int] = []
    for encoded in tok(world.pretraining_corpus(n_paragraphs, seed))["input_ids"]:
        ids.extend(encoded + [tok.eos_token_id])
    need = n_blocks * block_size
    if len(ids) < need:
        raise RuntimeError(f"generated {len(ids)} tokens of pretraining text, need {need}")
    return torch.tensor(ids[:need], dtype=torch.long).view(n_blocks, block_size)


def optimize(model, config, batch_loss, desc: str, on_step=None) -> list[float]:
    """The loop every pretraining objective shares: AdamW, the cosine schedule, gradient clipping.

    ``config`` gives steps, lr, warmup_steps and weight_decay; ``batch_loss(step)`` returns that step's loss
    (a scalar tensor). Returns the losses; ``on_step(row)`` sees each step's ``{"step", "loss"}``.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    losses = []
    model.train()
    for step in runtime.progress(range(config.steps), desc=desc):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, config.steps, config.warmup_steps, config.lr)
        loss = batch_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step({"step": step, "loss": losses[-1]})
    model.eval()
    return losses


def pretrain(config: PretrainConfig, tok=None, on_step=None):
    """Train a fresh model; returns (model, tokenizer, losses). ``on_step(row)`` sees each step's ``{"step", "loss"}``."""
    gen = runtime.seed_everything(config.seed)
    tok = tok or tokenizer_lib.train_tokenizer(config.vocab_size, config.seed)
    dev = runtime.device()
    model = config.model.build(tok).to(dev)
    blocks = packed_blocks(tok, config.steps * config.batch_size, config.block_size, config.seed)
    order = torch.randperm(len(blocks), generator=gen)

    def batch_loss(step: int) -> torch.Tensor:
        batch = blocks[order[step * config.batch_size : (step + 1) * config.batch_size]].to(dev)  # (batch, block)
        with runtime.autocast(dev):
            logits = model(input_ids=batch).logits  # (batch, block, vocab)
        return next_token_loss(logits, batch)

    return model, tok, optimize(model, config, batch_loss, "pretrain", on_step)


def main(out: Path, config: PretrainConfig) -> Path:
    start = time.time()
    model, tok, losses = pretrain(config)
    models.save(model, tok, out)
    print(
        f"pretrained {models.count_parameters(model):,} parameters for {config.steps} steps in "
        f"{time.time() - start:.0f}s; final loss {sum(losses[-20:]) / 20:.3f}; saved to {out}"
    )
    return out
