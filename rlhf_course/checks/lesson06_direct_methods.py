"""Lesson 06's exercises: a response's log-probability, the DPO and IPO losses, one DPO step, GRPO's advantages
and loss.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import torch

from rlhf_course.algorithms.dpo import (
    DPOConfig,
    dpo_loss,
    dpo_step,
    encode_pairs,
    logprobs_of,
    reference_logprobs,
    sequence_logprobs,
    train_dpo,
)
from rlhf_course.algorithms.grpo import group_advantages, grpo_loss
from rlhf_course.algorithms.sft import collate
from rlhf_course.checks import loops
from rlhf_course.checks.base import Check, Exercise, Fail, close, diagnose, largest_difference
from rlhf_course.core.language_model import IGNORE_INDEX
from rlhf_course.core.registry import ExerciseOutputError, expect_tensor


# --- sequence_logprobs ----------------------------------------------------------------------------------
def _sl_inputs():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 6, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 5, 1, -100], [-100, 2, 4, 6, 0, 2]])  # prompt, response, padding
    return logits, labels


def _sl_variant(logits, labels, *, shift=True, log_softmax=True, mean=False, mask=True):
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    scores = torch.log_softmax(logits, dim=-1) if log_softmax else logits
    keep = (labels != IGNORE_INDEX).float() if mask else torch.ones(labels.shape)
    taken = scores.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return taken.sum(1) / keep.sum(1) if mean else taken.sum(1)


def _sl_value(fn):
    logits, labels = _sl_inputs()
    got, want = fn(logits, labels), sequence_logprobs.reference(logits, labels)
    if close(got, want):
        return
    mistakes = {
        "no shift: the logits at position t predict the token at t + 1 (compare logits[:, :-1] with "
        "labels[:, 1:])": _sl_variant(logits, labels, shift=False),
        "raw logits were gathered: take log_softmax over the vocabulary first": _sl_variant(
            logits, labels, log_softmax=False
        ),
        "averaged over tokens: a sequence's log-probability is the *sum* of its tokens' log-probabilities": _sl_variant(
            logits, labels, mean=True
        ),
        "prompt and padding were counted: keep only positions whose label is not -100": _sl_variant(
            logits, labels, mask=False
        ),
    }
    raise Fail(
        f"expected {want.tolist()}, got {got.tolist() if hasattr(got, 'tolist') else got}: "
        + diagnose(
            got, mistakes, "sum of log_softmax(logits[:, :-1]) at labels[:, 1:], where labels != -100", want=want
        )
    )


def _sl_gradient(fn):
    logits, labels = _sl_inputs()
    logits.requires_grad_(True)
    fn(logits, labels).sum().backward()
    if logits.grad is None or logits.grad.abs().sum() == 0:
        raise Fail("no gradient reached the logits: the policy is trained through these log-probabilities")


# --- dpo_loss ---------------------------------------------------------------------------------------------
def _dpo_inputs():
    return (
        torch.tensor([-3.0, -5.0, -2.0]),
        torch.tensor([-4.0, -4.0, -6.0]),
        torch.tensor([-3.5, -4.0, -2.5]),
        torch.tensor([-4.0, -4.5, -5.0]),
    )


def _dpo_value(fn):
    pc, pr, rc, rr = _dpo_inputs()
    got, want = fn(pc, pr, rc, rr, 0.5), dpo_loss.reference(pc, pr, rc, rr, 0.5)
    if close(got, want):
        return
    margin = (pc - rc) - (pr - rr)
    nll = lambda x: -torch.nn.functional.logsigmoid(x)  # noqa: E731
    mistakes = {
        "beta is missing: the loss is -log sigmoid(beta * margin)": nll(margin).mean(),
        "the reference was ignored: the implicit reward is log pi - log pi_ref": nll(0.5 * (pc - pr)).mean(),
        "chosen and rejected are swapped: the chosen response's log-ratio comes first": nll(-0.5 * margin).mean(),
        "summed over the batch: take the mean": nll(0.5 * margin).sum(),
        "the log is missing: -log sigmoid, not -sigmoid": (-torch.sigmoid(0.5 * margin)).mean(),
    }
    raise Fail(
        f"expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(
            got, mistakes, "margin = (pc - rc) - (pr - rr); loss = mean of -log sigmoid(beta * margin)", want=want
        )
    )


def _dpo_ipo(fn):
    pc, pr, rc, rr = _dpo_inputs()
    got, want = fn(pc, pr, rc, rr, 0.5, "ipo"), dpo_loss.reference(pc, pr, rc, rr, 0.5, "ipo")
    if close(got, want):
        return
    margin = (pc - rc) - (pr - rr)
    mistakes = {
        "kind='ipo' was ignored: IPO is the squared loss (margin - 1 / (2 beta))^2": dpo_loss.reference(
            pc, pr, rc, rr, 0.5
        ),
        "the IPO target is 1 / (2 * beta), not 1 / beta": ((margin - 1 / 0.5) ** 2).mean(),
        "IPO's margin is not multiplied by beta: (margin - 1 / (2 beta))^2": ((0.5 * margin - 1) ** 2).mean(),
    }
    raise Fail(
        f"IPO: expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(got, mistakes, "loss = mean of (margin - 1 / (2 * beta)) ** 2", want=want)
    )


def _dpo_stable(fn):
    pc, pr = torch.tensor([0.0, -900.0]), torch.tensor([-900.0, 0.0])
    got = fn(pc, pr, torch.zeros(2), torch.zeros(2), 1.0)
    if not torch.isfinite(torch.as_tensor(got)):
        raise Fail("the loss is not finite for a margin of 900: use F.logsigmoid, not torch.log(torch.sigmoid(...))")


def _dpo_unknown(fn):
    pc, pr, rc, rr = _dpo_inputs()
    try:
        fn(pc, pr, rc, rr, 0.5, "kto")
    except ValueError:
        return
    raise Fail("an unknown kind should raise ValueError, not fall back silently to a loss")


# --- group_advantages -------------------------------------------------------------------------------------
def _ga_inputs():
    return torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # three groups of 4


def _ga_value(fn):
    rewards = _ga_inputs()
    got, want = fn(rewards, 4), group_advantages.reference(rewards, 4)
    if close(got, want, 1e-4):
        return
    grouped = rewards.view(-1, 4)
    centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    strided = rewards.view(4, -1)  # groups read with the wrong stride
    mistakes = {
        "population standard deviation: use the unbiased one (torch.std's default, divide by n - 1)": centred
        / (grouped.std(1, unbiased=False).repeat_interleave(4) + 1e-4),
        "statistics of the whole batch: normalise within each group": (rewards - rewards.mean())
        / (rewards.std() + 1e-4),
        "not divided by the group's standard deviation": centred,
        "the groups were read with the wrong stride: group g is rewards[g * G:(g + 1) * G]": (
            (strided - strided.mean(0)) / (strided.std(0) + 1e-4)
        ).reshape(-1),
    }
    raise Fail(
        f"expected {[round(v, 3) for v in want.tolist()]}, got {[round(v, 3) for v in got.tolist()]}: "
        + diagnose(got, mistakes, "(r - mean of its group) / (std of its group + 1e-4)", want=want)
    )


def _ga_uniform(fn):
    got = fn(torch.full((8,), 0.5), 4)
    if not torch.all(torch.isfinite(got)) or got.abs().max() > 1e-6:
        raise Fail("a group whose rewards are all equal must get advantage 0 (not nan): add 1e-4 to the std")


# --- grpo_loss --------------------------------------------------------------------------------------------
def _gl_inputs():
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9], [1.5, 0.7, 1.0, 3.0]]))
    old = torch.zeros(2, 4)
    ref = torch.tensor([[0.2, -0.1, 0.3, 0.0], [-0.2, 0.1, 0.0, 0.5]])
    return new, old, ref, torch.tensor([1.0, -2.0]), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def _gl_variant(new, old, ref, adv, mask, *, use_min=True, clip=True, kl="k3_ratio", beta=0.1, per_response=True):
    ratio = torch.exp(new - old)
    a = adv.unsqueeze(1)
    clipped = ratio.clamp(0.8, 1.2) if clip else ratio
    surrogate = torch.min(ratio * a, clipped * a) if use_min else torch.max(ratio * a, clipped * a)
    log_r = ref - new
    k3 = torch.exp(log_r) - log_r - 1
    penalty = {"k3_ratio": k3 * ratio, "k3": k3, "k1": -log_r}[kl]
    per_token = (-surrogate + beta * penalty) * mask
    if per_response:
        return (per_token.sum(1) / mask.sum(1)).mean()
    return per_token.sum() / mask.sum()


def _gl_value(fn):
    new, old, ref, adv, mask = _gl_inputs()
    got, want = fn(new, old, ref, adv, mask, 0.2, 0.1), grpo_loss.reference(new, old, ref, adv, mask, 0.2, 0.1)
    if close(got, want):
        return
    args = (new, old, ref, adv, mask)
    mistakes = {
        "max where the objective needs min: the surrogate takes the pessimistic of the two terms": _gl_variant(
            *args, use_min=False
        ),
        "no clipping: clamp the ratio to [1 - eps, 1 + eps] in the second term": _gl_variant(*args, clip=False),
        "the KL estimate is not weighted by the ratio (the tokens came from the old policy)": _gl_variant(
            *args, kl="k3"
        ),
        "the plain log-ratio (k1) was used for the KL: use k3 = exp(ref - logp) - (ref - logp) - 1": _gl_variant(
            *args, kl="k1"
        ),
        "the KL term is missing (or beta was ignored)": _gl_variant(*args, beta=0.0),
        "averaged over all tokens of the batch at once: average within each response first, then over "
        "responses": _gl_variant(*args, per_response=False),
        "padding was included: average over each response's real tokens": _gl_variant(
            new, old, ref, adv, torch.ones(2, 4)
        ),
    }
    raise Fail(
        f"expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(
            got,
            mistakes,
            "per token -min(ratio*A, clip(ratio)*A) + beta * k3 * ratio; mean per response, then over responses",
            want=want,
        )
    )


def _gl_gradient(fn):
    new, old, ref, adv, mask = _gl_inputs()
    new.requires_grad_(True)
    fn(new, old, ref, adv, mask, 0.2, 0.0).backward()
    if new.grad is None:
        raise Fail("no gradient reached the new log-probabilities")
    # token (0, 0): ratio 1.5 and A > 0 is past the clip, so with beta = 0 its gradient is 0
    if new.grad[0, 0].abs() > 1e-8 or new.grad[0, 2].abs() < 1e-8:
        raise Fail(
            "tokens whose ratio is clipped (ratio 1.5, advantage > 0) must get no gradient, and tokens "
            "inside the range must: clamp the ratio in the second term"
        )


def _validate_sequence_logprobs(out, logits, labels):
    expect_tensor(out, shape=(labels.shape[0],), device=logits.device, what="the sequence log-probabilities")


def _validate_preference_loss(out, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, kind="dpo"):
    expect_tensor(out, shape=(), what="the DPO loss")


def _validate_group_advantages(out, rewards, group_size):
    expect_tensor(out, shape=rewards.shape, device=rewards.device, what="the group advantages")


def _validate_grpo_loss(out, *args, **kwargs):
    expect_tensor(out, shape=(), what="the GRPO loss")


# --- dpo_step -------------------------------------------------------------------------------------------
def _pairs() -> list[dict]:
    """Preference rows (TRL's format): each demonstration's reply chosen over the next one's."""
    rows = loops.demonstrations()
    return [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": rows[(i + 1) % len(rows)]["completion"]}
        for i, r in enumerate(rows)
    ]


def _ds_setup():
    """Three steps: DPO on four pairs, clipped (the gradient's norm is far above 0.05); DPO on the next four,
    weighted by 0.5 and not clipped (clipping would hide the weight); IPO on the first four."""
    tok, rows = loops.tokenizer(), _pairs()
    policy, reference = loops.tiny_lm(0), loops.tiny_lm(1)
    optimizer, accelerator = loops.sgd(policy), loops.accelerator()
    calls = []
    for first, loss_type, weight, norm in ((0, "dpo", 1.0, 0.05), (4, "dpo", 0.5, 1e3), (0, "ipo", 1.0, 1e3)):
        encoded = encode_pairs(tok, rows[first : first + 4])  # chosen replies first, then rejected
        ref = reference_logprobs(reference, encoded, tok.pad_token_id, length_normalised=loss_type == "ipo")
        batch = collate(encoded, tok.pad_token_id)
        args = (policy, optimizer, accelerator, batch, ref[:4], ref[4:], 0.5, loss_type)
        calls.append((args, {"weight": weight, "max_grad_norm": norm}))
    return policy, calls


def _ds_loss(policy, batch, ref_chosen, ref_rejected, beta, loss_type, swap=False, normalise=True):
    logps = logprobs_of(policy, batch, length_normalised=loss_type == "ipo" and normalise)
    chosen, rejected = logps.split(len(ref_chosen))
    if swap:
        chosen, rejected = rejected, chosen
    return dpo_loss.reference(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)


def _ds_swapped(*args):
    return _ds_loss(*args, swap=True)


def _ds_ipo_sums(*args):
    return _ds_loss(*args, normalise=False)


_DS_MISTAKES = {
    **{hint: loops.step_variant(_ds_loss, **flags) for hint, flags in loops.STEP_MISTAKES.items()},
    "chosen and rejected were swapped: the batch holds every chosen reply first, then every rejected one": (
        loops.step_variant(_ds_swapped)
    ),
    "for IPO the policy's log-probabilities were sums: divide each by its number of reply tokens, as the "
    "reference's were": loops.step_variant(_ds_ipo_sums),
}


def _ds_parameters(fn):
    got, want = loops.run(fn, _ds_setup), loops.run(dpo_step.reference, _ds_setup)
    loops.compare_parameters(got, want, _DS_MISTAKES, _ds_setup, "three steps")


def _ds_returns(fn):
    got, want = loops.run(fn, _ds_setup), loops.run(dpo_step.reference, _ds_setup)
    for g, w, (_, kwargs) in zip(got.outputs, want.outputs, _ds_setup()[1]):
        if not (isinstance(g, tuple) and len(g) == 3):
            raise Fail(f"return (loss, chosen, rejected), got {type(g).__name__}")
        loops.loss_returned(g[0], w[0], kwargs["weight"])
        for name, a, b in zip(("chosen", "rejected"), g[1:], w[1:]):
            if not isinstance(a, torch.Tensor) or a.requires_grad:
                raise Fail(f"return the {name} log-probabilities as a tensor without gradient (detach it)")
            if not close(a, b, 1e-4):
                raise Fail(f"the returned {name} log-probabilities differ {largest_difference(a, b)}")


def _ds_in_trainer(fn):
    """train_dpo on eight pairs of a tiny policy, with the function plugged in: the reference's statistics."""
    tok, rows = loops.tokenizer(), _pairs()

    def train():
        history = train_dpo(loops.tiny_lm(0), loops.tiny_lm(1), tok, rows, DPOConfig(batch_size=4, lr=1e-2)).history
        return torch.tensor([[row["loss"], row["chosen_logratio"], row["rejected_logratio"]] for row in history])

    got, want = loops.trained_with("dpo_step", fn, _validate_dpo_step, train)
    if not close(got, want, 1e-4):
        raise Fail(
            "train_dpo with your step logged other statistics (loss, chosen_logratio, rejected_logratio per step): "
            f"{got.tolist()}, with the reference's {want.tolist()}"
        )


def _validate_dpo_step(out, *args, **kwargs):
    if not (isinstance(out, tuple) and len(out) == 3):
        raise ExerciseOutputError("should return a tuple (loss, chosen, rejected)")
    expect_tensor(out[0], shape=(), what="the returned loss")


EXERCISES = [
    Exercise(
        "sequence_logprobs",
        "*",
        "log-probability of a response",
        _validate_sequence_logprobs,
        [
            Check("sums the shifted, masked log-probabilities", _sl_value),
            Check("keeps the gradient", _sl_gradient),
        ],
    ),
    Exercise(
        "dpo_loss",
        "**",
        "the DPO and IPO losses",
        _validate_preference_loss,
        [
            Check("DPO matches the reference", _dpo_value),
            Check("IPO matches the reference", _dpo_ipo),
            Check("is stable for large margins", _dpo_stable),
            Check("rejects an unknown kind", _dpo_unknown),
        ],
    ),
    Exercise(
        "dpo_step",
        "**",
        "one DPO (or IPO) step on a batch of pairs",
        _validate_dpo_step,
        [
            Check("three steps leave the reference's parameters", _ds_parameters),
            Check("returns the unweighted loss and the policy's log-probabilities", _ds_returns),
            Check("train_dpo runs with it and logs the reference's statistics", _ds_in_trainer),
        ],
    ),
    Exercise(
        "group_advantages",
        "*",
        "GRPO's group-normalised advantages",
        _validate_group_advantages,
        [
            Check("normalises within each group", _ga_value),
            Check("gives 0 to a group with equal rewards", _ga_uniform),
        ],
    ),
    Exercise(
        "grpo_loss",
        "**",
        "GRPO's clipped loss with a k3 KL term",
        _validate_grpo_loss,
        [
            Check("matches the reference", _gl_value),
            Check("clipped tokens get no gradient", _gl_gradient),
        ],
    ),
]
