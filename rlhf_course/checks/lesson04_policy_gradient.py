"""Lesson 04's exercises: log-probabilities of sampled tokens, the KL-penalized rewards, the REINFORCE loss, and
one REINFORCE step.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import torch

from rlhf_course.algorithms.policy_gradient import PGConfig, reinforce_loss, reinforce_step, train_pg
from rlhf_course.algorithms.rollouts import kl_penalized_rewards, response_logprobs, token_logprobs
from rlhf_course.checks import loops
from rlhf_course.checks.base import Check, Exercise, Fail, close, diagnose
from rlhf_course.core import distributed
from rlhf_course.core.registry import ExerciseOutputError, expect_tensor


# --- token_logprobs ------------------------------------------------------------------------------
def _tl_inputs():
    gen = torch.Generator().manual_seed(4)
    return torch.randn(2, 4, 6, generator=gen), torch.randint(6, (2, 4), generator=gen)


def _tl_shape(fn):
    logits, tokens = _tl_inputs()
    out = fn(logits, tokens, 1.0)
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 4, 1):
        raise Fail(
            "expected one log-probability per token, shape (2, 4), got (2, 4, 1): squeeze the last dimension "
            "that gather kept (.squeeze(-1))"
        )
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 4):
        raise Fail(
            f"expected one log-probability per token, shape (2, 4), got {getattr(out, 'shape', type(out).__name__)}; "
            "the logits are already aligned with the tokens (no shift needed here): gather along the vocabulary"
        )


def _tl_value(fn):
    logits, tokens = _tl_inputs()
    got, want = fn(logits, tokens, 1.0), token_logprobs.reference(logits, tokens, 1.0)
    if close(got, want):
        return
    picked = lambda x: x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    mistakes = {
        "you returned probabilities: take log_softmax": picked(torch.softmax(logits, -1)),
        "you returned raw logits: normalise with log_softmax over the vocabulary": picked(logits),
        "log_softmax over the wrong dimension: normalise over the vocabulary (the last one)": picked(
            torch.log_softmax(logits, 1)
        ),
        "you took the log-probability of the most likely token: take the one of the sampled token (tokens)": (
            torch.log_softmax(logits, -1).max(-1).values
        ),
    }
    raise Fail(
        f"expected {want[0].tolist()}, got {got[0].tolist()}: "
        + diagnose(got, mistakes, "gather log_softmax(logits)[b, t, tokens[b, t]]", want=want)
    )


def _tl_extreme_logits(fn):
    """Logits 200 apart, as a trained model's can be: softmax of the unlikely token underflows to 0."""
    logits = torch.tensor([[[0.0, 200.0, -5.0], [100.0, 0.0, 0.0]]])  # (1, 2, 3)
    tokens = torch.tensor([[0, 1]])  # the unlikely token at both steps
    got, want = fn(logits, tokens, 1.0), token_logprobs.reference(logits, tokens, 1.0)
    if close(got, want, 1e-4):
        return
    if not torch.isfinite(got).all():
        raise Fail(
            f"expected {want[0].tolist()}, got {got[0].tolist()}: log(softmax(x)) underflows to log(0) = -inf "
            "when one logit is far above the others; log_softmax computes it without forming the probability"
        )
    raise Fail(
        f"with logits 200 apart expected {want[0].tolist()}, got {got[0].tolist()}: "
        + diagnose(got, {}, "gather log_softmax(logits)[b, t, tokens[b, t]]", want=want)
    )


def _tl_temperature(fn):
    logits, tokens = _tl_inputs()
    got, want = fn(logits, tokens, 0.7), token_logprobs.reference(logits, tokens, 0.7)
    if close(got, want):
        return
    mistakes = {
        "the temperature was ignored: the samples came from softmax(logits / temperature), so the "
        "log-probabilities must too": token_logprobs.reference(logits, tokens, 1.0),
        "you multiplied by the temperature: divide the logits by it": token_logprobs.reference(
            logits * 0.7, tokens, 1.0
        ),
        "you divided the log-probabilities by the temperature: divide the logits, then take log_softmax": (
            token_logprobs.reference(logits, tokens, 1.0) / 0.7
        ),
    }
    raise Fail(
        diagnose(got, mistakes, "with temperature 0.7 the result differs from log_softmax(logits / 0.7)", want=want)
    )


def _tl_gradient(fn):
    logits, tokens = _tl_inputs()
    logits.requires_grad_(True)
    if not fn(logits, tokens, 1.0).requires_grad:
        raise Fail("the log-probabilities have no gradient: the policy is trained through them")


# --- kl_penalized_rewards ----------------------------------------------------------------------
def _klr_inputs():
    gen = torch.Generator().manual_seed(5)
    logprobs, ref = -torch.rand(3, 5, generator=gen), -torch.rand(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return torch.tensor([2.0, -1.0, 0.5]), logprobs, ref, mask


def _klr_value(fn):
    scores, logprobs, ref, mask = _klr_inputs()
    got = fn(scores, logprobs, ref, mask, 0.1)
    want = kl_penalized_rewards.reference(scores, logprobs, ref, mask, 0.1)
    if close(got, want):
        return
    kl = -0.1 * (logprobs - ref)
    rows = torch.arange(3)

    def with_score_at(columns, base):
        out = base.clone()
        out[rows, columns] += scores
        return out

    mistakes = {
        "the score went on the last column, which is padding for shorter responses: put it on each response's last "
        "real token": with_score_at(torch.tensor([4, 4, 4]), kl * mask),
        "the score went on the first padding position (old TRL PPO did this): the last real token is at "
        "(number of response tokens) - 1": with_score_at(torch.tensor([4, 3, 1]), kl * mask),
        "the KL penalty has the wrong sign: it is -kl_coef * (log pi - log pi_ref)": with_score_at(
            torch.tensor([4, 2, 0]), -kl * mask
        ),
        "the padding got a KL penalty: multiply it by the response mask": with_score_at(torch.tensor([4, 2, 0]), kl),
        "the score was added to every token: only the last token gets it": kl * mask + scores.unsqueeze(1) * mask,
        "the KL penalty is missing": with_score_at(torch.tensor([4, 2, 0]), torch.zeros_like(kl)),
        "kl_coef was left out: the penalty is -kl_coef * (log pi - log pi_ref)": with_score_at(
            torch.tensor([4, 2, 0]), kl * mask / 0.1
        ),
        "the whole response's KL penalty went on its last token: each token gets its own": with_score_at(
            torch.tensor([4, 2, 0]),
            torch.zeros_like(kl).index_put((rows, torch.tensor([4, 2, 0])), (kl * mask).sum(1)),
        ),
    }
    raise Fail(
        f"row 1 expected {[round(v, 3) for v in want[1].tolist()]}, got "
        f"{[round(v, 3) for v in got[1].tolist()]}: "
        + diagnose(
            got,
            mistakes,
            "rewards = -kl_coef * (logprobs - ref_logprobs) * mask, plus the score at the last real token",
            want=want,
        )
    )


def _klr_not_in_place(fn):
    # every check's call fails when the function writes into its input (exercises.guarded); the PPO ratio
    # needs the rollout's log-probabilities unchanged
    fn(*_klr_inputs(), 0.1)


# --- reinforce_loss --------------------------------------------------------------------------------
def _rl_inputs():
    gen = torch.Generator().manual_seed(6)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    return -torch.rand(3, 4, generator=gen), torch.randn(3, 4, generator=gen), mask


def _rl_value(fn):
    logprobs, adv, mask = _rl_inputs()
    got, want = fn(logprobs, adv, mask), reinforce_loss.reference(logprobs, adv, mask)
    if close(got, want):
        return
    per_token = logprobs * adv
    mistakes = {
        "wrong sign: minimising the loss must *raise* the log-probability of tokens with positive advantage": (
            per_token * mask
        )
        .sum(1)
        .mean(),
        "averaged over tokens: sum each response's terms, then average over responses "
        "(the policy gradient is a sum over the steps of an episode)": -(per_token * mask).sum() / mask.sum(),
        "padding was included: multiply by the mask": -per_token.sum(1).mean(),
        "summed over the batch: average over responses": -(per_token * mask).sum(),
        "each response's sum was divided by its length: sum each response's terms, then average over responses": -(
            (per_token * mask).sum(1) / mask.sum(1)
        ).mean(),
        "you weighted probabilities (exp of the log-probabilities): the policy gradient weights log-probabilities": -(
            logprobs.exp() * adv * mask
        )
        .sum(1)
        .mean(),
        "each response's summed log-probability was multiplied by its summed advantage: weight each token's "
        "log-probability by its own advantage": -((logprobs * mask).sum(1) * (adv * mask).sum(1)).mean(),
    }
    raise Fail(
        f"expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(got, mistakes, "loss = -mean over responses of sum_t logprob_t * advantage_t * mask_t", want=want)
    )


def _rl_detached(fn):
    logprobs, adv, mask = _rl_inputs()
    logprobs.requires_grad_(True)
    adv.requires_grad_(True)
    fn(logprobs, adv, mask).backward()
    if logprobs.grad is None or logprobs.grad.abs().sum() == 0:
        raise Fail("no gradient reached the log-probabilities")
    if adv.grad is not None and adv.grad.abs().sum() > 0:
        raise Fail("gradient flowed into the advantages: they are weights, not something to optimise; use .detach()")


def _validate_reinforce(out, logprobs, advantages, mask):
    expect_tensor(out, shape=(), what="the loss")


def _validate_logprobs(out, logits, tokens, temperature=1.0):
    expect_tensor(
        out,
        shape=tokens.shape,
        dtype=logits.dtype if logits.is_floating_point() else None,
        device=logits.device,
        what="the log-probabilities",
    )


def _validate_kl_rewards(out, scores, logprobs, ref_logprobs, response_mask, kl_coef):
    expect_tensor(out, shape=logprobs.shape, device=logprobs.device, what="the per-token rewards")


# --- reinforce_step ------------------------------------------------------------------------------
TEMPERATURE = 0.7  # not 1, so that log-probabilities taken at temperature 1 differ


def _rs_setup():
    """Two steps on a random rollout: all rows, clipped (the gradient's norm is far above 0.05); then three rows,
    weighted by 0.5 and not clipped (clipping would hide the weight)."""
    policy = distributed.Call(response_logprobs, loops.tiny_lm())
    gen = torch.Generator().manual_seed(5)
    rollout = loops.random_rollout(policy.model.config.vocab_size, gen)
    advantages = torch.randn(rollout.response_mask.shape, generator=gen)  # nonzero on padding: the mask must act
    optimizer, accelerator = loops.sgd(policy), loops.accelerator()
    calls = [
        (
            (policy, optimizer, accelerator, rollout, advantages, rows),
            {"weight": w, "max_grad_norm": n, "temperature": TEMPERATURE},
        )
        for rows, w, n in (([0, 1, 2, 3, 4, 5], 1.0, 0.05), ([1, 3, 5], 0.5, 1e3))
    ]
    return policy.model, calls


def _rs_loss(policy, rollout, advantages, rows, temperature=TEMPERATURE):
    logprobs = policy(rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, temperature)
    return reinforce_loss.reference(logprobs, advantages[rows], rollout.response_mask[rows])


def _rs_every_row(policy, rollout, advantages, rows, temperature):
    return _rs_loss(policy, rollout, advantages, list(range(len(rollout.sequences))), temperature)


def _rs_first_advantages(policy, rollout, advantages, rows, temperature):
    logprobs = policy(rollout.sequences[rows], rollout.attention_mask[rows], rollout.prompt_width, temperature)
    return reinforce_loss.reference(logprobs, advantages[: len(rows)], rollout.response_mask[rows])


def _rs_temperature_one(policy, rollout, advantages, rows, temperature):
    return _rs_loss(policy, rollout, advantages, rows, temperature=1.0)


_RS_MISTAKES = {
    **{hint: loops.step_variant(_rs_loss, **flags) for hint, flags in loops.STEP_MISTAKES.items()},
    "the step trained on every row of the rollout: take only the rows given (rollout.sequences[rows], ...)": (
        loops.step_variant(_rs_every_row)
    ),
    "the advantages were not those of the rows trained on: index them with rows too (advantages[rows])": (
        loops.step_variant(_rs_first_advantages)
    ),
    "the log-probabilities were taken at temperature 1: pass temperature to the policy (the tokens were sampled "
    "at it)": loops.step_variant(_rs_temperature_one),
}


def _rs_parameters(fn):
    got, want = loops.run(fn, _rs_setup), loops.run(reinforce_step.reference, _rs_setup)
    loops.compare_parameters(got, want, _RS_MISTAKES, _rs_setup, "two steps")


def _rs_returns(fn):
    got, want = loops.run(fn, _rs_setup), loops.run(reinforce_step.reference, _rs_setup)
    for g, w, (_, kwargs) in zip(got.outputs, want.outputs, _rs_setup()[1]):
        if not (isinstance(g, tuple) and len(g) == 2):
            raise Fail(f"return (loss, grad_norm), got {type(g).__name__}")
        loops.loss_returned(g[0], w[0], kwargs["weight"])
        if not close(torch.as_tensor(g[1]).detach(), w[1], 1e-4):
            raise Fail(
                f"grad_norm is {float(g[1]):.6g}, expected {float(w[1]):.6g}: return what clip_grad_norm_ returns "
                "(the total norm before clipping)"
            )


def _rs_in_trainer(fn):
    """train_pg for two updates of a tiny policy, with the function plugged in: the reference's statistics."""
    config = PGConfig(updates=2, batch_size=4, max_new_tokens=4, lr=1e-3)
    tasks = loops.tasks()

    def train():
        history = train_pg(
            loops.tiny_lm(), loops.tiny_lm(), lambda t, r: [len(x) / 10 for x in r], loops.tokenizer(), tasks, config
        ).history
        return torch.tensor([[row["loss"], row["grad_norm"], row["score"]] for row in history])

    got, want = loops.trained_with("reinforce_step", fn, _validate_reinforce_step, train)
    if not close(got, want, 1e-4):
        raise Fail(
            f"train_pg with your step logged other statistics (loss, grad_norm, score per update): {got.tolist()}, "
            f"with the reference's {want.tolist()}"
        )


def _validate_reinforce_step(out, *args, **kwargs):
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ExerciseOutputError("should return a tuple (loss, grad_norm)")
    expect_tensor(out[0], shape=(), what="the returned loss")


EXERCISES = [
    Exercise(
        "token_logprobs",
        "*",
        "log-probabilities of the sampled tokens",
        _validate_logprobs,
        [
            Check("returns one value per token", _tl_shape),
            Check("matches the reference at temperature 1", _tl_value),
            Check("stays finite for logits far apart", _tl_extreme_logits),
            Check("divides the logits by the temperature", _tl_temperature),
            Check("keeps the gradient", _tl_gradient),
        ],
    ),
    Exercise(
        "kl_penalized_rewards",
        "**",
        "per-token KL penalty plus the score",
        _validate_kl_rewards,
        [
            Check("matches the reference", _klr_value),
            Check("leaves its inputs unchanged", _klr_not_in_place),
        ],
    ),
    Exercise(
        "reinforce_loss",
        "*",
        "the REINFORCE loss with a mask",
        _validate_reinforce,
        [
            Check("matches the reference", _rl_value),
            Check("trains the log-probabilities, not the advantages", _rl_detached),
        ],
    ),
    Exercise(
        "reinforce_step",
        "**",
        "one REINFORCE step on rows of a rollout",
        _validate_reinforce_step,
        [
            Check("two steps leave the reference's parameters", _rs_parameters),
            Check("returns the unweighted loss and the norm before clipping", _rs_returns),
            Check("train_pg runs with it and logs the reference's statistics", _rs_in_trainer),
        ],
    ),
]
