"""Lesson 03 exercises: reading the reward, the Bradley-Terry loss, pairwise accuracy, and one training step.

Write each function body, then check it from the lesson or with ``rlhf-course check ID``
(IDs: last_token_rewards, bradley_terry_loss, pairwise_accuracy, reward_step).
"""

import torch
import torch.nn.functional as F


def last_token_rewards(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward of each sequence: the value at its last real token.

    values: (batch, seq), the scalar head's output at every position; attention_mask: (batch, seq),
    right-padded (1 on real tokens, then 0 on padding). Return a (batch,) tensor that keeps the
    gradient. The last real token is the closing <|end|>, which has attended to the whole conversation.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """The Bradley-Terry loss of lesson 03's Exercise 2 (its equation), averaged over the batch.

    chosen, rejected: (batch,) float rewards of the preferred and the other response, with gradient;
    margin: (batch,) float or None (None: no margin). Constants: do not modify them. Return a 0-dim tensor
    that keeps the gradient and stays finite for reward differences of any size (hundreds included).
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs in which the chosen response gets the higher reward, a tie counting as half.

    chosen, rejected: (batch,). Return a 0-d float tensor.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def reward_step(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0) -> torch.Tensor:
    """One optimizer step of the reward model on a batch of comparisons. Return the batch's loss.

    model: a module; ``model(input_ids, attention_mask)`` returns the (rows,) reward of each conversation, with
        gradient (its head read at the last real token: your ``last_token_rewards``).
    optimizer, accelerator, weight, max_grad_norm: as in lesson 02's ``sft_step``.
    batch: constants on the model's device. ``"input_ids"``, ``"attention_mask"``: (2 * pairs, seq) long,
        right-padded, every pair's chosen conversation first, then every pair's rejected one in the same order;
        ``"margin"``: (pairs,) float, how much each chosen reply must win by.

    Return the loss (your ``bradley_terry_loss``) before the step, unweighted, as a 0-dim tensor that carries no
    gradient.
    """
    # YOUR CODE HERE
    raise NotImplementedError()
