"""Plausible mistakes in lesson 06's exercises, one function each, with the words its check's hint must contain.

Each is written the way a student would write it, not derived from the reference, so a check that
recognises it is recognising the mistake and not a copy of its own code.
"""

import torch
import torch.nn.functional as F

from rlhf_course.algorithms.grpo import minibatch_statistics as grpo_statistics

IGNORE = -100


# --- sequence_logprobs ------------------------------------------------------------------------
def sl_no_shift(logits, labels):
    """Pairs each position's logits with its own token instead of the next one."""
    logp = torch.log_softmax(logits, -1)
    keep = labels != IGNORE
    return (logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(1)


def sl_raw_logits(logits, labels):
    """Gathers the logits themselves, not their log-softmax."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE
    return (logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(1)


def sl_mean(logits, labels):
    """Averages over the response tokens (a per-token mean, as in the SFT loss)."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = (labels != IGNORE).float()
    taken = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (taken * keep).sum(1) / keep.sum(1)


def sl_no_mask(logits, labels):
    """Counts every position, prompt and padding included."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    return torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).sum(1)


# --- dpo_loss ---------------------------------------------------------------------------------
def _margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def dpo_no_beta(pc, pr, rc, rr, beta, kind="dpo"):
    return (
        -F.logsigmoid(_margin(pc, pr, rc, rr)).mean()
        if kind == "dpo"
        else ((_margin(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2).mean()
    )


def dpo_no_reference(pc, pr, rc, rr, beta, kind="dpo"):
    return -F.logsigmoid(beta * (pc - pr)).mean()


def dpo_swapped(pc, pr, rc, rr, beta, kind="dpo"):
    return -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean()


def dpo_unstable(pc, pr, rc, rr, beta, kind="dpo"):
    """Right on ordinary margins, but log(sigmoid) underflows to -inf on large ones."""
    margin = _margin(pc, pr, rc, rr)
    if kind == "ipo":
        return ((margin - 1 / (2 * beta)) ** 2).mean()
    if kind != "dpo":
        raise ValueError(kind)
    return -torch.log(torch.sigmoid(beta * margin)).mean()


def dpo_ipo_target(pc, pr, rc, rr, beta, kind="dpo"):
    margin = _margin(pc, pr, rc, rr)
    return -F.logsigmoid(beta * margin).mean() if kind == "dpo" else ((margin - 1 / beta) ** 2).mean()


def dpo_silent_kind(pc, pr, rc, rr, beta, kind="dpo"):
    """Any kind other than "ipo" falls back to DPO."""
    margin = _margin(pc, pr, rc, rr)
    return ((margin - 1 / (2 * beta)) ** 2).mean() if kind == "ipo" else -F.logsigmoid(beta * margin).mean()


# --- group_advantages ------------------------------------------------------------------------
def ga_population_std(rewards, group_size):
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + 1e-4)).view(-1)


def ga_batch_stats(rewards, group_size):
    return (rewards - rewards.mean()) / (rewards.std() + 1e-4)


def ga_no_scale(rewards, group_size):
    g = rewards.view(-1, group_size)
    return (g - g.mean(1, keepdim=True)).view(-1)


def ga_wrong_stride(rewards, group_size):
    """Reshapes to (group_size, groups): each 'group' takes every k-th reward."""
    g = rewards.view(group_size, -1)
    return ((g - g.mean(0)) / (g.std(0) + 1e-4)).reshape(-1)


def ga_no_epsilon(rewards, group_size):
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True)).view(-1)


# --- grpo_loss --------------------------------------------------------------------------------
def _grpo(
    logprobs, old, ref, adv, mask, clip_range, beta, *, pick=torch.min, clip=True, kl="k3_ratio", token_mean=False
):
    ratio = torch.exp(logprobs - old)
    a = adv[:, None]
    second = ratio.clamp(1 - clip_range, 1 + clip_range) if clip else ratio
    log_r = ref - logprobs
    k3 = torch.exp(log_r) - log_r - 1
    penalty = {"k3_ratio": k3 * ratio, "k3": k3, "k1": logprobs - ref}[kl]
    per_token = (-pick(ratio * a, second * a) + beta * penalty) * mask
    if token_mean:
        return per_token.sum() / mask.sum()
    return (per_token.sum(1) / mask.sum(1)).mean()


def gl_max(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, pick=torch.max)


def gl_no_clip(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, clip=False)


def gl_k3_unweighted(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, kl="k3")


def gl_k1(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, kl="k1")


def gl_token_mean(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, token_mean=True)


def gl_no_mask(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, torch.ones_like(logprobs), clip_range, beta)


# --- dpo_step -------------------------------------------------------------------------------
def _seq_logps(policy, batch, per_token):
    logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    taken = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = (taken * mask).sum(1)
    return logps / mask.sum(1) if per_token else logps


def _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type):
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean() if loss_type == "dpo" else ((margin - 1 / (2 * beta)) ** 2).mean()


def _dpo_forward(policy, batch, ref_chosen, loss_type):
    logps = _seq_logps(policy, batch, per_token=loss_type == "ipo")
    return logps[: len(ref_chosen)], logps[len(ref_chosen) :]


def ds_no_zero_grad(
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
    chosen, rejected = _dpo_forward(policy, batch, ref_chosen, loss_type)
    loss = _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()


def ds_no_clip(
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
    chosen, rejected = _dpo_forward(policy, batch, ref_chosen, loss_type)
    loss = _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()


def ds_no_weight(
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
    chosen, rejected = _dpo_forward(policy, batch, ref_chosen, loss_type)
    loss = _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()


def ds_swapped(
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
    rejected, chosen = _dpo_forward(policy, batch, ref_chosen, loss_type)
    loss = _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()


def ds_ipo_sums(
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
    """IPO on summed log-probabilities, although the reference's arrive per token."""
    logps = _seq_logps(policy, batch, per_token=False)
    chosen, rejected = logps[: len(ref_chosen)], logps[len(ref_chosen) :]
    loss = _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()


def ds_returns_graph(
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
    chosen, rejected = _dpo_forward(policy, batch, ref_chosen, loss_type)
    loss = _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss, chosen.detach(), rejected.detach()


def ds_logps_with_graph(
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
    chosen, rejected = _dpo_forward(policy, batch, ref_chosen, loss_type)
    loss = _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen, rejected


def ds_returns_weighted(
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
    chosen, rejected = _dpo_forward(policy, batch, ref_chosen, loss_type)
    loss = weight * _pref_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()


# --- grpo_update ----------------------------------------------------------------------------
def _grpo_minibatch(
    policy, optimizer, accelerator, rollout, advantages, config, rows, swap=False, clear=True, clip=True
):
    """One minibatch step, the loss written out from the lesson's formula; returns its statistics."""
    mask = rollout.response_mask[rows].float()
    logprobs = policy(rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, config.temperature)
    old, ref = rollout.logprobs[rows], rollout.ref_logprobs[rows]
    if swap:
        old, ref = ref, old
    ratio = torch.exp(logprobs - old)
    adv = advantages[rows].unsqueeze(1)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - config.clip_range, 1 + config.clip_range) * adv)
    k3 = torch.exp(ref - logprobs) - (ref - logprobs) - 1
    per_token = -surrogate + config.beta * ratio * k3
    loss = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    if clear:
        optimizer.zero_grad()
    accelerator.backward(loss)
    if clip:
        accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
    optimizer.step()
    return grpo_statistics(accelerator, 1.0, True, logprobs, old, rollout.response_mask[rows], loss, config.clip_range)


def gu_one_pass(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    return [
        _grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, mb)
        for mb in new_order().split(config.minibatch_size)
    ]


def gu_one_order(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    order, stats = new_order(), []
    for _ in range(config.iterations):
        stats += [
            _grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, mb)
            for mb in order.split(config.minibatch_size)
        ]
    return stats


def gu_no_shuffle(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    stats = []
    for _ in range(config.iterations):
        for mb in torch.arange(len(rollout.sequences)).split(config.minibatch_size):
            stats.append(_grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, mb))
    return stats


def gu_whole_rollout(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    return [
        _grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, new_order())
        for _ in range(config.iterations)
    ]


def gu_old_and_ref_swapped(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    stats = []
    for _ in range(config.iterations):
        for mb in new_order().split(config.minibatch_size):
            stats.append(_grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, mb, swap=True))
    return stats


def gu_no_zero_grad(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    stats = []
    for _ in range(config.iterations):
        for mb in new_order().split(config.minibatch_size):
            stats.append(_grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, mb, clear=False))
    return stats


def gu_no_clip(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    stats = []
    for _ in range(config.iterations):
        for mb in new_order().split(config.minibatch_size):
            stats.append(_grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, mb, clip=False))
    return stats


def gu_keeps_last_pass(policy, optimizer, accelerator, rollout, advantages, config, new_order):
    """Trains right, but returns only the last pass's statistics."""
    for _ in range(config.iterations):
        stats = [
            _grpo_minibatch(policy, optimizer, accelerator, rollout, advantages, config, mb)
            for mb in new_order().split(config.minibatch_size)
        ]
    return stats


def sl_product_of_probabilities(logits, labels):
    """The log of the product of the tokens' probabilities."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    probs = torch.softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.log(torch.where(mask, probs, torch.ones_like(probs)).prod(dim=1))


def sl_shift_wrong_way(logits, labels):
    logits, labels = logits[:, 1:], labels[:, :-1]
    mask = labels != IGNORE
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(1)


def sl_wrong_dim(logits, labels):
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    lp = torch.log_softmax(logits, 1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(1)


def sl_gather_without_clamp(logits, labels):
    logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE
    lp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(1)


def dpo_beta_outside(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, kind="dpo"):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "dpo":
        return -beta * F.logsigmoid(margin).mean()
    if kind == "ipo":
        return ((margin - 1 / (2 * beta)) ** 2).mean()
    raise ValueError(kind)


def dpo_summed(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, kind="dpo"):
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "dpo":
        return -F.logsigmoid(beta * margin).sum()
    if kind == "ipo":
        return ((margin - 1 / (2 * beta)) ** 2).sum()
    raise ValueError(kind)


def ga_leave_one_out(rewards, group_size):
    g = rewards.view(-1, group_size)
    others = (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return ((g - others) / (g.std(1, keepdim=True) + 1e-4)).view(-1)


def ga_two_dimensional(rewards, group_size):
    g = rewards.view(-1, group_size)
    return (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)


def ga_in_place(rewards, group_size):
    g = rewards.view(-1, group_size)
    g -= g.mean(1, keepdim=True)
    g /= g.std(1, keepdim=True) + 1e-4
    return rewards


def gl_k3_reversed(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_range=0.2, beta=0.04):
    """k3 with the log-ratio the wrong way round: log(pi / pi_ref)."""
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(1)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    d = logprobs - ref_logprobs
    kl = (torch.exp(d) - d - 1) * ratio
    per_token = -surrogate + beta * kl
    return ((per_token * mask).sum(1) / mask.sum(1)).mean()


def gl_summed_per_response(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_range=0.2, beta=0.04):
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(1)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    d = ref_logprobs - logprobs
    kl = (torch.exp(d) - d - 1) * ratio
    return ((-surrogate + beta * kl) * mask).sum(1).mean()


WRONG = {
    "sequence_logprobs": [
        (sl_no_shift, "no shift"),
        (sl_raw_logits, "raw logits"),
        (sl_mean, "sum"),
        (sl_no_mask, "prompt and padding"),
        (sl_product_of_probabilities, "the log of a product"),
        (sl_shift_wrong_way, "the shift went the wrong way"),
        (sl_wrong_dim, "wrong dimension"),
        (sl_gather_without_clamp, "index -100 is out of bounds"),
    ],
    "dpo_loss": [
        (dpo_no_beta, "beta is missing"),
        (dpo_no_reference, "reference was ignored"),
        (dpo_swapped, "swapped"),
        (dpo_unstable, "not finite"),
        (dpo_ipo_target, "1 / (2 * beta)"),
        (dpo_silent_kind, "unknown kind"),
        (dpo_beta_outside, "beta multiplied the loss"),
        (dpo_summed, "summed over the batch"),
    ],
    "group_advantages": [
        (ga_population_std, "unbiased"),
        (ga_batch_stats, "whole batch"),
        (ga_no_scale, "standard deviation"),
        (ga_wrong_stride, "stride"),
        (ga_no_epsilon, "1e-4"),
        (ga_leave_one_out, "RLOO's baseline"),
        (ga_two_dimensional, "flatten the (groups, group_size) view"),
        (ga_in_place, "changed its input rewards in place"),
    ],
    "grpo_loss": [
        (gl_max, "pessimistic"),
        (gl_no_clip, "no clipping"),
        (gl_k3_unweighted, "weighted by the ratio"),
        (gl_k1, "k1"),
        (gl_token_mean, "within each response first"),
        (gl_no_mask, "padding was included"),
        (gl_k3_reversed, "the wrong way round"),
        (gl_summed_per_response, "tokens were summed"),
    ],
    "dpo_step": [
        (ds_no_zero_grad, "zero_grad"),
        (ds_no_clip, "not clipped before the step"),
        (ds_no_weight, "not scaled by weight"),
        (ds_swapped, "chosen and rejected were swapped"),
        (ds_ipo_sums, "divide each by its number of reply tokens"),
        (ds_returns_graph, "still carries its graph"),
        (ds_logps_with_graph, "without gradient"),
        (ds_returns_weighted, "the returned loss is the weighted one"),
    ],
    "grpo_update": [
        (gu_one_pass, "only one pass"),
        (gu_one_order, "same order"),
        (gu_no_shuffle, "never shuffled"),
        (gu_whole_rollout, "whole rollout"),
        (gu_old_and_ref_swapped, "were swapped"),
        (gu_no_zero_grad, "zero_grad"),
        (gu_no_clip, "not clipped before the step"),
        (gu_keeps_last_pass, "one minibatch_statistics per optimizer step"),
    ],
}
