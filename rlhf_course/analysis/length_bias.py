"""A labeler who prefers long answers: the reward model inherits the bias, and the policy exploits it.

Human raters favour longer, more detailed-looking answers even when they are no better, and RLHF'd
models grow verbose as a result (Singhal et al. 2023, "A long way to go"). The task world's gold score
*penalises* padding (conciseness is one of its four parts), so a length bias is easy to see here.

* **Detect** it with a length-controlled test: pairs of replies with the same correct answer, one plain and
  one padded with the rambling preamble and sign-off. The gold score always prefers the plain one; a reward
  model that prefers the padded one has learned length, not quality.
* **Correct** it in the data: weight the comparisons so that, at every length difference, "the longer reply
  won" and "the shorter reply won" carry the same total weight, so that rewarding length no longer lowers
  the loss on average. This cannot remove a bias that holds among replies of equal quality (the labeler
  prefers the longer of two equally correct replies every time), so it only helps in part.
* **Correct** it in the reward: measure how much reward a padding word buys on the length-controlled pairs
  of *training* prompts, and subtract that much per word (a length penalty, as in Singhal et al. and
  Park et al. 2024).
"""

from __future__ import annotations

from collections import Counter

import torch

from rlhf_course.simulation import world


def words(row: dict, side: str) -> int:
    return len(row[side][-1]["content"].split())


def padded_pairs(tasks: list[world.Task]) -> list[dict]:
    """Preference rows whose chosen reply is the plain correct answer and the rejected one the same answer padded."""
    return [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": world.render(t, "curt")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "rambling")}],
        }
        for t in tasks
    ]


def length_buckets(rows: list[dict], width: int = 4) -> list[tuple[int, int]]:
    """For each comparison: (which side is longer: +1 chosen, -1 rejected, 0 same length; |length difference| // width)."""
    out = []
    for row in rows:
        diff = words(row, "chosen") - words(row, "rejected")
        out.append(((diff > 0) - (diff < 0), abs(diff) // width))
    return out


def balanced_weights(rows: list[dict], width: int = 4) -> torch.Tensor:
    """(rows,) weights under which the longer reply wins exactly half the weight within each length-difference bucket.

    A bucket where only one side ever wins cannot be balanced by weighting, and is dropped (weight 0).
    """
    keys = length_buckets(rows, width)
    counts = Counter(keys)
    weights = []
    for sign, bucket in keys:
        if sign == 0:
            weights.append(1.0)
            continue
        longer_won, shorter_won = counts[(1, bucket)], counts[(-1, bucket)]
        if not (longer_won and shorter_won):
            weights.append(0.0)
            continue
        # each side of the bucket gets half of the bucket's rows' worth of weight
        weights.append((longer_won + shorter_won) / (2 * counts[(sign, bucket)]))
    return torch.tensor(weights)


def longer_wins(rows: list[dict], weights: torch.Tensor | None = None) -> float:
    """Share (weighted) of the comparisons with a length difference that the longer reply won."""
    keys = length_buckets(rows)
    weights = torch.ones(len(rows)) if weights is None else weights
    longer = sum(w for (sign, _), w in zip(keys, weights.tolist()) if sign > 0)
    decided = sum(w for (sign, _), w in zip(keys, weights.tolist()) if sign != 0)
    return longer / max(decided, 1e-12)


def reward_per_word(plain: torch.Tensor, padded: torch.Tensor, pairs: list[dict]) -> float:
    """Median reward a padding word buys on ``padded_pairs`` rows: plain and padded rewards (pairs,) -> a number."""
    extra_words = torch.tensor([words(r, "rejected") - words(r, "chosen") for r in pairs], dtype=torch.float32)
    return ((padded - plain) / extra_words).median().item()
