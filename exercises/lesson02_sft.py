"""Lesson 02 exercises: batching, response-only labels and the next-token loss.

Write each function body, then check it from the lesson or with ``rlhf-course check ID``
(IDs: pad_batch, sft_labels, next_token_loss). Functions that pass are plugged into the real
SFT training loop by ``rlhf_course.exercises.plug_in_passing()``.
"""

import torch

IGNORE_INDEX = -100


def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "right"):
    """Stack token lists of different lengths into a batch.

    Return ``(input_ids, attention_mask)``, two torch.long tensors of shape (batch, longest).
    ``input_ids`` holds the tokens and ``pad_id`` elsewhere; ``attention_mask`` is 1 on real tokens
    and 0 on padding. ``side="right"`` puts the padding after the tokens (for training);
    ``side="left"`` puts it before them (for generation, so every prompt ends in the last column).
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def sft_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor:
    """Labels for training on the response only.

    input_ids, attention_mask: (batch, seq), right-padded; prompt_lengths: (batch,), the number of
    prompt tokens at the start of each row. Return a new (batch, seq) long tensor equal to input_ids
    except that prompt positions and padding positions hold IGNORE_INDEX (-100). Do not shift: the
    loss pairs the logits at position t with the label at t+1. Do not modify input_ids.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The SFT loss of lesson 02's Exercise 3 (its equation, with R the positions whose label is not -100).

    logits: (batch, seq, vocab) float, with gradient; labels: (batch, seq) long, aligned with the input ids
    (not shifted), -100 where a position is not trained on. Both are constants: do not modify them.
    Return a 0-dim tensor of the logits' dtype that keeps the gradient.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def sft_step(model, optimizer, accelerator, batch: dict, weight=1.0, max_grad_norm: float = 1.0) -> torch.Tensor:
    """One optimizer step of SFT on one batch. Return the batch's loss.

    model: a causal LM; ``model(input_ids=..., attention_mask=...).logits`` is (batch, seq, vocab).
    optimizer: the model's optimizer. The step must follow this batch's gradient alone.
    accelerator: an accelerate ``Accelerator``. Back-propagate with ``accelerator.backward(tensor)`` and clip
        with ``accelerator.clip_grad_norm_(parameters, max_norm)``: in one process these are
        ``tensor.backward()`` and ``torch.nn.utils.clip_grad_norm_``; under ``accelerate launch`` they also
        combine the processes' gradients (lesson 08).
    batch: ``{"input_ids", "attention_mask", "labels"}``, (batch, seq) long tensors on the model's device,
        the labels already made by ``sft_labels``. Constants: do not modify them.
    weight: a number (or 0-dim tensor): the parameters must move along the gradient of ``weight * loss``
        (1.0 in one process; lesson 08 says why it differs under ``accelerate launch``).
    max_grad_norm: the largest total gradient norm the optimizer may step with.

    Return the loss of this batch (your ``next_token_loss``) before the step, unweighted, as a 0-dim tensor
    that carries no gradient.
    """
    # YOUR CODE HERE
    raise NotImplementedError()
