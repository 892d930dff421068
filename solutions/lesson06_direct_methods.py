"""Lesson 06 exercises: DPO's sequence log-probabilities, loss and training step; GRPO's group advantages, loss
and update loop.

Write each function body, then check it from the lesson or with ``rlhf-course check ID``
(IDs: sequence_logprobs, dpo_loss, dpo_step, group_advantages, grpo_loss, grpo_update).
"""

import torch
import torch.nn.functional as F

from rlhf_course.algorithms.grpo import minibatch_statistics
from rlhf_course.core.distributed import my_rows, share_weight


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log pi(response | prompt) for each row: the sum of the response tokens' log-probabilities.

    logits: (batch, seq, vocab), the model's output, where logits[:, t] predicts token t + 1;
    labels: (batch, seq), the token ids with the prompt and the padding set to -100. Return (batch,).
    """
    ### BEGIN SOLUTION
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    taken = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (taken * mask).sum(dim=1)
    ### END SOLUTION


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    kind: str = "dpo",
) -> torch.Tensor:
    """The preference loss of lesson 06's DPO section: kind "dpo" is L_DPO, kind "ipo" IPO's squared loss.

    policy_chosen, policy_rejected: (batch,) float log-probabilities of the chosen and rejected responses
    under the policy, with gradient; ref_chosen, ref_rejected: the same under the frozen reference
    (constants); beta: a float > 0. Return the mean over the batch, a 0-dim tensor that keeps the gradient
    and stays finite for margins of any size. Any other kind: raise ValueError naming it.
    """
    ### BEGIN SOLUTION
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "dpo":
        return -F.logsigmoid(beta * margin).mean()
    if kind == "ipo":
        return ((margin - 1 / (2 * beta)) ** 2).mean()
    raise ValueError(f"unknown preference loss {kind!r}")
    ### END SOLUTION


def dpo_step(
    policy,
    optimizer,
    accelerator,
    batch,
    ref_chosen,
    ref_rejected,
    beta,
    loss_type="dpo",
    weight=1.0,
    max_grad_norm=1.0,
):
    """One optimizer step of DPO (or IPO) on a batch of pairs. Return ``(loss, chosen, rejected)``.

    policy: a causal LM; ``policy(input_ids=..., attention_mask=...).logits`` is (rows, seq, vocab).
    optimizer, accelerator, weight, max_grad_norm: as in lesson 02's ``sft_step``.
    batch: ``{"input_ids", "attention_mask", "labels"}``, (2 * pairs, seq) long tensors, constants: the
        conversations with every pair's chosen reply first, then every pair's rejected reply in the same order;
        the labels are -100 on the prompt and the padding.
    ref_chosen, ref_rejected: (pairs,) float, constants: the frozen reference's log-probabilities of the replies.
    beta, loss_type: passed on to your ``dpo_loss``. For ``"ipo"`` the log-probabilities (the policy's, like the
        reference's given here) are per reply token: each reply's log-probability divided by its number of
        reply tokens.

    Return the loss before the step, unweighted, and the policy's (pairs,) log-probabilities of the chosen and
    the rejected replies, all three without gradient.
    """
    ### BEGIN SOLUTION
    logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logprobs(logits, batch["labels"])  # (2 * pairs,)
    if loss_type == "ipo":
        logps = logps / (batch["labels"] != -100).sum(dim=1)
    pairs = len(ref_chosen)
    chosen, rejected = logps[:pairs], logps[pairs:]
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()
    ### END SOLUTION


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO's advantages, lesson 06's A_i: each reward against its own group.

    rewards: (groups * group_size,) float, each group's responses next to each other; group_size: an int.
    A constant: do not modify it. Return a new tensor of the rewards' shape and dtype. A group whose rewards
    are all equal gets advantages 0.
    """
    ### BEGIN SOLUTION
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + 1e-4)).view(-1)
    ### END SOLUTION


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    beta: float = 0.04,
) -> torch.Tensor:
    """GRPO's loss, lesson 06's L: per token, the clipped surrogate and the ratio-weighted k3 KL; averaged
    over each response's real tokens, then over the responses.

    logprobs: (batch, resp) float, under the current policy, with gradient; old_logprobs: under the policy
    that sampled the tokens; ref_logprobs: under the frozen reference; advantages: (batch,) float, one per
    response; mask: (batch, resp), 1 on response tokens; clip_range, beta: the lesson's epsilon and beta.
    All but logprobs are constants, computed before the update. Return a 0-dim tensor that keeps the
    gradient of the logprobs.
    """
    ### BEGIN SOLUTION
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(1)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    log_ref_ratio = ref_logprobs - logprobs
    kl = (torch.exp(log_ref_ratio) - log_ref_ratio - 1) * ratio
    per_token = -surrogate + beta * kl
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    ### END SOLUTION


def grpo_update(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    """GRPO's optimisation of one rollout: several passes over it in minibatch steps. Return the statistics.

    policy: a module; ``policy(sequences, attention_mask, prompt_width, temperature)`` returns the (rows, resp)
        log-probabilities of the response tokens of the rows given, under the current policy, with gradient.
    optimizer, accelerator: as in lesson 02's ``sft_step`` (each minibatch's step follows its own gradient,
        clipped to ``config.max_grad_norm``).
    rollout: a ``rollouts.Rollout``, constants: ``sequences``, ``attention_mask`` (batch, seq) long;
        ``prompt_width`` an int; ``logprobs`` (the sampling policy's) and ``ref_logprobs`` (the reference's),
        (batch, resp) float; ``response_mask`` (batch, resp), 1 on response tokens.
    advantages: (batch,) float, a constant: one advantage per response (your ``group_advantages``).
    config: a ``GRPOConfig``: ``iterations`` (passes over the rollout), ``minibatch_size``, ``clip_range``,
        ``beta``, ``max_grad_norm``, ``temperature``.
    new_order(): a fresh random order of the rollout's rows, a (batch,) long tensor. Each pass visits every row
        once, in an order of its own; consecutive runs of ``minibatch_size`` rows of it form the minibatches.

    Under ``accelerate launch`` each process takes its share of a minibatch's rows and weights its loss:
        ``rows, counted = my_rows(accelerator, minibatch)`` and
        ``weight = share_weight(accelerator, (its number of rows) if counted else 0)``
    (in one process: the minibatch itself, weight 1). The loss of a minibatch is your ``grpo_loss``. After each
    optimizer step append ``minibatch_statistics(accelerator, weight, counted, logprobs, old_logprobs, mask,
    loss, config.clip_range)`` (of that minibatch's rows) to the list you return.
    """
    ### BEGIN SOLUTION
    mask = rollout.response_mask
    statistics = []
    for _ in range(config.iterations):
        for minibatch in new_order().split(config.minibatch_size):
            rows, counted = my_rows(accelerator, minibatch)
            logprobs = policy(
                rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, config.temperature
            )
            loss = grpo_loss(
                logprobs,
                rollout.logprobs[rows],
                rollout.ref_logprobs[rows],
                advantages[rows],
                mask[rows],
                config.clip_range,
                config.beta,
            )
            weight = share_weight(accelerator, len(rows) if counted else 0)
            optimizer.zero_grad()
            accelerator.backward(loss * weight)
            accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimizer.step()
            statistics.append(
                minibatch_statistics(
                    accelerator, weight, counted, logprobs, rollout.logprobs[rows], mask[rows], loss, config.clip_range
                )
            )
    return statistics
    ### END SOLUTION
