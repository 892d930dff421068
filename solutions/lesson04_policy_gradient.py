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
    ### BEGIN SOLUTION
    log_probs = torch.log_softmax(logits / temperature, dim=-1)  # (batch, resp, vocab)
    return log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ### END SOLUTION


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """The per-token rewards of lesson 04's "Rewards per token" section.

    scores: (batch,) float, the reward model's score of each response; logprobs, ref_logprobs: (batch, resp)
    float, each sampled token's log-probability under the policy and the reference; response_mask:
    (batch, resp), 1 on response tokens (EOS included) and 0 on the padding after them; kl_coef: a float.
    All are constants: do not modify them. Return a new (batch, resp) tensor of the logprobs' dtype,
    0 on padding.
    """
    ### BEGIN SOLUTION
    rewards = -kl_coef * (logprobs - ref_logprobs) * response_mask
    last = response_mask.long().sum(dim=1) - 1  # (batch,)
    rewards = rewards.clone()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards
    ### END SOLUTION


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE loss of lesson 04's "REINFORCE" section, as a number to minimise.

    logprobs: (batch, resp) float, with gradient; advantages: (batch, resp) float, weights that must not be
    trained (no gradient may reach them, even when they carry one); mask: (batch, resp), 1 on response tokens.
    Return a 0-dim tensor that keeps the gradient of the logprobs.
    """
    ### BEGIN SOLUTION
    per_response = (logprobs * advantages.detach() * mask).sum(dim=1)  # (batch,)
    return -per_response.mean()
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    logprobs = policy(rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, temperature)
    loss = reinforce_loss(logprobs, advantages[rows], rollout.response_mask[rows])
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), grad_norm
    ### END SOLUTION
