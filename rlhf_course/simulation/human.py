"""A simulated human labeler with hidden preferences.

The labeler values four things, as the InstructGPT labeling guidelines do: a *correct* answer, a
*helpful* (friendly) tone, a *concise* reply, and *safety* (refusing unsafe requests, never complying).
Their weighted sum is the **gold score** in [0, 1]. Lessons may read the gold score to measure what
really happened; training code never does: it only sees the labeler's noisy judgments.

Judgments come in the three forms collected in practice:

* pairwise comparisons, drawn from a Bradley-Terry model ``P(a > b) = sigmoid((u_a - u_b) / temperature)``;
* 1-5 ratings (the utility plus Gaussian noise, rounded onto the scale);
* thumbs up/down (noisy utility above a threshold).

``temperature`` and ``noise`` set how reliable a labeler is. ``length_bias`` makes a *biased* labeler
who prefers longer answers whatever their quality (used in the pitfalls lesson).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rlhf_course.simulation.world import REFUSAL, REFUSAL_POLITE_PREFIX, STYLES, Task, core_of

WEIGHTS = {"correct": 0.6, "helpful": 0.2, "concise": 0.2}
CONCISE_SLACK_WORDS = 3  # extra words beyond the answer that cost nothing
CONCISE_SCALE_WORDS = 15  # extra words at which conciseness reaches zero


def gold_parts(task: Task, response: str) -> dict[str, float]:
    """Each hidden preference scored in [0, 1]."""
    core = core_of(response)
    correct = float(core == task.answer)
    refused = REFUSAL in response
    if task.unsafe:
        safe = float(refused)
    else:
        safe = 1.0
    friendly = response.strip().startswith((STYLES["polite"][0], REFUSAL_POLITE_PREFIX))
    extra_words = max(0, len(response.split()) - len(task.answer.split()) - CONCISE_SLACK_WORDS)
    concise = max(0.0, 1.0 - extra_words / CONCISE_SCALE_WORDS)
    return {"correct": correct, "helpful": float(friendly), "concise": concise, "safe": safe}


def gold_score(task: Task, response: str) -> float:
    """The labeler's true utility in [0, 1]; an unsafe compliance scores 0 whatever its style."""
    parts = gold_parts(task, response)
    if not parts["safe"]:
        return 0.0
    return sum(WEIGHTS[name] * parts[name] for name in WEIGHTS)


@dataclass(frozen=True)
class SimulatedHuman:
    """One labeler. Lower ``temperature``/``noise`` means a more reliable labeler."""

    name: str = "careful"
    temperature: float = 0.05
    noise: float = 0.1
    length_bias: float = 0.0  # utility added per word of the response

    def utility(self, task: Task, response: str) -> float:
        return gold_score(task, response) + self.length_bias * len(response.split())

    def prefers_first(self, task: Task, a: str, b: str, rng: random.Random) -> bool:
        """A Bradley-Terry draw: True when the labeler prefers ``a`` over ``b``."""
        margin = (self.utility(task, a) - self.utility(task, b)) / self.temperature
        return rng.random() < 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, margin))))

    def rate(self, task: Task, response: str, rng: random.Random) -> int:
        """A 1-5 rating."""
        noisy = self.utility(task, response) + rng.gauss(0.0, self.noise)
        return int(min(5, max(1, round(1 + 4 * noisy))))

    def thumbs_up(self, task: Task, response: str, rng: random.Random) -> bool:
        return self.utility(task, response) + rng.gauss(0.0, self.noise) > 0.5


CAREFUL = SimulatedHuman()
HASTY = SimulatedHuman("hasty", temperature=0.2, noise=0.3)
LENGTH_BIASED = SimulatedHuman("length_biased", temperature=0.05, noise=0.1, length_bias=0.03)
