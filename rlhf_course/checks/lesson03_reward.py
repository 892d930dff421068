"""Lesson 03's exercises: the reward at the last real token, the Bradley-Terry loss, pairwise accuracy, and one
training step of the reward model.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import torch

from rlhf_course.algorithms.reward_model import (
    RewardConfig,
    bradley_terry_loss,
    comparison_batch,
    last_token_rewards,
    raw_rewards,
    reward_step,
    train,
)
from rlhf_course.checks import loops
from rlhf_course.checks.base import Check, Exercise, Fail, close, diagnose
from rlhf_course.core import distributed
from rlhf_course.core.registry import expect_tensor


# --- last_token_rewards -------------------------------------------------------------------------
def _last_inputs():
    values = torch.arange(1.0, 25.0).view(3, 8)  # value = 1 + 8 * row + column: easy to read back
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]])
    return values, mask


def _last_shape(fn):
    values, mask = _last_inputs()
    out = fn(values, mask)
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (3, 3):
        raise Fail(
            "expected one reward per row, shape (3,), got (3, 3): values[:, last] takes every row's last index for "
            "every row; index the rows too (values[torch.arange(batch), last])"
        )
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3,):
        raise Fail(f"expected one reward per row, shape (3,), got {getattr(out, 'shape', type(out).__name__)}")


def _last_value(fn):
    values, mask = _last_inputs()
    got = fn(values, mask).float()
    want = last_token_rewards.reference(values, mask)
    if torch.equal(got, want):
        return
    read = [int(v) - 1 - 8 * row for row, v in enumerate(got.tolist())]  # which column each row read
    if read == [7, 7, 7]:
        hint = "you read the last column, which is padding for shorter rows: use the attention mask"
    elif read == [5, 8, 3] or read[0] == 5 or read[2] == 3:
        hint = (
            "off by one: you read the first padding position (old TRL PPO did this); the last real "
            "token is at index (number of real tokens) - 1"
        )
    elif read == [0, 0, 0]:
        hint = "you read the first token: the reward must come from the last real token, which has seen everything"
    else:
        hint = "take, for each row, the value at the index of its last 1 in the attention mask"
    raise Fail(f"expected {want.tolist()}, got {got.tolist()} (columns {read}); {hint}")


def _last_values_that_fall(fn):
    """Values that do not rise along the row: the largest real one is not the last."""
    values = torch.tensor(
        [
            [5.0, 9.0, 2.0, 7.0, 1.0, 8.0, 8.0, 8.0],
            [3.0, 8.0, 6.0, 4.0, 9.0, 2.0, 5.0, 1.0],
            [4.0, 6.0, 2.0, 9.0, 9.0, 9.0, 9.0, 9.0],
        ]
    )
    mask = _last_inputs()[1]
    got, want = fn(values, mask).float(), last_token_rewards.reference(values, mask)
    if torch.equal(got, want):
        return
    mistakes = {
        "you took the largest value among the real tokens, which is the last one's only while the values rise "
        "along the row: read the value at the index of each row's last real token": values.masked_fill(
            mask == 0, float("-inf")
        )
        .max(dim=1)
        .values,
        "you summed the values of the real tokens: the reward is the value at the last real token alone": (
            values * mask
        ).sum(dim=1),
        "you averaged the values over the real tokens: the reward is the value at the last real token alone": (
            values * mask
        ).sum(dim=1)
        / mask.sum(dim=1),
    }
    raise Fail(
        f"expected {want.tolist()}, got {got.tolist()}: "
        + diagnose(
            got, mistakes, "take, for each row, the value at the index of its last 1 in the attention mask", want=want
        )
    )


def _last_gradient(fn):
    values, mask = _last_inputs()
    values.requires_grad_(True)
    out = fn(values, mask)
    if not out.requires_grad:
        raise Fail("the rewards have no gradient: index with gather or advanced indexing, not .item() or a Python list")


# --- bradley_terry_loss ------------------------------------------------------------------------
def _bt_inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(6, generator=gen), torch.randn(6, generator=gen), torch.rand(6, generator=gen)


def _bt_value(fn):
    chosen, rejected, _ = _bt_inputs()
    got, want = fn(chosen, rejected), bradley_terry_loss.reference(chosen, rejected)
    if close(got, want):
        return
    diff = (chosen - rejected).double()
    mistakes = {
        "wrong sign: the chosen response should get the higher reward, so use sigmoid(r_chosen - r_rejected)": -torch.nn.functional.logsigmoid(
            -diff
        ).mean(),
        "use the log of the sigmoid (the log-likelihood), not the sigmoid itself": -torch.sigmoid(diff).mean(),
        "summed instead of averaged over the batch": -torch.nn.functional.logsigmoid(diff).sum(),
        "the loss is the *negative* log-likelihood and must be positive": torch.nn.functional.logsigmoid(diff).mean(),
    }
    raise Fail(
        f"expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(got, mistakes, "the loss is mean(-log sigmoid(r_chosen - r_rejected))", want=want)
    )


def _bt_margin(fn):
    chosen, rejected, margin = _bt_inputs()
    got, want = fn(chosen, rejected, margin), bradley_terry_loss.reference(chosen, rejected, margin)
    if close(got, want):
        return
    if close(got, bradley_terry_loss.reference(chosen, rejected)):
        raise Fail("the margin was ignored: subtract it, -log sigmoid(r_chosen - r_rejected - margin)")
    if close(got, bradley_terry_loss.reference(chosen, rejected, -margin)):
        raise Fail("the margin was added: subtract it, so the chosen response must win by at least the margin")
    raise Fail(f"with a margin expected {want.item():.5f}, got {float(got):.5f}")


def _bt_stable(fn):
    chosen, rejected = torch.tensor([-60.0, 60.0]), torch.tensor([60.0, -60.0])
    got = fn(chosen, rejected)
    if torch.isfinite(got) and abs(float(got) - 60.0) <= 1e-3:
        return
    if torch.isfinite(got) and abs(float(got) - 120.0) <= 1e-3:  # stable, but the sum of the two pairs
        raise Fail(
            "for reward differences of -120 and +120 the loss should be 60.0, got 120.0: summed instead of averaged over the batch"
        )
    raise Fail(
        f"for reward differences of -120 and +120 the loss should be 60.0, got {float(got)}: "
        "log(sigmoid(x)) underflows to log(0); use torch.nn.functional.logsigmoid"
    )


def _bt_gradient(fn):
    chosen, rejected, _ = _bt_inputs()
    chosen.requires_grad_(True)
    out = fn(chosen, rejected)
    if not (isinstance(out, torch.Tensor) and out.dim() == 0 and out.requires_grad):
        raise Fail("return a scalar tensor that keeps its gradient (no .item())")


# --- pairwise_accuracy -------------------------------------------------------------------------
def _acc_value(fn):
    chosen = torch.tensor([2.0, 1.0, 0.5, 3.0, -1.0])
    rejected = torch.tensor([1.0, 1.0, 0.7, 3.0, -2.0])  # wins, tie, loss, tie, win
    got = fn(chosen, rejected)
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        raise Fail(f"expected a 0-d tensor, got {got!r}")
    want = {
        0.6: None,
        0.8: "ties counted as correct (>=): count a tie as half a correct answer",
        0.4: "ties counted as wrong: a tie is a coin flip, count it as half",
        3.0: "you returned a count: divide by the number of pairs",
        0.2: "reversed: a pair is correct when the *chosen* response gets the higher reward",
    }
    value = round(float(got), 4)
    if value == 0.6:
        return
    if value == 60.0:
        raise Fail(
            "expected 0.6 for 2 wins, 2 ties and 1 loss, got 60.0: you returned a percentage; return the fraction"
        )
    if value == 0.2 and float(fn(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))) == 0.0:
        raise Fail(
            "expected 0.6 for 2 wins, 2 ties and 1 loss, got 0.2: you averaged the sign of the difference (+1, 0, -1); "
            "a win counts 1, a tie 0.5 and a loss 0"
        )
    raise Fail(
        f"expected 0.6 for 2 wins, 2 ties and 1 loss, got {value}; "
        + (want.get(value) or "count chosen > rejected as 1 and ties as 0.5, then average")
    )


def _acc_dtype(fn):
    got = fn(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    if not got.is_floating_point():
        raise Fail(f"the accuracy should be a float tensor, got {got.dtype}: integer division would give 0")


def _validate_last(out, values, attention_mask):
    expect_tensor(out, shape=values.shape[:1], dtype=values.dtype, device=values.device, what="the rewards")


def _validate_bt(out, chosen, rejected, margin=None):
    expect_tensor(out, shape=(), what="the loss")


def _validate_acc(out, chosen, rejected):
    expect_tensor(out, shape=(), what="the accuracy")


# --- reward_step ---------------------------------------------------------------------------------
def _rs_setup():
    """Two steps on four comparisons each (margins 0, 0.5 and 1): the first clipped (the gradient's norm is far
    above 0.05), the second weighted by 0.5 and not clipped (clipping would hide the weight)."""
    model = loops.tiny_reward_model()
    rewards_of = distributed.Call(raw_rewards, model)
    optimizer, accelerator = loops.sgd(model), loops.accelerator()
    tok, rows = loops.tokenizer(), loops.preference_rows()
    calls = [
        (
            (rewards_of, optimizer, accelerator, comparison_batch(tok, rows[first : first + 4], 128)),
            {"weight": w, "max_grad_norm": n},
        )
        for first, w, n in ((0, 1.0, 0.05), (4, 0.5, 1e3))
    ]
    return model, calls


def _rs_loss(model, batch, swap=False, margin=True, interleaved=False):
    rewards = model(batch["input_ids"], batch["attention_mask"])
    pairs = len(batch["margin"])
    chosen, rejected = (rewards[0::2], rewards[1::2]) if interleaved else (rewards[:pairs], rewards[pairs:])
    if swap:
        chosen, rejected = rejected, chosen
    return bradley_terry_loss.reference(chosen, rejected, batch["margin"] if margin else None)


_RS_MISTAKES = {
    **{hint: loops.step_variant(_rs_loss, **flags) for hint, flags in loops.STEP_MISTAKES.items()},
    "chosen and rejected were swapped: the batch holds every chosen conversation first, then every rejected one": (
        loops.step_variant(lambda model, batch: _rs_loss(model, batch, swap=True))
    ),
    "the batch was read as alternating chosen, rejected: it holds every chosen conversation first, then every "
    "rejected one": loops.step_variant(lambda model, batch: _rs_loss(model, batch, interleaved=True)),
    "the margins were left out: pass batch['margin'] to the loss": (
        loops.step_variant(lambda model, batch: _rs_loss(model, batch, margin=False))
    ),
}


def _rs_parameters(fn):
    got, want = loops.run(fn, _rs_setup), loops.run(reward_step.reference, _rs_setup)
    loops.compare_parameters(got, want, _RS_MISTAKES, _rs_setup, "two steps")


def _rs_returns(fn):
    got, want = loops.run(fn, _rs_setup), loops.run(reward_step.reference, _rs_setup)
    for g, w, (_, kwargs) in zip(got.outputs, want.outputs, _rs_setup()[1]):
        loops.loss_returned(g, w, kwargs["weight"])


def _rs_in_trainer(fn):
    """reward_model.train on eight comparisons, with the function plugged in: the reference's losses."""
    tok, rows = loops.tokenizer(), loops.preference_rows()
    config = RewardConfig(batch_size=4, warmup_steps=1, lr=1e-2)
    got, want = loops.trained_with(
        "reward_step", fn, _validate_step, lambda: train(loops.tiny_reward_model(), tok, rows, None, config).losses
    )
    if not torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5):
        raise Fail(f"reward_model.train with your step logged the losses {got}, with the reference's {want}")


def _validate_step(out, *args, **kwargs):
    expect_tensor(out, shape=(), what="the returned loss")


EXERCISES = [
    Exercise(
        "last_token_rewards",
        "*",
        "read the reward at the last real token",
        _validate_last,
        [
            Check("returns one reward per row", _last_shape),
            Check("reads each row's last real token", _last_value),
            Check("reads the last real token when the values fall", _last_values_that_fall),
            Check("keeps the gradient", _last_gradient),
        ],
    ),
    Exercise(
        "bradley_terry_loss",
        "**",
        "the Bradley-Terry loss with a margin",
        _validate_bt,
        [
            Check("matches the reference value", _bt_value),
            Check("subtracts the margin", _bt_margin),
            Check("is stable for large reward differences", _bt_stable),
            Check("returns a scalar with a gradient", _bt_gradient),
        ],
    ),
    Exercise(
        "pairwise_accuracy",
        "*",
        "how often the chosen response wins",
        _validate_acc,
        [
            Check("counts wins, ties and losses", _acc_value),
            Check("returns a float", _acc_dtype),
        ],
    ),
    Exercise(
        "reward_step",
        "**",
        "one training step of the reward model on comparisons",
        _validate_step,
        [
            Check("two steps leave the reference's parameters", _rs_parameters),
            Check("returns the unweighted loss, detached", _rs_returns),
            Check("reward_model.train runs with it and logs the reference's losses", _rs_in_trainer),
        ],
    ),
]
