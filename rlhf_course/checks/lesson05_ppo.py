"""Lesson 05's exercises: whitening, GAE, PPO's clipped policy and value losses, and PPO's update loop.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import dataclasses

import torch

from rlhf_course.algorithms.ppo import (
    PolicyWithValue,
    PPOConfig,
    gae,
    minibatch_statistics,
    ppo_policy_loss,
    ppo_update,
    ppo_value_loss,
    train_ppo,
    whiten,
)
from rlhf_course.algorithms.rollouts import Rollout
from rlhf_course.checks import loops
from rlhf_course.checks.base import Check, Exercise, Fail, close, diagnose, largest_difference
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
        "you whitened each row on its own: use the mean and variance of all real tokens of the batch": (
            x - (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        )
        * torch.rsqrt(
            ((x - (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)) ** 2 * m).sum(1, keepdim=True)
            / m.sum(1, keepdim=True)
            + 1e-8
        )
        * m,
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
    m = mask.float()
    mean = (x * m).sum() / m.sum()
    if close(got, x * m * torch.rsqrt(((x - mean) ** 2 * m).sum() / m.sum() + 1e-8), 1e-4):
        raise Fail(
            "with shift_mean=False you divided x itself by the standard deviation: scale the deviations from the "
            "mean (x - mean), then add the mean back"
        )
    raise Fail(f"with shift_mean=False expected {want[0].tolist()}, got {got[0].tolist()}")


def _wh_constant(fn):
    """Real tokens that are all equal (every reply got the same reward): the result is 0 there, not NaN."""
    x, mask = torch.full((2, 4), 0.5), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = fn(x, mask)
    if not torch.isfinite(got).all():
        raise Fail(
            f"on inputs whose real tokens are all equal you returned {got.tolist()}: the variance is 0, so add 1e-8 "
            "to it under the square root (the lesson's formula) and the result is 0, not NaN"
        )
    if not close(got, whiten.reference(x, mask), 1e-4):
        raise Fail(f"on inputs whose real tokens are all 0.5 expected 0 everywhere, got {got.tolist()}")


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


def _gae_forwards(rewards, values, mask, gamma, lam):
    """The recursion run in the wrong direction: A_t = delta_t + gamma * lam * A_(t-1)."""
    nxt = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(len(values), 1)], dim=1)
    delta = (rewards + gamma * nxt - values) * mask
    adv, running = torch.zeros_like(rewards), torch.zeros(len(rewards))
    for t in range(rewards.shape[1]):
        running = delta[:, t] + gamma * lam * running
        adv[:, t] = running
    return adv * mask


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
        "these are the one-step TD errors delta_t alone: accumulate A_t = delta_t + gamma * lam * A_(t+1)": (
            _gae_step_by_step(rewards, values, mask, 0.9, 0.0)
        ),
        "the recursion ran forwards from the first token: A_t depends on the *later* deltas, so run it from the "
        "last token back": _gae_forwards(rewards, values, mask, 0.9, 0.8),
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
    if not torch.isfinite(torch.as_tensor(got)).all():
        raise Fail(
            f"expected {want.item():.5f}, got {float(got)} from finite inputs: the ratio is exp(logprobs - "
            "old_logprobs); dividing log-probabilities (one of them here is 0) gives inf or NaN"
        )
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
        "you clipped the advantages: clip the ratio to [1 - eps, 1 + eps] and keep A as it is": mean(
            torch.maximum(-adv * ratio, -adv.clamp(-0.2, 0.2) * ratio)
        ),
        "you averaged each response's tokens first: take one mean over all response tokens of the batch": (
            (torch.maximum(-adv * ratio, -adv * clipped) * m).sum(1) / m.sum(1)
        ).mean(),
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
        "no clipping (clipping around the returns has the same effect): clip the new value to within clip_range "
        "of the rollout's value (old_values) and take the larger of the two squared errors": 0.5 * mean(plain),
        "absolute errors: the value loss takes squared errors": 0.5
        * mean(torch.maximum((values - returns).abs(), (clipped - returns).abs())),
        "you averaged each response's tokens first: take one mean over all response tokens of the batch": 0.5
        * ((torch.maximum(plain, clip) * m).sum(1) / m.sum(1)).mean(),
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


# --- ppo_update -----------------------------------------------------------------------------------------
def _ppo_rollout(policy) -> tuple[Rollout, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random rollout with the policy's own log-probabilities, nudged so that the ratios start away from 1;
    random advantages and returns."""
    gen = torch.Generator().manual_seed(1)
    rollout = loops.random_rollout(policy.lm.config.vocab_size, gen)
    mask = rollout.response_mask
    with torch.no_grad():
        logprobs, values = policy(rollout.sequences, rollout.attention_mask, rollout.prompt_width, 1.0)
    rollout = dataclasses.replace(
        rollout, logprobs=(logprobs + 0.3 * torch.randn(logprobs.shape, generator=gen)) * mask
    )
    advantages = torch.randn(mask.shape, generator=gen) * mask
    returns = torch.randn(mask.shape, generator=gen) * mask
    return rollout, values * mask, advantages, returns


def _ppo_setup(early_stop_kl):
    """Three epochs over minibatches of two rows, a step large enough that the KL grows from epoch to epoch."""

    def setup():
        policy = PolicyWithValue(loops.tiny_lm())
        rollout, old_values, advantages, returns = _ppo_rollout(policy)
        config = PPOConfig(ppo_epochs=3, minibatch_size=2, max_grad_norm=0.5, vf_coef=0.5, early_stop_kl=early_stop_kl)
        gen = torch.Generator().manual_seed(3)  # orders in which the second epoch's last minibatch is its calmest
        args = (policy, loops.sgd(policy, lr=1.0), loops.accelerator(), rollout, old_values, advantages, returns)
        return policy, [(args + (config, lambda: torch.randperm(loops.ROWS, generator=gen)), {})]

    return setup


def _ppo_threshold() -> float:
    """An early-stopping threshold between the reference's first and second epochs' mean KL: it stops after two."""
    statistics, _ = loops.run(ppo_update.reference, _ppo_setup(None)).outputs[0]
    per_epoch = torch.stack([s["approx_kl"] for s in statistics]).view(3, -1).mean(dim=1)
    return float(per_epoch[:2].mean())


def _ppo_variant(
    *, stop="epoch", orders="each epoch", vf_coef=True, clear=True, clip=True, minibatches=True, old_values=True
):
    """ppo_update with one of the plausible mistakes switched on."""

    def update(policy, optimizer, accelerator, rollout, old_v, advantages, returns, config, new_order):
        mask, statistics = rollout.response_mask, []
        order = new_order() if orders == "once" else None
        for _ in range(config.ppo_epochs):
            if orders == "each epoch":
                order = new_order()
            elif orders == "none":
                order = torch.arange(len(mask))
            epoch = []
            for mb in order.split(config.minibatch_size if minibatches else len(mask)):
                logprobs, values = policy(rollout.sequences[mb], rollout.attention_mask[mb], rollout.prompt_width, 1.0)
                pg = ppo_policy_loss.reference(logprobs, rollout.logprobs[mb], advantages[mb], mask[mb], 0.2)
                anchor = old_v[mb] if old_values else values.detach()
                vf = ppo_value_loss.reference(values, anchor, returns[mb], mask[mb], 0.2)
                if clear:
                    optimizer.zero_grad()
                accelerator.backward(pg + (config.vf_coef if vf_coef else 1.0) * vf)
                if clip:
                    accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
                epoch.append(
                    minibatch_statistics(accelerator, 1.0, logprobs, rollout.logprobs[mb], mask[mb], pg, vf, 0.2)
                )
                if stop == "minibatch" and epoch[-1]["approx_kl"] > config.early_stop_kl:
                    return statistics + epoch, True
            statistics += epoch
            kl = (
                epoch[-1]["approx_kl"]
                if stop == "last minibatch"
                else torch.stack([s["approx_kl"] for s in epoch]).mean()
            )
            if stop != "never" and kl > config.early_stop_kl:
                return statistics, True
        return statistics, False

    return update


_PPO_MISTAKES = {
    "the epochs went on after one whose mean approximate KL exceeded config.early_stop_kl: stop after that epoch": {
        "stop": "never"
    },
    "the update stopped inside an epoch, at the first minibatch over the limit: finish the epoch, then compare "
    "the mean approximate KL of its minibatches with config.early_stop_kl": {"stop": "minibatch"},
    "the early stop compared only the epoch's last minibatch: compare the mean over the epoch's minibatches": {
        "stop": "last minibatch"
    },
    "every epoch visited the rows in the same order: call new_order() once per epoch": {"orders": "once"},
    "the rows were never shuffled: each epoch takes its order from new_order()": {"orders": "none"},
    "the value loss entered the loss unweighted: the loss is pg_loss + config.vf_coef * vf_loss": {"vf_coef": False},
    "the gradients of the earlier minibatches were still in the parameters: clear them (optimizer.zero_grad()) "
    "before each backward pass": {"clear": False},
    "the gradient was not clipped before the step: call accelerator.clip_grad_norm_(policy.parameters(), "
    "config.max_grad_norm) between the backward pass and optimizer.step()": {"clip": False},
    "each step took the whole rollout: split each epoch's order into minibatches of config.minibatch_size rows": {
        "minibatches": False
    },
    "the value loss was clipped around the new values, not the rollout's: pass old_values[rows]": {"old_values": False},
}


def _ppo_parameters(fn):
    setup = _ppo_setup(_ppo_threshold())
    got, want = loops.run(fn, setup), loops.run(ppo_update.reference, setup)
    mistakes = {hint: _ppo_variant(**flags) for hint, flags in _PPO_MISTAKES.items()}
    loops.compare_parameters(got, want, mistakes, setup, "the update")


def _ppo_returns(fn):
    threshold = _ppo_threshold()
    for limit, what in ((threshold, "stops after its second epoch"), (None, "never stops (early_stop_kl=None)")):
        setup = _ppo_setup(limit)
        got, want = loops.run(fn, setup).outputs[0], loops.run(ppo_update.reference, setup).outputs[0]
        if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], list)):
            raise Fail(f"return (statistics, stopped): a list of minibatch_statistics and a bool, got {type(got)}")
        if bool(got[1]) != want[1]:
            raise Fail(f"on a rollout where the reference {what}, stopped was {got[1]!r}")
        if len(got[0]) != len(want[0]):
            raise Fail(
                f"on a rollout where the reference {what}, you returned {len(got[0])} minibatches' statistics; the "
                f"reference took {len(want[0])} steps (one minibatch_statistics after each)"
            )
        kl_got = torch.stack([torch.as_tensor(s["approx_kl"]) for s in got[0]])
        kl_want = torch.stack([s["approx_kl"] for s in want[0]])
        if not close(kl_got, kl_want, 1e-4):
            raise Fail(f"the minibatches' approx_kl differ from the reference's {largest_difference(kl_got, kl_want)}")


def _ppo_in_trainer(fn):
    """train_ppo for two updates of a tiny policy, with the function plugged in: the reference's statistics."""
    config = PPOConfig(updates=2, batch_size=4, minibatch_size=2, ppo_epochs=2, max_new_tokens=4, lr=1e-3)
    tasks = loops.tasks()

    def train():
        reference = loops.tiny_lm()
        history = train_ppo(
            PolicyWithValue(loops.tiny_lm()),
            reference,
            lambda t, r: [len(x) / 10 for x in r],
            loops.tokenizer(),
            tasks,
            config,
        ).history
        return torch.tensor([[row[k] for k in ("pg_loss", "vf_loss", "approx_kl")] for row in history])

    got, want = loops.trained_with("ppo_update", fn, _validate_update, train)
    if not close(got, want, 1e-4):
        raise Fail(
            f"train_ppo with your update logged other statistics (pg_loss, vf_loss, approx_kl per update): "
            f"{got.tolist()}, with the reference's {want.tolist()}"
        )


def _validate_update(out, *args, **kwargs):
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], list) and out[0]):
        raise ExerciseOutputError(
            "should return (statistics, stopped): a non-empty list of minibatch_statistics, a bool"
        )


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
            Check("returns 0 where every real token is equal", _wh_constant),
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
    Exercise(
        "ppo_update",
        "***",
        "PPO's update: epochs of shuffled minibatches, early stopping on the KL",
        _validate_update,
        [
            Check("one update leaves the reference's parameters", _ppo_parameters),
            Check("returns each step's statistics and whether it stopped", _ppo_returns),
            Check("train_ppo runs with it and logs the reference's statistics", _ppo_in_trainer),
        ],
    ),
]
