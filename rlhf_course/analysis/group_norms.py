"""Whose norms a reward model learns: two groups of users, one labeling team.

The world's users come from two groups that want the same correct, short answer but phrased differently:
group A hears an opener ("Sure! ...") as friendly, which is what the gold score rewards; group B hears it
as filler and wants the answer bare. The labeling team is drawn from group A only, as real teams are
drawn from some groups and not others (Ouyang et al. 2022 name theirs as one of the limits of InstructGPT;
Santurkar et al. 2023 measure whose opinions RLHF'd models end up voicing). A reward model fitted on the
team's comparisons learns group A's norm, and a policy that maximises it serves group B worse.

Two corrections at the team's labeling budget, on the same pairs: half of the prompts go to group B's
labelers instead, and their judgments are either

* **pooled** with group A's into one reward model, which can only learn a compromise, since the two
  groups disagree about the same replies; or
* kept apart: **one reward per group**, each fitted on its own group's labelers, and the user's group
  picks which one scores the replies (a personalised reward; it has to know the user's group, which a
  deployed system often does not know and should not guess).
"""

from __future__ import annotations

import random

import torch

from rlhf_course.simulation import feedback, human, world


def direct_utility(task: world.Task, response: str) -> float:
    """Group B's utility in [0, 1]: the gold score's weights, with "helpful" meaning a *bare* reply.

    A correct, concise answer is worth as much to both groups. The gold score gives its 0.2 for helpfulness
    to an opener ("Sure! ", or a refusal's apology); group B gives it to a reply with no wrapper at all.
    Complying with an unsafe request is worth nothing to either.
    """
    parts = human.gold_parts(task, response)
    if not parts["safe"]:
        return 0.0
    bare = float(world.style_of(response) == "curt")
    weights = human.WEIGHTS
    return weights["correct"] * parts["correct"] + weights["helpful"] * bare + weights["concise"] * parts["concise"]


class GroupBLabeler(human.SimulatedHuman):
    """A labeler from group B: the same reliability settings, judging by group B's utility."""

    def utility(self, task: world.Task, response: str) -> float:
        return direct_utility(task, response) + self.length_bias * len(response.split())


GROUP_B_LABELER = GroupBLabeler("group B", temperature=human.CAREFUL.temperature, noise=human.CAREFUL.noise)


def prompt_halves(rows: list[dict], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the preference rows in each half of their prompts, the prompts split at random."""
    prompts = list(dict.fromkeys(repr(row["prompt"]) for row in rows))
    random.Random(f"halves:{seed}").shuffle(prompts)
    first = set(prompts[: len(prompts) // 2])
    in_first = torch.tensor([repr(row["prompt"]) in first for row in rows])
    return in_first.nonzero().squeeze(1), (~in_first).nonzero().squeeze(1)


def relabel(
    chosen: torch.Tensor, rejected: torch.Tensor, rows: list[dict], judge: human.SimulatedHuman, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same pairs judged again by ``judge``: features (rows, d) of each row's chosen and rejected reply,
    swapped where the new judgment goes the other way."""
    rng = random.Random(f"relabel:{seed}")
    keeps = torch.tensor(
        [
            judge.prefers_first(
                feedback.task_of(row), row["chosen"][-1]["content"], row["rejected"][-1]["content"], rng
            )
            for row in rows
        ]
    ).unsqueeze(1)  # (rows, 1)
    return torch.where(keeps, chosen, rejected), torch.where(keeps, rejected, chosen)


def utilities(tasks: list[world.Task], samples: list[list[str]]) -> dict[str, torch.Tensor]:
    """Each group's utility of every sample: {"A": (prompts, k), "B": (prompts, k)}; A's is the gold score."""
    return {
        group: torch.tensor([[utility(t, s) for s in replies] for t, replies in zip(tasks, samples)])
        for group, utility in (("A", human.gold_score), ("B", direct_utility))
    }


def served(utility: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The utility of the reply each prompt's best-of-k picks: utility and scores (prompts, k) -> (prompts,)."""
    picks = scores.argmax(dim=1)  # (prompts,)
    return utility[torch.arange(len(picks)), picks]


def style_pairs(tasks: list[world.Task]) -> list[dict]:
    """Preference rows: the correct answer with the polite opener (chosen) against the same answer bare."""
    return [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "curt")}],
        }
        for t in tasks
        if not t.unsafe
    ]
