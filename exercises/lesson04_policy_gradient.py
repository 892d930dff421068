"""Lesson 04 exercises: log-probabilities of sampled tokens, the KL-penalised rewards, the REINFORCE loss, and
one REINFORCE step.

Write each function body, then check it from the lesson or with ``rlhf-course check ID``
(IDs: token_logprobs, kl_penalized_rewards, reinforce_loss, reinforce_step).
"""

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each sampled token under softmax(logits / temperature).

    logits: (batch, resp, vocab), already aligned so that logits[:, t] is the distribution token t was
    drawn from; tokens: (batch, resp) long. Return (batch, resp), keeping the gradient.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards for RL fine-tuning.

    Every response token gets -kl_coef * (logprobs - ref_logprobs); the last response token also gets
    the reward model's score. scores: (batch,); logprobs, ref_logprobs, response_mask: (batch, resp),
    the mask 1 on response tokens (EOS included) and 0 on the padding after them, which gets reward 0.
    Do not modify the inputs.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE loss: -sum_t logprob_t * advantage_t over each response's tokens, averaged over responses.

    logprobs: (batch, resp) with gradient; advantages: (batch, resp), weights that must not be trained;
    mask: (batch, resp). Return a scalar.
    """
    # YOUR CODE HERE
    raise NotImplementedError()


def reinforce_step(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    """One REINFORCE step on some rows of a rollout. Return ``(loss, grad_norm)``.

    policy: a module; ``policy(sequences, attention_mask, prompt_width, temperature)`` returns the (rows, resp)
        log-probabilities of the response tokens of the rows given, under the current policy, with gradient.
    optimizer, accelerator, weight, max_grad_norm: as in lesson 02's ``sft_step`` (the parameters move along
        the gradient of ``weight * loss``, clipped to ``max_grad_norm``; each step follows its own gradient).
    rollout: a ``rollouts.Rollout``, constants: ``sequences``, ``attention_mask`` (batch, seq) long;
        ``prompt_width`` an int; ``response_mask`` (batch, resp), 1 on response tokens.
    advantages: (batch, resp) float, a constant: the weight of each sampled token's log-probability.
    rows: the rows of the rollout to train on (a list of indices).
    temperature: the sampling temperature, at which the log-probabilities are taken.

    Return the loss of these rows (your ``reinforce_loss``) before the step, unweighted, as a 0-dim tensor that
    carries no gradient; and the gradient's total norm before clipping, as ``clip_grad_norm_`` returns it.
    """
    # YOUR CODE HERE
    raise NotImplementedError()
