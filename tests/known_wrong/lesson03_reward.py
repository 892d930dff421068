"""Plausible mistakes in lesson 03's exercises, one function each, with the words its check's hint must contain.

Each is written the way a student would write it, not derived from the reference, so a check that
recognises it is recognising the mistake and not a copy of its own code.
"""

import torch
import torch.nn.functional as F


# --- last_token_rewards ---------------------------------------------------------------------
def last_column(values, attention_mask):
    return values[:, -1]


def first_pad_position(values, attention_mask):
    """Reads one past the last real token (where old TRL PPO put the score); clamps for full rows."""
    index = attention_mask.sum(1).clamp(max=values.shape[1] - 1)
    return values[torch.arange(values.shape[0]), index]


def first_token(values, attention_mask):
    return values[:, 0]


def last_via_python_list(values, attention_mask):
    lengths = attention_mask.sum(1).tolist()
    return torch.tensor([values[i, n - 1].item() for i, n in enumerate(lengths)])


# --- bradley_terry_loss ---------------------------------------------------------------------
def bt_swapped(chosen, rejected, margin=None):
    diff = rejected - chosen if margin is None else rejected - chosen - margin
    return -F.logsigmoid(diff).mean()


def bt_sigmoid_not_log(chosen, rejected, margin=None):
    diff = chosen - rejected - (0 if margin is None else margin)
    return -torch.sigmoid(diff).mean()


def bt_ignores_margin(chosen, rejected, margin=None):
    return -F.logsigmoid(chosen - rejected).mean()


def bt_adds_margin(chosen, rejected, margin=None):
    return -F.logsigmoid(chosen - rejected + (0 if margin is None else margin)).mean()


def bt_unstable(chosen, rejected, margin=None):
    diff = chosen - rejected - (0 if margin is None else margin)
    return -torch.log(torch.sigmoid(diff)).mean()


# --- pairwise_accuracy ----------------------------------------------------------------------
def acc_ties_win(chosen, rejected):
    return (chosen >= rejected).float().mean()


def acc_ties_lose(chosen, rejected):
    return (chosen > rejected).float().mean()


def acc_count(chosen, rejected):
    return (chosen > rejected).float().sum() + 0.5 * (chosen == rejected).float().sum()


def acc_reversed(chosen, rejected):
    return (rejected > chosen).float().mean()


def acc_integer(chosen, rejected):
    return (chosen > rejected).long().sum() // len(chosen)


def bt_per_pair(chosen, rejected, margin=None):
    """Returns each pair's loss and leaves the mean to the caller."""
    m = 0.0 if margin is None else margin
    return -torch.nn.functional.logsigmoid(chosen - rejected - m)


def bt_summed(chosen, rejected, margin=None):
    """Stable, but a sum over the batch: its size would scale the learning rate."""
    m = 0.0 if margin is None else margin
    return -torch.nn.functional.logsigmoid(chosen - rejected - m).sum()


def last_largest(values, attention_mask):
    """The last real token has the highest value in every example the student looked at."""
    return values.masked_fill(attention_mask == 0, float("-inf")).max(dim=1).values


# --- reward_step ----------------------------------------------------------------------------
def _bt(chosen, rejected, margin):
    return -F.logsigmoid(chosen - rejected - margin).mean()


def _halves(model, batch):
    rewards = model(batch["input_ids"], batch["attention_mask"])
    n = batch["margin"].shape[0]
    return rewards[:n], rewards[n:]


def rstep_no_zero_grad(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    chosen, rejected = _halves(model, batch)
    loss = _bt(chosen, rejected, batch["margin"])
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def rstep_no_clip(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    chosen, rejected = _halves(model, batch)
    loss = _bt(chosen, rejected, batch["margin"])
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    optimizer.step()
    return loss.detach()


def rstep_no_weight(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    chosen, rejected = _halves(model, batch)
    loss = _bt(chosen, rejected, batch["margin"])
    optimizer.zero_grad()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def rstep_swapped(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    rejected, chosen = _halves(model, batch)
    loss = _bt(chosen, rejected, batch["margin"])
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def rstep_interleaved(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    """Reads the batch as chosen, rejected, chosen, rejected, ..."""
    rewards = model(batch["input_ids"], batch["attention_mask"])
    loss = _bt(rewards[0::2], rewards[1::2], batch["margin"])
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def rstep_no_margin(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    chosen, rejected = _halves(model, batch)
    loss = -F.logsigmoid(chosen - rejected).mean()
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def rstep_returns_graph(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    chosen, rejected = _halves(model, batch)
    loss = _bt(chosen, rejected, batch["margin"])
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss


def rstep_returns_weighted(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    chosen, rejected = _halves(model, batch)
    loss = weight * _bt(chosen, rejected, batch["margin"])
    optimizer.zero_grad()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def last_mean_pooled(values, attention_mask):
    """Averages the head over the real tokens."""
    m = attention_mask.float()
    return (values * m).sum(1) / m.sum(1)


def last_sum_pooled(values, attention_mask):
    return (values * attention_mask).sum(1)


def last_without_row_index(values, attention_mask):
    last = attention_mask.sum(1) - 1
    return values[:, last]


def bt_margin_added(chosen, rejected, margin=None):
    d = chosen - rejected
    if margin is not None:
        d = d + margin
    return -F.logsigmoid(d).mean()


def acc_percentage(chosen, rejected):
    return 100 * ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean()


def acc_mean_sign(chosen, rejected):
    return torch.sign(chosen - rejected).mean()


def acc_python_float(chosen, rejected):
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen.tolist(), rejected.tolist()))
    return wins / len(chosen)


WRONG = {
    "last_token_rewards": [
        (last_column, "last column"),
        (first_pad_position, "first padding position"),
        (first_token, "first token"),
        (last_via_python_list, "no gradient"),
        (last_largest, "largest value among the real tokens"),
        (last_mean_pooled, "averaged the values over the real tokens"),
        (last_sum_pooled, "summed the values of the real tokens"),
        (last_without_row_index, "index the rows too"),
    ],
    "bradley_terry_loss": [
        (bt_swapped, "wrong sign"),
        (bt_sigmoid_not_log, "log of the sigmoid"),
        (bt_ignores_margin, "margin was ignored"),
        (bt_adds_margin, "margin was added"),
        (bt_unstable, "logsigmoid"),
        (bt_per_pair, "the loss should have shape (), got (6,)"),
        (bt_summed, "summed instead of averaged"),
        (bt_margin_added, "the margin was added"),
    ],
    "pairwise_accuracy": [
        (acc_ties_win, "ties counted as correct"),
        (acc_ties_lose, "ties counted as wrong"),
        (acc_count, "returned a count"),
        (acc_reversed, "reversed"),
        (acc_integer, "float"),
        (acc_percentage, "returned a percentage"),
        (acc_mean_sign, "averaged the sign of the difference"),
        (acc_python_float, "expected a 0-d tensor"),
    ],
    "reward_step": [
        (rstep_no_zero_grad, "zero_grad"),
        (rstep_no_clip, "not clipped before the step"),
        (rstep_no_weight, "not scaled by weight"),
        (rstep_swapped, "chosen and rejected were swapped"),
        (rstep_interleaved, "alternating"),
        (rstep_no_margin, "margins were left out"),
        (rstep_returns_graph, "still carries its graph"),
        (rstep_returns_weighted, "the returned loss is the weighted one"),
    ],
}
