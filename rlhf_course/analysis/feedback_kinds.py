"""Ratings, thumbs or comparisons: what one labelling budget teaches a reward model in each form.

The reward stage has the same team judge the same samples three ways: every pair of a prompt's samples
compared, every sample rated 1-5, every sample given a thumb up or down (``feedback.judge_pairs`` and
``feedback.single_judgments``). Lesson 03 fits a linear reward head on frozen features with each kind's own
loss (``probes.fit_head`` for Bradley-Terry, ``probes.fit_single_head`` for the regression and the logistic
loss) on the same number of judgments, and scores them all on the same held-out pairs by the gold ordering.

The usual case for comparisons is that people use an absolute scale inconsistently. ``OwnScaleLabeler``
simulates exactly that: a labeler who adds their own offset to everything they judge. It cancels in a
comparison, ``u(a) + o - (u(b) + o)``, but not in a rating or a thumb, and ``rejudge`` has the same labelers
judge the same replies again on their own scales.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rlhf_course.simulation import feedback, human, world

KINDS = ("ratings", "thumbs", "comparisons")


@dataclass(frozen=True)
class OwnScaleLabeler(human.SimulatedHuman):
    """A labeler who places every reply ``offset`` higher (or lower, if negative) on the utility scale of
    ``human.gold_score`` (0 to 1; a star of the 1-5 rating is 0.25 of it)."""

    offset: float = 0.0

    def utility(self, task: world.Task, response: str) -> float:
        return super().utility(task, response) + self.offset


def own_scale_team(spread: float, team=feedback.TEAM) -> tuple[OwnScaleLabeler, ...]:
    """The team, each labeler as reliable as before, alternately ``spread`` generous and ``spread`` harsh."""
    return tuple(
        OwnScaleLabeler(m.name, m.temperature, m.noise, m.length_bias, offset=spread if i % 2 == 0 else -spread)
        for i, m in enumerate(team)
    )


def kind_of(raw: list[dict]) -> str:
    """Which kind of single judgments these are, "ratings" or "thumbs", from the field they carry."""
    fields = {"rating": "ratings", "thumbs_up": "thumbs"}
    found = {fields[f] for j in raw for f in fields if f in j}
    if len(found) != 1:
        raise ValueError(f"expected single judgments that all carry 'rating' or all 'thumbs_up', found {found or None}")
    return found.pop()


def targets(raw: list[dict]) -> torch.Tensor:
    """What ``probes.fit_single_head`` fits: the 1-5 ratings, or 1.0 for a thumb up and 0.0 for down. (n,)"""
    field = {"ratings": "rating", "thumbs": "thumbs_up"}[kind_of(raw)]
    return torch.tensor([float(j[field]) for j in raw])


def rejudge(raw: list[dict], team, seed: int = 0) -> list[dict]:
    """The same single judgments, each given again by the team member of the same name (fresh noise)."""
    kind = kind_of(raw)
    by_name = {m.name: m for m in team}
    missing = {j["labeler"] for j in raw} - set(by_name)
    if missing:
        raise ValueError(f"no labeler named {sorted(missing)} in the team {sorted(by_name)}")
    rng = random.Random(f"rejudge:{kind}:{seed}")
    out = []
    for j in raw:
        judge, task = by_name[j["labeler"]], feedback.task_of(j["task"])
        if kind == "ratings":
            out.append({**j, "rating": judge.rate(task, j["completion"], rng)})
        else:
            out.append({**j, "thumbs_up": judge.thumbs_up(task, j["completion"], rng)})
    return out


def correctness_differs(rows: list[dict]) -> torch.Tensor:
    """For preference rows (with the task's fields, as ``feedback.to_preferences`` writes them): whether one
    reply is right and the other wrong. Where both are equally right, only style tells them apart. (rows,) bool"""
    return torch.tensor(
        [
            world.is_correct(feedback.task_of(r), r["chosen"][-1]["content"])
            != world.is_correct(feedback.task_of(r), r["rejected"][-1]["content"])
            for r in rows
        ]
    )


def prompt_groups(rows: list[dict]) -> torch.Tensor:
    """Which prompt each preference row belongs to, numbered in order of first appearance. (rows,) long"""
    keys = [repr(r["prompt"]) for r in rows]
    number = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([number[k] for k in keys])


def mean_and_se(values: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """Mean of per-pair ``values`` (pairs,) and its standard error, clustered by prompt (``groups``, (pairs,)).

    Pairs of one prompt share replies, so they are not independent: the error comes from each prompt's summed
    deviation from the mean, sqrt(sum_g (sum_{i in g} (x_i - mean))^2) / n, which for one pair per prompt is the
    usual std / sqrt(n).
    """
    values = values.double()
    mean = values.mean()
    per_prompt = torch.zeros(int(groups.max()) + 1, dtype=torch.double).index_add_(0, groups, values - mean)
    return mean.item(), (per_prompt.pow(2).sum().sqrt() / len(values)).item()
