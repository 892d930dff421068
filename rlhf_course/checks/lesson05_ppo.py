"""Lesson 05's exercises: whitening, GAE, PPO's clipped policy and value losses.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import torch

from rlhf_course.algorithms.ppo import gae, ppo_policy_loss, ppo_value_loss, whiten
from rlhf_course.checks.base import Check, Exercise, Fail, close, diagnose
from rlhf_course.core.registry import ExerciseOutputError, expect_tensor


# --- whiten ------------------------------------------------------------------------------------------
def _wh_inputs():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, -50.0]])
    return x, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def _wh_value(fn):
    x, mask = _wh_inputs()
    got, want = fn(x, mask), whiten.reference(x, mask)
    if close(got, want, 1e-4):
        return
    m = mask.float()
    n = m.sum()
    mean = (x * m).sum() / n
    unbiased = (x - mean) / (((x - mean) ** 2 * m).sum() / (n - 1)).sqrt() * m
    mistakes = {
        "the padding entered the mean and variance: compute them over masked positions only": (x - x.mean())
        / x.std(unbiased=False)
        * m,
        "padding positions should come back as 0: multiply by the mask": (x - mean)
        * torch.rsqrt(((x - mean) ** 2 * m).sum() / n + 1e-8),
        "divide the squared deviations by the number of positions (the population variance), not n - 1": unbiased,
    }
    raise Fail(
        f"expected {[round(v, 3) for v in want[0].tolist()]}, got {[round(v, 3) for v in got[0].tolist()]}: "
        + diagnose(got, mistakes, "(x - masked mean) / sqrt(masked variance + 1e-8), 0 on padding", want=want)
    )


def _wh_shift(fn):
    x, mask = _wh_inputs()
    got, want = fn(x, mask, shift_mean=False), whiten.reference(x, mask, shift_mean=False)
    if close(got, want, 1e-4):
        return
    if close(got, whiten.reference(x, mask), 1e-4):
        raise Fail(
            "shift_mean=False was ignored: scale to unit variance but add the mean back "
            "(rewards keep their sign that way)"
        )
    raise Fail(f"with shift_mean=False expected {want[0].tolist()}, got {got[0].tolist()}")


# --- gae ------------------------------------------------------------------------------------------------
def _gae_inputs():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, -1.0, 0.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0], [0.1, -0.3, 9.0, 9.0]])  # 9.0 sits on padding: never used
    return rewards, values, torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def _gae_step_by_step(rewards, values, mask, gamma, lam, bootstrap_padding=False):
    """GAE written as the textbook backward recursion, one step at a time."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        running = 0.0
        for t in reversed(range(rewards.shape[1])):
            if not mask[b, t]:
                continue
            last = t + 1 >= rewards.shape[1] or not mask[b, t + 1]
            next_value = values[b, t + 1] if t + 1 < rewards.shape[1] and (bootstrap_padding or not last) else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv


def _gae_call(fn, *args):
    out = fn(*args)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise Fail("return a tuple (advantages, returns)")
    return out


def _gae_advantages(fn):
    rewards, values, mask = _gae_inputs()
    got, _ = _gae_call(fn, rewards, values, mask, 0.9, 0.8)
    want, _ = gae.reference(rewards, values, mask, 0.9, 0.8)
    if close(got * mask, want):
        return
    mistakes = {
        "lambda was ignored: A_t = delta_t + gamma * lam * A_(t+1)": _gae_step_by_step(rewards, values, mask, 0.9, 1.0),
        "you bootstrapped from the value on a padding position: after the last token V = 0": _gae_step_by_step(
            rewards, values, mask, 0.9, 0.8, bootstrap_padding=True
        ),
        "gamma was left out of delta: delta_t = r_t + gamma * V_(t+1) - V_t": _gae_step_by_step(
            rewards, values, mask, 1.0, 0.72
        ),
        "no bootstrapping: delta_t needs + gamma * V_(t+1)": _gae_step_by_step(rewards, values * 0, mask, 0.9, 0.8)
        - values * mask,
    }
    raise Fail(
        f"row 0 expected {[round(v, 3) for v in want[0].tolist()]}, got {[round(v, 3) for v in got[0].tolist()]}: "
        + diagnose(
            got * mask,
            mistakes,
            "accumulate backwards from the last response token: A_t = delta_t + gamma * lam * A_(t+1)",
            want=want,
        )
    )


def _gae_returns(fn):
    rewards, values, mask = _gae_inputs()
    adv, got = _gae_call(fn, rewards, values, mask, 0.9, 0.8)
    want = gae.reference(rewards, values, mask, 0.9, 0.8)[1]
    if close(got * mask, want):
        return
    if close(got * mask, adv * mask):
        raise Fail("the returns equal the advantages: returns = advantages + values (the value loss's target)")
    raise Fail(f"returns: expected {want[0].tolist()}, got {got[0].tolist()}")


def _gae_padding(fn):
    rewards, values, mask = _gae_inputs()
    adv, ret = _gae_call(fn, rewards, values, mask, 0.9, 0.8)
    if (adv * (1 - mask)).abs().sum() > 0 or (ret * (1 - mask)).abs().sum() > 0:
        raise Fail("padding positions should hold 0 in both advantages and returns")


# --- ppo_policy_loss ---------------------------------------------------------------------------------
def _pl_inputs():
    old = torch.zeros(2, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9], [1.5, 0.5, 1.0, 3.0]]))  # ratios inside and outside the clip
    adv = torch.tensor([[1.0, -1.0, 2.0, -2.0], [-1.0, 1.0, 0.5, 7.0]])
    return new, old, adv, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def _pl_value(fn):
    new, old, adv, mask = _pl_inputs()
    got, want = fn(new, old, adv, mask, 0.2), ppo_policy_loss.reference(new, old, adv, mask, 0.2)
    if close(got, want):
        return
    ratio, m = torch.exp(new - old), mask.float()
    clipped = ratio.clamp(0.8, 1.2)
    mean = lambda x: (x * m).sum() / m.sum()  # noqa: E731
    mistakes = {
        "min where the loss needs max: the objective takes the *pessimistic* (smaller) of the two terms, "
        "so the loss (its negative) takes the larger": mean(torch.minimum(-adv * ratio, -adv * clipped)),
        "no clipping: the clipped term keeps the new policy near the one that collected the data": mean(-adv * ratio),
        "the ratio is inverted: ratio = exp(logprobs - old_logprobs), new over old": mean(
            torch.maximum(-adv / ratio, -adv * (1 / ratio).clamp(0.8, 1.2))
        ),
        "wrong sign: minimising the loss must raise the probability of tokens with positive advantage": mean(
            torch.minimum(adv * ratio, adv * clipped)
        ),
        "padding was included: average over masked tokens only": torch.maximum(-adv * ratio, -adv * clipped).mean(),
    }
    raise Fail(
        f"expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(
            got, mistakes, "loss = masked mean of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))", want=want
        )
    )


def _pl_gradient(fn):
    new, old, adv, mask = _pl_inputs()
    new.requires_grad_(True)
    fn(new, old, adv, mask, 0.2).backward()
    grad = new.grad
    if grad is None:
        raise Fail("no gradient reached the new log-probabilities")
    # ratio 1.5 with A > 0 is past the clip: the clipped term is flat there, so that token's gradient is 0
    if grad[0, 0].abs() > 1e-8 or grad[0, 2].abs() < 1e-8:
        raise Fail(
            "tokens whose ratio is clipped (ratio 1.5, advantage > 0) must get no gradient, and tokens "
            "inside the range must: check that the clipped term uses clamp on the ratio"
        )


# --- ppo_value_loss -------------------------------------------------------------------------------------
def _vl_inputs():
    values = torch.tensor([[0.5, 1.0, -0.4, 2.0], [0.0, 0.9, 0.3, 5.0]])
    old = torch.tensor([[0.0, 0.95, 0.0, 0.0], [0.1, 0.0, 0.2, 0.0]])
    returns = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.3, 1.0, -1.0, 0.0]])
    return values, old, returns, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def _vl_value(fn):
    values, old, returns, mask = _vl_inputs()
    got, want = fn(values, old, returns, mask, 0.2), ppo_value_loss.reference(values, old, returns, mask, 0.2)
    if close(got, want):
        return
    m = mask.float()
    mean = lambda x: (x * m).sum() / m.sum()  # noqa: E731
    clipped = old + (values - old).clamp(-0.2, 0.2)
    plain, clip = (values - returns) ** 2, (clipped - returns) ** 2
    mistakes = {
        "no clipping: clip the new value to within clip_range of the rollout's value and take the larger "
        "of the two squared errors": 0.5 * mean(plain),
        "min where it needs max: the clipped value loss takes the larger squared error": 0.5
        * mean(torch.minimum(plain, clip)),
        "the 0.5 in front is missing": mean(torch.maximum(plain, clip)),
        "padding was included: average over masked tokens only": 0.5 * torch.maximum(plain, clip).mean(),
    }
    raise Fail(
        f"expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(got, mistakes, "0.5 * masked mean of max((V - R)^2, (V_clipped - R)^2)", want=want)
    )


def _vl_gradient(fn):
    values, old, returns, mask = _vl_inputs()
    values.requires_grad_(True)
    fn(values, old, returns, mask, 0.2).backward()
    if values.grad is None or values.grad.abs().sum() == 0:
        raise Fail("no gradient reached the values")


def _validate_whiten(out, x, mask, shift_mean=True):
    expect_tensor(out, shape=x.shape, device=x.device, what="the whitened values")


def _validate_gae(out, rewards, values, mask, gamma, lam):
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ExerciseOutputError("should return a tuple (advantages, returns)")
    for tensor, what in zip(out, ("advantages", "returns")):
        expect_tensor(tensor, shape=rewards.shape, device=rewards.device, what=what)


def _validate_scalar(out, *args, **kwargs):
    expect_tensor(out, shape=(), what="the loss")


EXERCISES = [
    Exercise(
        "whiten",
        "*",
        "masked whitening of advantages or rewards",
        _validate_whiten,
        [
            Check("uses masked statistics", _wh_value),
            Check("keeps the mean when asked", _wh_shift),
        ],
    ),
    Exercise(
        "gae",
        "***",
        "generalised advantage estimation",
        _validate_gae,
        [
            Check("advantages match a step-by-step computation", _gae_advantages),
            Check("returns are advantages plus values", _gae_returns),
            Check("padding holds zeros", _gae_padding),
        ],
    ),
    Exercise(
        "ppo_policy_loss",
        "**",
        "the clipped surrogate loss",
        _validate_scalar,
        [
            Check("matches the reference", _pl_value),
            Check("clipped tokens get no gradient", _pl_gradient),
        ],
    ),
    Exercise(
        "ppo_value_loss",
        "**",
        "the clipped value loss",
        _validate_scalar,
        [
            Check("matches the reference", _vl_value),
            Check("trains the values", _vl_gradient),
        ],
    ),
]
