"""Whose norms a reward model learns: two groups of users, one labeling team.

The world's users come from two groups that want the same correct, short answer but phrased differently:
group A hears an opener ("Sure! ...") as friendly, which is what the gold score rewards; group B hears it
as filler and wants the answer straight. The labeling team is drawn from group A only, as real teams are
drawn from some groups and not others (Ouyang et al. 2022 name theirs as one of the limits of InstructGPT;
Santurkar et al. 2023 measure whose opinions RLHF'd models end up voicing). A reward model fitted on the
team's comparisons learns group A's norm, and a policy that maximises it serves group B worse.

Two corrections at the same labeling budget:

* **pool** the judgments of labelers from both groups into one reward model: it can only learn a
  compromise, since the two groups disagree about the same reply;
* **condition** on the group: one reward per group, each fitted on its own group's labelers, and the
  user's group picks which one scores the replies (the idea behind personalised reward models; it needs
  to know the user's group, which a deployed system often does not and should not guess).

Bias by *name* would need a reward model that reads names; ``name_swap_pairs`` builds the test that shows
whether it does (the right name against the same reply with a name from the other group).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from rlhf_course.simulation import human, world

# the world's names in two groups, paired one to one for the swap test; a name that is also a city is left out
_PEOPLE = [n for n in world.NAMES if n not in world.CITIES]
GROUP_A_NAMES, GROUP_B_NAMES = _PEOPLE[0::2][: len(_PEOPLE) // 2], _PEOPLE[1::2][: len(_PEOPLE) // 2]
PARTNER = {**dict(zip(GROUP_A_NAMES, GROUP_B_NAMES)), **dict(zip(GROUP_B_NAMES, GROUP_A_NAMES))}
_NAME = re.compile(r"\b(" + "|".join(PARTNER) + r")\b")


def direct_utility(task: world.Task, response: str) -> float:
    """Group B's utility in [0, 1]: the gold score's weights, with "helpful" meaning *no opener*.

    A correct, concise answer is worth as much to both groups; they differ only in the 0.2 that the gold
    score gives a polite opener, which group B gives to a reply without one.
    """
    parts = human.gold_parts(task, response)
    if not parts["safe"]:
        return 0.0
    direct = float(world.style_of(response) == "curt")
    return (
        human.WEIGHTS["correct"] * parts["correct"]
        + human.WEIGHTS["helpful"] * direct
        + human.WEIGHTS["concise"] * parts["concise"]
    )


@dataclass(frozen=True)
class GroupBLabeler(human.SimulatedHuman):
    """A labeler from group B: the same reliability settings, judging by group B's utility."""

    name: str = "group B"

    def utility(self, task: world.Task, response: str) -> float:
        return direct_utility(task, response) + self.length_bias * len(response.split())


GROUP_B_LABELER = GroupBLabeler(temperature=human.CAREFUL.temperature, noise=human.CAREFUL.noise)


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


def split_prompts(tasks: list, candidates: list, seed: int = 0) -> tuple[tuple[list, list], tuple[list, list]]:
    """The prompts (and their candidates) in two halves at random: one half for each group's labelers."""
    order = list(range(len(tasks)))
    random.Random(f"split:{seed}").shuffle(order)
    halves = sorted(order[: len(order) // 2]), sorted(order[len(order) // 2 :])
    return tuple(([tasks[i] for i in half], [candidates[i] for i in half]) for half in halves)


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


def swap_names(text: str) -> str:
    """Every name of either group replaced by its partner in the other group."""
    return _NAME.sub(lambda m: PARTNER[m.group(0)], text)


def name_swap_pairs(tasks: list[world.Task]) -> list[dict]:
    """For the tasks whose answer names a person: the right answer (chosen) against it with the name swapped."""
    return [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": t.answer}],
            "rejected": [{"role": "assistant", "content": swap_names(t.answer)}],
            "group": "A" if _NAME.search(t.answer).group(0) in GROUP_A_NAMES else "B",
        }
        for t in tasks
        if _NAME.search(t.answer)
    ]
