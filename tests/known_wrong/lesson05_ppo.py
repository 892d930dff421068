"""Plausible mistakes in lesson 05's exercises, one function each, with the words its check's hint must contain.

Each is written the way a student would write it, not derived from the reference, so a check that
recognises it is recognising the mistake and not a copy of its own code.
"""

import torch

from rlhf_course.algorithms.ppo import minibatch_statistics


# --- whiten ---------------------------------------------------------------------------------
def wh_includes_padding(x, mask, shift_mean=True):
    out = (x - x.mean()) / x.std(unbiased=False)
    return (out if shift_mean else out + x.mean()) * mask


def wh_padding_kept(x, mask, shift_mean=True):
    m = mask.float()
    mean = (x * m).sum() / m.sum()
    std = (((x - mean) ** 2 * m).sum() / m.sum()).sqrt()
    return (x - mean) / std if shift_mean else (x - mean) / std + mean


def wh_unbiased(x, mask, shift_mean=True):
    values = x[mask.bool()]
    out = (x - values.mean()) / values.std()
    return (out if shift_mean else out + values.mean()) * mask


def wh_ignores_shift(x, mask, shift_mean=True):
    values = x[mask.bool()]
    return (x - values.mean()) / values.std(unbiased=False) * mask


# --- gae --------------------------------------------------------------------------------------
def _gae_loop(rewards, values, mask, gamma, lam, use_padding=False, gamma_in_delta=True):
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        if t + 1 < rewards.shape[1]:
            nxt = values[:, t + 1] if use_padding else values[:, t + 1] * mask[:, t + 1]
        else:
            nxt = torch.zeros_like(running)
        delta = rewards[:, t] + (gamma if gamma_in_delta else 1.0) * nxt - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv


def gae_no_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, 1.0)
    return adv, (adv + values) * mask


def gae_bootstraps_padding(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam, use_padding=True)
    return adv, (adv + values) * mask


def gae_returns_are_advantages(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam)
    return adv, adv


def gae_gamma_missing_in_delta(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam, gamma_in_delta=False)
    return adv, (adv + values) * mask


def gae_padding_returns(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam)
    return adv, adv + values


# --- ppo_policy_loss --------------------------------------------------------------------------
def _masked(x, mask):
    return (x * mask).sum() / mask.sum()


def pl_min_not_max(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return _masked(torch.minimum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)


def pl_unclipped(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    return _masked(-advantages * (logprobs - old_logprobs).exp(), mask)


def pl_inverted_ratio(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (old_logprobs - logprobs).exp()
    return _masked(torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)


def pl_wrong_sign(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return _masked(torch.minimum(advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)


def pl_no_mask(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()


# --- ppo_value_loss ---------------------------------------------------------------------------
def vl_unclipped(values, old_values, returns, mask, clip_range=0.2):
    return 0.5 * _masked((values - returns) ** 2, mask)


def vl_min(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * _masked(torch.minimum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def vl_no_half(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return _masked(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def vl_no_mask(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()


def wh_in_place(x, mask, shift_mean=True):
    """Saves memory by whitening the caller's tensor itself."""
    m = mask.float()
    mean = (x * m).sum() / m.sum()
    std = ((((x - mean) ** 2) * m).sum() / m.sum() + 1e-8).sqrt()
    x -= mean
    x /= std
    if not shift_mean:
        x += mean
    return x * m


def gae_float64(rewards, values, mask, gamma=1.0, lam=0.95):
    """The backward recursion in double precision, for accuracy."""
    r, v, m = rewards.double(), values.double() * mask, mask.double()
    advantages = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=torch.float64)
    for t in reversed(range(r.shape[1])):
        next_value = v[:, t + 1] if t + 1 < r.shape[1] else torch.zeros_like(running)
        running = (r[:, t] + gamma * next_value - v[:, t] + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
    return advantages, (advantages + v) * m


def vl_squared_error_scaled(values, old_values, returns, mask, clip_range=0.2):
    """A mistake no hint names: a stray factor, found by where the output differs most."""
    return 0.55 * ((values - returns) ** 2 * mask).sum() / mask.sum()


# --- ppo_update -----------------------------------------------------------------------------
def _masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def _ppo_losses(policy, rollout, old_values, advantages, returns, config, rows, anchor_values=True):
    """(logprobs, policy loss, value loss) of some rows, written out from the lesson's formulas."""
    mask = rollout.response_mask[rows]
    logprobs, values = policy(
        rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, config.temperature
    )
    ratio = torch.exp(logprobs - rollout.logprobs[rows])
    adv = advantages[rows]
    pg = _masked_mean(
        torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - config.clip_range, 1 + config.clip_range)), mask
    )
    old = old_values[rows] if anchor_values else values.detach()
    clipped = old + (values - old).clamp(-config.clip_range_value, config.clip_range_value)
    vf = 0.5 * _masked_mean(torch.maximum((values - returns[rows]) ** 2, (clipped - returns[rows]) ** 2), mask)
    return logprobs, pg, vf, mask


def _ppo_step(policy, optimizer, accelerator, loss, max_grad_norm, clear=True, clip=True):
    if clear:
        optimizer.zero_grad()
    accelerator.backward(loss)
    if clip:
        accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()


def ppo_never_stops(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    stats = []
    for epoch in range(config.ppo_epochs):
        for mb in new_order().split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
    return stats, False


def ppo_stops_mid_epoch(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    stats = []
    for epoch in range(config.ppo_epochs):
        for mb in new_order().split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
            if config.early_stop_kl is not None and stats[-1]["approx_kl"] > config.early_stop_kl:
                return stats, True
    return stats, False


def ppo_last_minibatch_kl(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    stats = []
    for epoch in range(config.ppo_epochs):
        for mb in new_order().split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
        if config.early_stop_kl is not None and stats[-1]["approx_kl"] > config.early_stop_kl:
            return stats, True
    return stats, False


def ppo_one_order(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    stats, order = [], new_order()
    for epoch in range(config.ppo_epochs):
        kls = []
        for mb in order.split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
            kls.append(stats[-1]["approx_kl"])
        if config.early_stop_kl is not None and torch.stack(kls).mean() > config.early_stop_kl:
            return stats, True
    return stats, False


def ppo_no_shuffle(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    stats = []
    for epoch in range(config.ppo_epochs):
        kls = []
        for mb in torch.arange(len(rollout.sequences)).split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
            kls.append(stats[-1]["approx_kl"])
        if config.early_stop_kl is not None and torch.stack(kls).mean() > config.early_stop_kl:
            return stats, True
    return stats, False


def ppo_value_loss_unweighted(
    policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order
):
    stats = []
    for epoch in range(config.ppo_epochs):
        kls = []
        for mb in new_order().split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + vf, config.max_grad_norm)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
            kls.append(stats[-1]["approx_kl"])
        if config.early_stop_kl is not None and torch.stack(kls).mean() > config.early_stop_kl:
            return stats, True
    return stats, False


def ppo_no_zero_grad(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    stats = []
    for epoch in range(config.ppo_epochs):
        kls = []
        for mb in new_order().split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm, clear=False)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
            kls.append(stats[-1]["approx_kl"])
        if config.early_stop_kl is not None and torch.stack(kls).mean() > config.early_stop_kl:
            return stats, True
    return stats, False


def ppo_no_clip(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    stats = []
    for epoch in range(config.ppo_epochs):
        kls = []
        for mb in new_order().split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, mb)
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm, clip=False)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
            kls.append(stats[-1]["approx_kl"])
        if config.early_stop_kl is not None and torch.stack(kls).mean() > config.early_stop_kl:
            return stats, True
    return stats, False


def ppo_whole_rollout(policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order):
    """One step per epoch on every row: the minibatches were forgotten."""
    stats = []
    for epoch in range(config.ppo_epochs):
        rows = new_order()
        logprobs, pg, vf, mask = _ppo_losses(policy, rollout, old_values, advantages, returns, config, rows)
        _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm)
        stats.append(
            minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[rows], mask, pg, vf, config.clip_range)
        )
        if config.early_stop_kl is not None and stats[-1]["approx_kl"] > config.early_stop_kl:
            return stats, True
    return stats, False


def ppo_value_clip_around_new(
    policy, optimizer, accelerator, rollout, old_values, advantages, returns, config, new_order
):
    stats = []
    for epoch in range(config.ppo_epochs):
        kls = []
        for mb in new_order().split(config.minibatch_size):
            logprobs, pg, vf, mask = _ppo_losses(
                policy, rollout, old_values, advantages, returns, config, mb, anchor_values=False
            )
            _ppo_step(policy, optimizer, accelerator, pg + config.vf_coef * vf, config.max_grad_norm)
            stats.append(
                minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask, pg, vf, config.clip_range)
            )
            kls.append(stats[-1]["approx_kl"])
        if config.early_stop_kl is not None and torch.stack(kls).mean() > config.early_stop_kl:
            return stats, True
    return stats, False


def wh_no_epsilon(x, mask, shift_mean=True):
    m = mask.float()
    n = m.sum()
    mean = (x * m).sum() / n
    std = torch.sqrt(((x - mean) ** 2 * m).sum() / n)
    out = (x - mean) / std
    return (out if shift_mean else out + mean) * m


def wh_per_row(x, mask, shift_mean=True):
    m = mask.float()
    n = m.sum(1, keepdim=True)
    mean = (x * m).sum(1, keepdim=True) / n
    var = ((x - mean) ** 2 * m).sum(1, keepdim=True) / n
    out = (x - mean) / torch.sqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * m


def wh_scale_only(x, mask, shift_mean=True):
    """shift_mean=False: divides x by the standard deviation without centring it."""
    m = mask.float()
    n = m.sum()
    mean = (x * m).sum() / n
    std = torch.sqrt(((x - mean) ** 2 * m).sum() / n + 1e-8)
    return ((x - mean) / std if shift_mean else x / std) * m


def gae_forward(rewards, values, mask, gamma=1.0, lam=0.95):
    """Runs the recursion from the first token forwards."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    T = rewards.shape[1]
    for t in range(T):
        nxt = values[:, t + 1] * mask[:, t + 1] if t + 1 < T else torch.zeros(rewards.shape[0])
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask


def gae_td_only(rewards, values, mask, gamma=1.0, lam=0.95):
    """Uses the one-step TD error as the advantage."""
    nxt = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(values.shape[0], 1)], dim=1)
    adv = (rewards + gamma * nxt - values) * mask
    return adv, (adv + values) * mask


def pl_clips_advantages(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    clipped_adv = advantages.clamp(-clip_range, clip_range)
    losses = torch.maximum(-advantages * ratio, -clipped_adv * ratio)
    return (losses * mask).sum() / mask.sum()


def pl_ratio_of_logs(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = logprobs / old_logprobs
    losses = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (losses * mask).sum() / mask.sum()


def pl_sequence_mean(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    losses = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return ((losses * mask).sum(1) / mask.sum(1)).mean()


def vl_clipped_around_returns(values, old_values, returns, mask, clip_range=0.2):
    clipped = returns + (values - returns).clamp(-clip_range, clip_range)
    losses = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (losses * mask).sum() / mask.sum()


def vl_absolute_error(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    losses = torch.maximum((values - returns).abs(), (clipped - returns).abs())
    return 0.5 * (losses * mask).sum() / mask.sum()


def vl_sequence_mean(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    losses = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * ((losses * mask).sum(1) / mask.sum(1)).mean()


WRONG = {
    "whiten": [
        (wh_includes_padding, "padding entered the mean"),
        (wh_padding_kept, "should come back as 0"),
        (wh_unbiased, "population variance"),
        (wh_ignores_shift, "shift_mean=False was ignored"),
        (wh_in_place, "changed its input x in place"),
        (wh_no_epsilon, "add 1e-8"),
        (wh_per_row, "each row on its own"),
        (wh_scale_only, "divided x itself"),
    ],
    "gae": [
        (gae_no_lambda, "lambda was ignored"),
        (gae_bootstraps_padding, "padding position"),
        (gae_returns_are_advantages, "returns equal the advantages"),
        (gae_gamma_missing_in_delta, "gamma was left out"),
        (gae_padding_returns, "padding positions should hold 0"),
        (gae_float64, "your output is torch.float64, but the inputs are torch.float32"),
        (gae_forward, "ran forwards"),
        (gae_td_only, "one-step TD errors"),
    ],
    "ppo_policy_loss": [
        (pl_min_not_max, "min where the loss needs max"),
        (pl_unclipped, "no clipping"),
        (pl_inverted_ratio, "ratio is inverted"),
        (pl_wrong_sign, "wrong sign"),
        (pl_no_mask, "padding was included"),
        (pl_clips_advantages, "clipped the advantages"),
        (pl_ratio_of_logs, "dividing log-probabilities"),
        (pl_sequence_mean, "averaged each response's tokens first"),
    ],
    "ppo_value_loss": [
        (vl_unclipped, "no clipping"),
        (vl_min, "min where it needs max"),
        (vl_no_half, "0.5 in front"),
        (vl_no_mask, "padding was included"),
        (vl_squared_error_scaled, "no mistake we know of gives this output; it differs most (expected"),
        (vl_clipped_around_returns, "clipping around the returns"),
        (vl_absolute_error, "absolute errors"),
        (vl_sequence_mean, "averaged each response's tokens first"),
    ],
    "ppo_update": [
        (ppo_never_stops, "stop after that epoch"),
        (ppo_stops_mid_epoch, "stopped inside an epoch"),
        (ppo_last_minibatch_kl, "only the epoch's last minibatch"),
        (ppo_one_order, "same order"),
        (ppo_no_shuffle, "never shuffled"),
        (ppo_value_loss_unweighted, "config.vf_coef"),
        (ppo_no_zero_grad, "zero_grad"),
        (ppo_no_clip, "not clipped before the step"),
        (ppo_whole_rollout, "whole rollout"),
        (ppo_value_clip_around_new, "not the rollout's"),
    ],
}
