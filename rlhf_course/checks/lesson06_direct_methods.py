"""Lesson 06's exercises: a response's log-probability, the DPO and IPO losses, one DPO step, GRPO's advantages
and loss.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import dataclasses

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
from rlhf_course.algorithms.grpo import (
    GRPOConfig,
    group_advantages,
    grpo_loss,
    grpo_update,
    minibatch_statistics,
    train_grpo,
)
from rlhf_course.algorithms.rollouts import response_logprobs
from rlhf_course.algorithms.sft import collate
from rlhf_course.checks import loops
from rlhf_course.checks.base import Check, Exercise, Fail, close, diagnose, largest_difference
from rlhf_course.core import distributed
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
        "the shift went the wrong way: the logits at position t predict the label at t + 1 (logits[:, :-1] with "
        "labels[:, 1:], not logits[:, 1:] with labels[:, :-1])": _sl_picked(logits[:, 1:], labels[:, :-1], -1),
        "log_softmax over the wrong dimension: normalise over the vocabulary (the last one)": _sl_picked(
            logits[:, :-1], labels[:, 1:], 1
        ),
    }
    raise Fail(
        f"expected {want.tolist()}, got {got.tolist() if hasattr(got, 'tolist') else got}: "
        + diagnose(
            got, mistakes, "sum of log_softmax(logits[:, :-1]) at labels[:, 1:], where labels != -100", want=want
        )
    )


def _sl_picked(logits, labels, dim):
    """Summed log-probabilities of ``labels`` (where not -100) under log_softmax over ``dim``."""
    taken = torch.log_softmax(logits, dim).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (taken * (labels != IGNORE_INDEX)).sum(1)


def _sl_long(fn):
    """A 400-token response, each token with probability about 1/7: the product of the probabilities is about
    1e-338, below the smallest float32, while the sum of the log-probabilities is an ordinary number."""
    gen = torch.Generator().manual_seed(8)
    logits, labels = torch.randn(1, 401, 7, generator=gen) * 0.1, torch.randint(7, (1, 401), generator=gen)
    labels[0, 0] = IGNORE_INDEX
    got, want = fn(logits, labels), sequence_logprobs.reference(logits, labels)
    if not torch.isfinite(torch.as_tensor(got)).all():
        raise Fail(
            f"on a 400-token response expected {want.item():.1f}, got {float(got)}: the product of 400 probabilities "
            "underflows to 0 (its log to -inf); sum the log-probabilities instead of taking the log of a product"
        )
    if not close(got, want, 1e-3):
        raise Fail(f"on a 400-token response expected {want.item():.3f}, got {float(got):.3f}")


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
        "beta multiplied the loss: it scales the margin inside the sigmoid, -log sigmoid(beta * margin)": 0.5
        * nll(margin).mean(),
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
        "summed over the batch: take the mean": ((margin - 1) ** 2).sum(),
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
        "each reward was compared with the mean of the *others* in its group (RLOO's baseline): GRPO subtracts "
        "the whole group's mean": (
            (grouped - (grouped.sum(1, keepdim=True) - grouped) / 3) / (grouped.std(1, keepdim=True) + 1e-4)
        ).view(-1),
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
    k3_reversed = torch.exp(-log_r) + log_r - 1
    penalty = {"k3_ratio": k3 * ratio, "k3": k3, "k1": -log_r, "k3 reversed": k3_reversed * ratio}[kl]
    per_token = (-surrogate + beta * penalty) * mask
    if per_response == "sum":
        return per_token.sum(1).mean()
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
        "k3's log-ratio is the wrong way round: it is log(pi_ref / pi) = ref_logprobs - logprobs": _gl_variant(
            *args, kl="k3 reversed"
        ),
        "each response's tokens were summed: average them (divide by its number of real tokens)": _gl_variant(
            *args, per_response="sum"
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
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.numel() == rewards.numel():
        raise ExerciseOutputError(
            f"the group advantages should have shape {tuple(rewards.shape)}, got {tuple(out.shape)}: flatten the "
            "(groups, group_size) view back to one advantage per response (.view(-1))"
        )
    expect_tensor(out, shape=rewards.shape, device=rewards.device, what="the group advantages")


def _validate_grpo_loss(out, *args, **kwargs):
    expect_tensor(out, shape=(), what="the GRPO loss")


# --- dpo_step -------------------------------------------------------------------------------------------
def _ds_setup():
    """Three steps: DPO on four pairs, clipped (the gradient's norm is far above 0.05); DPO on the next four,
    weighted by 0.5 and not clipped (clipping would hide the weight); IPO on the first four."""
    tok, rows = loops.tokenizer(), loops.preference_rows()
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
    tok, rows = loops.tokenizer(), loops.preference_rows()

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


# --- grpo_update ----------------------------------------------------------------------------------------
def _gu_setup():
    """Two passes over a random rollout in minibatches of two rows; the sampling policy's and the reference's
    log-probabilities both differ from the policy's own, and beta is large enough that the KL term matters."""
    policy = distributed.Call(response_logprobs, loops.tiny_lm())
    gen = torch.Generator().manual_seed(7)
    rollout = loops.random_rollout(policy.model.config.vocab_size, gen)
    mask = rollout.response_mask
    with torch.no_grad():
        own = policy(rollout.sequences, rollout.attention_mask, rollout.prompt_width, 1.0)
    rollout = dataclasses.replace(
        rollout,
        logprobs=(own + 0.3 * torch.randn(own.shape, generator=gen)) * mask,
        ref_logprobs=(own + 0.5 * torch.randn(own.shape, generator=gen)) * mask,
    )
    advantages = torch.randn(loops.ROWS, generator=gen)
    config = GRPOConfig(iterations=2, minibatch_size=2, beta=0.5, max_grad_norm=0.5)
    order = torch.Generator().manual_seed(8)
    args = (policy, loops.sgd(policy, lr=1.0), loops.accelerator(), rollout, advantages, config)
    return policy.model, [(args + (lambda: torch.randperm(loops.ROWS, generator=order),), {})]


def _gu_variant(*, orders="each pass", passes=True, clear=True, clip=True, minibatches=True, swap_old_ref=False):
    """grpo_update with one of the plausible mistakes switched on."""

    def update(policy, optimizer, accelerator, rollout, advantages, config, new_order):
        mask, statistics = rollout.response_mask, []
        order = new_order() if orders == "once" else None
        for _ in range(config.iterations if passes else 1):
            if orders == "each pass":
                order = new_order()
            elif orders == "none":
                order = torch.arange(len(mask))
            for mb in order.split(config.minibatch_size if minibatches else len(mask)):
                logprobs = policy(rollout.sequences[mb], rollout.attention_mask[mb], rollout.prompt_width, 1.0)
                old, ref = rollout.logprobs[mb], rollout.ref_logprobs[mb]
                if swap_old_ref:
                    old, ref = ref, old
                loss = grpo_loss.reference(logprobs, old, ref, advantages[mb], mask[mb], 0.2, config.beta)
                if clear:
                    optimizer.zero_grad()
                accelerator.backward(loss)
                if clip:
                    accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
                statistics.append(minibatch_statistics(accelerator, 1.0, True, logprobs, old, mask[mb], loss, 0.2))
        return statistics

    return update


_GU_MISTAKES = {
    "only one pass over the rollout: make config.iterations passes": {"passes": False},
    "every pass visited the rows in the same order: call new_order() once per pass": {"orders": "once"},
    "the rows were never shuffled: each pass takes its order from new_order()": {"orders": "none"},
    "each step took the whole rollout: split each pass's order into minibatches of config.minibatch_size rows": {
        "minibatches": False
    },
    "the sampling policy's and the reference's log-probabilities were swapped: old_logprobs is rollout.logprobs "
    "(the ratio's denominator), ref_logprobs is rollout.ref_logprobs (the KL's)": {"swap_old_ref": True},
    "the gradients of the earlier minibatches were still in the parameters: clear them (optimizer.zero_grad()) "
    "before each backward pass": {"clear": False},
    "the gradient was not clipped before the step: call accelerator.clip_grad_norm_(policy.parameters(), "
    "config.max_grad_norm) between the backward pass and optimizer.step()": {"clip": False},
}


def _gu_parameters(fn):
    got, want = loops.run(fn, _gu_setup), loops.run(grpo_update.reference, _gu_setup)
    mistakes = {hint: _gu_variant(**flags) for hint, flags in _GU_MISTAKES.items()}
    loops.compare_parameters(got, want, mistakes, _gu_setup, "the update")


def _gu_returns(fn):
    got, want = loops.run(fn, _gu_setup).outputs[0], loops.run(grpo_update.reference, _gu_setup).outputs[0]
    if not isinstance(got, list) or len(got) != len(want):
        raise Fail(
            f"return a list with one minibatch_statistics per optimizer step: the reference took {len(want)} steps, "
            f"you returned {len(got) if isinstance(got, list) else type(got).__name__}"
        )
    losses_got = torch.stack([torch.as_tensor(s["loss"]) for s in got])
    losses_want = torch.stack([s["loss"] for s in want])
    if not close(losses_got, losses_want, 1e-4):
        raise Fail(f"the minibatches' losses differ from the reference's {largest_difference(losses_got, losses_want)}")


def _gu_in_trainer(fn):
    """train_grpo for two updates of a tiny policy, with the function plugged in: the reference's statistics."""
    config = GRPOConfig(updates=2, prompts_per_update=2, group_size=4, minibatch_size=4, max_new_tokens=4, lr=1e-3)
    tasks = loops.tasks()

    def train():
        history = train_grpo(
            loops.tiny_lm(), loops.tiny_lm(), lambda t, r: [len(x) / 10 for x in r], loops.tokenizer(), tasks, config
        ).history
        return torch.tensor([[row["loss"], row["clipfrac"], row["score"]] for row in history])

    got, want = loops.trained_with("grpo_update", fn, _validate_grpo_update, train)
    if not close(got, want, 1e-4):
        raise Fail(
            f"train_grpo with your update logged other statistics (loss, clipfrac, score per update): {got.tolist()}, "
            f"with the reference's {want.tolist()}"
        )


def _validate_grpo_update(out, *args, **kwargs):
    if not (isinstance(out, list) and out):
        raise ExerciseOutputError("should return a non-empty list of minibatch_statistics")


EXERCISES = [
    Exercise(
        "sequence_logprobs",
        "*",
        "log-probability of a response",
        _validate_sequence_logprobs,
        [
            Check("sums the shifted, masked log-probabilities", _sl_value),
            Check("stays finite on a long response", _sl_long),
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
            Check("three steps (DPO, weighted DPO, IPO) leave the reference's parameters", _ds_parameters),
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
            Check("with beta = 0, clipped tokens get no gradient", _gl_gradient),
        ],
    ),
    Exercise(
        "grpo_update",
        "***",
        "GRPO's update: passes over shuffled minibatches of one rollout",
        _validate_grpo_update,
        [
            Check("one update leaves the reference's parameters", _gu_parameters),
            Check("returns each step's statistics", _gu_returns),
            Check("train_grpo runs with it and logs the reference's statistics", _gu_in_trainer),
        ],
        keeps_precision=False,  # minibatch_statistics keeps the clipped fraction in float64
    ),
]
