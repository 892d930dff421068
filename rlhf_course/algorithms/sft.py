"""Instruction tuning (SFT): teach the base model to answer in the chat format.

A demonstration is the chat template applied to the prompt messages and the assistant's reply. The
model is trained with the ordinary next-token loss, but only on the reply: the prompt and the padding
get the label -100, which the loss skips. Batches group sequences of similar length, so little compute
goes to padding.

An encoder-decoder (T5, ``model.config.is_encoder_decoder``) trains with the same loop: the prompt goes
to the encoder, the reply is the decoder's target, and only padding needs masking (lesson 02's last
section).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_course.core import distributed, models, optimization, resume, runtime
from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import IGNORE_INDEX, next_token_loss, pad_batch
from rlhf_course.core.registry import replaceable


@dataclass
class SFTConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    max_examples: int | None = None  # cap on training examples, for quick demos and tests
    checkpoint_every: int = 0  # save the run's state every this many steps (into train_sft's checkpoint_dir)


@replaceable("sft_labels")
def sft_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """Labels for response-only training: input_ids, with the prompt and the padding set to -100.

    input_ids, attention_mask: (batch, seq), right-padded; prompt_lengths: (batch,). The response,
    including its closing EOS token, keeps its ids so the model learns both the answer and to stop.
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (seq,)
    in_prompt = positions.unsqueeze(0) < prompt_lengths.unsqueeze(1)  # (batch, seq)
    keep = (attention_mask == 1) & ~in_prompt
    return input_ids.masked_fill(~keep, IGNORE_INDEX)


def collate(
    encoded: list[tuple[list[int], int]], pad_id: int, decoder_start_id: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded training batch from ``(ids, prompt_length)`` pairs.

    With ``decoder_start_id`` (an encoder-decoder's ``config.decoder_start_token_id``) the batch is split
    instead: the prompts are the encoder's ``input_ids``, the replies its ``labels``, and the decoder reads
    each reply shifted right by one behind the start token, so its logits at t predict ``labels`` at t.
    """
    if decoder_start_id is None:
        input_ids, attention_mask = pad_batch([ids for ids, _ in encoded], pad_id, side="right")
        prompt_lengths = torch.tensor([n for _, n in encoded], dtype=torch.long)
        labels = sft_labels(input_ids, attention_mask, prompt_lengths)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    input_ids, attention_mask = pad_batch([ids[:n] for ids, n in encoded], pad_id, side="right")
    replies, reply_mask = pad_batch([ids[n:] for ids, n in encoded], pad_id, side="right")  # (batch, reply)
    decoder_input_ids, _ = pad_batch([[decoder_start_id] + ids[n:-1] for ids, n in encoded], pad_id, side="right")
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": reply_mask,
        "labels": replies.masked_fill(reply_mask == 0, IGNORE_INDEX),  # nothing but padding to mask
    }


def loss_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many tokens a ``collate``d batch's loss is a mean over: a decoder-only model's labels are
    predicted from the position before them, so the first position predicts nothing."""
    labels = batch["labels"] if "decoder_input_ids" in batch else batch["labels"][:, 1:]
    return (labels != IGNORE_INDEX).sum()


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices whose sequences have similar lengths (as HF's group_by_length)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 16
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def batch_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The SFT loss of a ``collate``d batch (mean over its reply tokens) and how many tokens that mean is over."""
    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in batch.items()}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with runtime.autocast(dev):
        logits = model(**inputs).logits  # (batch, seq, vocab); an encoder-decoder's seq is the reply's
    if "decoder_input_ids" in batch:  # already aligned: the logits at t predict labels at t
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
    else:
        loss = next_token_loss(logits, batch["labels"])
    return loss, loss_tokens(batch)


@replaceable("sft_step")
def sft_step(model, optimizer, accelerator, batch: dict[str, torch.Tensor], weight=1.0, max_grad_norm: float = 1.0):
    """One optimizer step on a ``collate``d batch (on the model's device); returns the batch's loss, detached.

    ``weight`` scales the loss before the backward pass: 1 in one process, this process's share of the
    batch's tokens under ``accelerate launch`` (``distributed.share_weight``).
    """
    loss, _ = batch_loss(model, batch)  # the mean next-token loss over the reply tokens
    optimizer.zero_grad(set_to_none=True)  # each step's gradient is its own batch's
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


@dataclass
class SFTResult:
    losses: list[float]
    steps: int
    seconds: float


def train_sft(
    model, tokenizer, dataset, config: SFTConfig = SFTConfig(), on_step=None, checkpoint_dir=None
) -> SFTResult:
    """Fine-tune ``model`` in place on a prompt/completion dataset. ``on_step(row)`` sees each step's ``{"step", "loss"}``.

    Under ``accelerate launch`` each process trains on its share of every batch (see ``distributed``).

    With ``checkpoint_dir``, a checkpoint found there is resumed (weights, optimizer, learning-rate schedule,
    losses so far), and the run's state is saved there every ``config.checkpoint_every`` steps.
    """
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    rows = list(dataset)
    numbers = list(range(len(rows)))  # each row's place in ``dataset``, for error messages
    if config.max_examples is not None:  # the same draw as sampling the rows themselves
        numbers = rng.sample(numbers, min(config.max_examples, len(rows)))
        rows = [rows[i] for i in numbers]
    encoded = [encode(tokenizer, row["prompt"], row["completion"]) for row in rows]
    limit = models.context_length(model)
    too_long = [i for i, (ids, _) in enumerate(encoded) if limit is not None and len(ids) > limit]
    if too_long:
        raise ValueError(
            f"{len(too_long)} demonstrations are longer than the model's context of {limit} tokens "
            f"(first: row {numbers[too_long[0]]} of the data set, counting from 0, "
            f"{len(encoded[too_long[0]][0])} tokens); shorten them or use a model with a longer context"
        )
    # every epoch's batches, drawn up front: a resumed run draws the same ones and skips those it has done
    steps = [
        indices
        for _ in range(config.epochs)
        for indices in length_grouped_batches([len(ids) for ids, _ in encoded], config.batch_size, rng)
    ]
    total = len(steps)
    dev = next(model.parameters()).device
    decoder_start_id = model.config.decoder_start_token_id if model.config.is_encoder_decoder else None
    optimizer = optimization.adam(model.parameters(), config.lr, weight_decay=config.weight_decay)
    scheduler = optimization.warmup_then_decay(optimizer, config.warmup_steps, total)
    identity = resume.run_identity(model, config, rows=len(encoded)) if checkpoint_dir else None
    saved = (
        resume.load(checkpoint_dir, {"model": model}, optimizer, rng, scheduler, identity) if checkpoint_dir else None
    )
    # losses stay on the device until a callback, the progress bar or a checkpoint reads them (runtime.to_host)
    losses = [torch.tensor(v, device=dev) for v in saved["losses"]] if saved else []
    accelerator = distributed.accelerator()
    ddp_model, optimizer = accelerator.prepare(model, optimizer)  # the model itself, in one process
    model.train()
    bar = runtime.progress(total=total, initial=len(losses), desc="sft")
    for indices in steps[len(losses) :]:
        # 1. this process's rows of the batch (all of them, in one process)
        rows, counted = distributed.my_rows(accelerator, indices)
        encoded_rows = [encoded[i] for i in rows]
        batch = {k: v.to(dev) for k, v in collate(encoded_rows, tokenizer.pad_token_id, decoder_start_id).items()}
        tokens = loss_tokens(batch)  # the reply tokens the loss is a mean over
        weight = distributed.share_weight(accelerator, tokens if counted else 0)
        # 2. the loss and the optimizer step (sft_step: lesson 02's exercise), then the schedule moves on
        loss = sft_step(ddp_model, optimizer, accelerator, batch, weight, config.max_grad_norm)
        scheduler.step()
        # 3. statistics, and a checkpoint now and then
        losses.append(accelerator.reduce(loss * weight, "mean"))  # the whole batch's mean loss
        if on_step is not None:
            on_step({"step": len(losses) - 1, "loss": losses[-1].item()})
        bar.update(1)
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1].item():.3f}", refresh=False)
        if checkpoint_dir and config.checkpoint_every and len(losses) % config.checkpoint_every == 0:
            resume.save(
                checkpoint_dir,
                {"model": model},
                optimizer,
                rng,
                scheduler,
                {"losses": torch.stack(losses).tolist()},
                identity,
            )
    bar.close()
    model.eval()
    return SFTResult(torch.stack(losses).tolist() if losses else [], total, time.time() - start)
