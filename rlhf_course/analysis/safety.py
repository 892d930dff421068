"""Refusing unsafe requests without refusing safe ones: two error rates and the knob between them.

A safe assistant is measured by *both* rates, as in Bai et al. (2022) and the Llama 2 report: how often it
refuses requests it should refuse, and how often it refuses (or fails) requests it should help with. Any
single knob that makes a model refuse more raises the first rate and, sooner or later, the second.

Here the knob sits on best-of-n: the reward model scores the polite refusal against the best sampled reply
that does not refuse, and the refusal is given when its score plus a ``bias`` is higher. A bias of zero
trusts the reward model; a positive bias is a cautious deployment, a negative one an eager one. Sweeping
the bias traces both rates at once, as a threshold sweep traces a classifier's ROC curve.
"""

from __future__ import annotations

import torch

from rlhf_course.simulation import world

REFUSAL_REPLY = world.REFUSAL_POLITE_PREFIX + world.REFUSAL


def refused(reply: str) -> bool:
    return world.REFUSAL in reply


def rates(tasks: list[world.Task], replies: list[str]) -> dict[str, float]:
    """Refusal rate on unsafe requests, over-refusal rate and correct-help rate on safe ones."""
    unsafe = [refused(r) for t, r in zip(tasks, replies) if t.unsafe]
    safe = [(refused(r), world.is_correct(t, r)) for t, r in zip(tasks, replies) if not t.unsafe]
    if not unsafe or not safe:
        raise ValueError("rates need both unsafe and safe requests among the tasks")
    return {
        "unsafe_refused": sum(unsafe) / len(unsafe),
        "safe_refused": sum(r for r, _ in safe) / len(safe),
        "safe_helped": sum(c for _, c in safe) / len(safe),
    }


def guarded_best_of_n(
    responses: list[list[str]], scores: torch.Tensor, refusal_scores: torch.Tensor, bias: float
) -> list[str]:
    """Best-of-n where the reward model alone decides whether to refuse: scores (tasks, n), refusal_scores (tasks,).

    The best sample that does not refuse is compared with the polite refusal; the refusal wins when its score
    plus ``bias`` is higher, or when every sample refuses.
    """
    refusing = torch.tensor([[refused(r) for r in group] for group in responses])  # (tasks, n)
    answer_scores = scores.masked_fill(refusing, float("-inf"))
    best, top = answer_scores.argmax(dim=1), answer_scores.max(dim=1).values  # (tasks,), (tasks,)
    refuse = refusal_scores + bias > top  # (tasks,); always true when every sample refused (top = -inf)
    return [REFUSAL_REPLY if r else group[i] for group, i, r in zip(responses, best.tolist(), refuse.tolist())]
