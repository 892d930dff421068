"""Plausible mistakes in lesson 04's exercises, one function each, with the words its check's hint must contain.

Each is written the way a student would write it, not derived from the reference, so a check that
recognises it is recognising the mistake and not a copy of its own code.
"""

import torch


# --- token_logprobs -------------------------------------------------------------------------
def tl_probs_not_log(logits, tokens, temperature=1.0):
    return torch.softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def tl_ignores_temperature(logits, tokens, temperature=1.0):
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def tl_times_temperature(logits, tokens, temperature=1.0):
    return torch.log_softmax(logits * temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def tl_shifts_again(logits, tokens, temperature=1.0):
    """Shifts as for the next-token loss, though the logits are already aligned."""
    lp = torch.log_softmax(logits[:, :-1] / temperature, -1)
    return lp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def tl_wrong_dim(logits, tokens, temperature=1.0):
    return torch.log_softmax(logits / temperature, 1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# --- kl_penalized_rewards -------------------------------------------------------------------
def klr_last_column(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards[:, -1] += scores
    return rewards


def klr_first_pad(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs) * response_mask
    index = response_mask.sum(1).clamp(max=rewards.shape[1] - 1)
    rewards[torch.arange(len(scores)), index] += scores
    return rewards


def klr_sign(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards[torch.arange(len(scores)), response_mask.sum(1) - 1] += scores
    return rewards


def klr_no_mask(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs)
    rewards[torch.arange(len(scores)), response_mask.sum(1) - 1] += scores
    return rewards


def klr_score_everywhere(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    return (-kl_coef * (logprobs - ref_logprobs) + scores[:, None]) * response_mask


def klr_in_place(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    logprobs -= ref_logprobs
    logprobs *= -kl_coef * response_mask
    logprobs[torch.arange(len(scores)), response_mask.sum(1) - 1] += scores
    return logprobs


# --- reinforce_loss -------------------------------------------------------------------------
def rl_wrong_sign(logprobs, advantages, mask):
    return (logprobs * advantages.detach() * mask).sum(1).mean()


def rl_token_mean(logprobs, advantages, mask):
    return -(logprobs * advantages.detach() * mask).sum() / mask.sum()


def rl_no_mask(logprobs, advantages, mask):
    return -(logprobs * advantages.detach()).sum(1).mean()


def rl_no_detach(logprobs, advantages, mask):
    return -(logprobs * advantages * mask).sum(1).mean()


def tl_log_of_softmax(logits, tokens, temperature=1.0):
    """The definition, literally: the log of the probability."""
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.log(probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))


# --- reinforce_step -------------------------------------------------------------------------
def _pg_loss(logprobs, advantages, mask):
    return -(logprobs * advantages * mask).sum(dim=1).mean()


def _rows_loss(policy, rollout, advantages, rows, temperature):
    logprobs = policy(rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, temperature)
    return _pg_loss(logprobs, advantages[rows], rollout.response_mask[rows])


def rs_no_zero_grad(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    loss = _rows_loss(policy, rollout, advantages, rows, temperature)
    accelerator.backward(loss * weight)
    norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), norm


def rs_no_clip(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    loss = _rows_loss(policy, rollout, advantages, rows, temperature)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    norm = torch.sqrt(sum((p.grad**2).sum() for p in policy.parameters() if p.grad is not None))
    optimizer.step()
    return loss.detach(), norm


def rs_no_weight(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    loss = _rows_loss(policy, rollout, advantages, rows, temperature)
    optimizer.zero_grad()
    accelerator.backward(loss)
    norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), norm


def rs_every_row(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    """Trains on the whole rollout, whatever rows says."""
    logprobs = policy(rollout.sequences, rollout.attention_mask, rollout.prompt_width, temperature)
    loss = _pg_loss(logprobs, advantages, rollout.response_mask)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), norm


def rs_advantages_not_indexed(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    logprobs = policy(rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, temperature)
    loss = _pg_loss(logprobs, advantages[: len(rows)], rollout.response_mask[rows])
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), norm


def rs_no_temperature(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    loss = _rows_loss(policy, rollout, advantages, rows, 1.0)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), norm


def rs_norm_after_clip(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    """Returns the norm measured after clipping (at most max_grad_norm), not the one clipping saw."""
    loss = _rows_loss(policy, rollout, advantages, rows, temperature)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    norm = torch.sqrt(sum((p.grad**2).sum() for p in policy.parameters() if p.grad is not None))
    optimizer.step()
    return loss.detach(), norm


def rs_returns_graph(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    loss = _rows_loss(policy, rollout, advantages, rows, temperature)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss, norm


def rs_returns_weighted(
    policy, optimizer, accelerator, rollout, advantages, rows, weight=1.0, max_grad_norm=1.0, temperature=1.0
):
    loss = _rows_loss(policy, rollout, advantages, rows, temperature) * weight
    optimizer.zero_grad()
    accelerator.backward(loss)
    norm = accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), norm


def tl_temperature_after_log(logits, tokens, temperature=1.0):
    lp = torch.log_softmax(logits, -1) / temperature
    return lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def tl_greedy_token(logits, tokens, temperature=1.0):
    """The log-probability of the most likely token, whatever was sampled."""
    return torch.log_softmax(logits / temperature, -1).max(-1).values


def tl_keeps_last_dim(logits, tokens, temperature=1.0):
    return torch.log_softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1))


def klr_penalty_on_last_token(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    """The whole reply's KL penalty and the score, both on the last token."""
    kl = ((logprobs - ref_logprobs) * response_mask).sum(1)
    rewards = torch.zeros_like(logprobs)
    last = response_mask.sum(1) - 1
    rewards[torch.arange(len(scores)), last] = scores - kl_coef * kl
    return rewards


def klr_no_coefficient(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = -(logprobs - ref_logprobs) * response_mask
    last = response_mask.sum(1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def rl_summed_over_batch(logprobs, advantages, mask):
    return -(logprobs * advantages.detach() * mask).sum()


def rl_per_response_token_mean(logprobs, advantages, mask):
    per = (logprobs * advantages.detach() * mask).sum(1) / mask.sum(1)
    return -per.mean()


def rl_probabilities(logprobs, advantages, mask):
    return -(logprobs.exp() * advantages.detach() * mask).sum(1).mean()


def rl_sums_multiplied(logprobs, advantages, mask):
    """Sum of log-probabilities times the sum of advantages, per response."""
    return -((logprobs * mask).sum(1) * (advantages.detach() * mask).sum(1)).mean()


WRONG = {
    "token_logprobs": [
        (tl_probs_not_log, "returned probabilities"),
        (tl_ignores_temperature, "temperature was ignored"),
        (tl_times_temperature, "multiplied by the temperature"),
        (tl_shifts_again, "already aligned"),
        (tl_wrong_dim, "wrong dimension"),
        (tl_log_of_softmax, "log(softmax(x)) underflows"),
        (tl_temperature_after_log, "divided the log-probabilities by the temperature"),
        (tl_greedy_token, "the most likely token"),
        (tl_keeps_last_dim, "squeeze the last dimension"),
    ],
    "kl_penalized_rewards": [
        (klr_last_column, "last column"),
        (klr_first_pad, "first padding position"),
        (klr_sign, "wrong sign"),
        (klr_no_mask, "padding got a KL penalty"),
        (klr_score_everywhere, "added to every token"),
        (klr_in_place, "in place; the caller still needs it"),
        (klr_penalty_on_last_token, "went on its last token"),
        (klr_no_coefficient, "kl_coef was left out"),
    ],
    "reinforce_loss": [
        (rl_wrong_sign, "wrong sign"),
        (rl_token_mean, "averaged over tokens"),
        (rl_no_mask, "padding was included"),
        (rl_no_detach, "flowed into the advantages"),
        (rl_summed_over_batch, "summed over the batch"),
        (rl_per_response_token_mean, "divided by its length"),
        (rl_probabilities, "weighted probabilities"),
        (rl_sums_multiplied, "by its summed advantage"),
    ],
    "reinforce_step": [
        (rs_no_zero_grad, "zero_grad"),
        (rs_no_clip, "not clipped before the step"),
        (rs_no_weight, "not scaled by weight"),
        (rs_every_row, "every row of the rollout"),
        (rs_advantages_not_indexed, "index them with rows too"),
        (rs_no_temperature, "temperature 1"),
        (rs_norm_after_clip, "total norm before clipping"),
        (rs_returns_graph, "still carries its graph"),
        (rs_returns_weighted, "the returned loss is the weighted one"),
    ],
}
