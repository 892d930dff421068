"""Best-of-n: sample n responses, keep the one the reward model scores highest. No training at all.

It is the simplest way to spend a reward model, and a strong baseline: every RL method in the course
has to beat it at the same KL. The KL of the best-of-n policy to the policy it samples from has a
closed form (Stiennon et al. 2020; Beirami et al. 2024 show it is an upper bound):

    KL(best-of-n || pi) = log n - (n - 1) / n

so n = 16 costs about 2.8 nats. Because the first k of n samples are themselves a best-of-k draw, one
set of n samples per prompt gives the whole curve k = 1, 2, 4, ..., n.
"""
from __future__ import annotations

import math

import torch

from rlhf_course import feedback, human, world


def analytic_kl(n: int) -> float:
    return math.log(n) - (n - 1) / n


def sample_and_score(policy, tokenizer, tasks: list[world.Task], n: int, scorer, *, temperature: float = 1.0,
                     seed: int = 0) -> tuple[list[list[str]], torch.Tensor]:
    """n samples per task and their reward: (responses per task, scores (tasks, n))."""
    responses = feedback.sample_candidates(policy, tokenizer, tasks, n, temperature, seed)
    flat_tasks = [task for task in tasks for _ in range(n)]
    scores = torch.as_tensor(scorer(flat_tasks, [r for group in responses for r in group]), dtype=torch.float32)
    return responses, scores.view(len(tasks), n)


def choose(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Index of the best of the first ``k`` samples of each task: scores (tasks, n) -> (tasks,)."""
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be between 1 and the {scores.shape[1]} samples drawn, got {k}")
    return scores[:, :k].argmax(dim=1)


def curve(tasks: list[world.Task], responses: list[list[str]], scores: torch.Tensor, ks: list[int]) -> list[dict]:
    """Gold score, exact match, proxy score and KL of best-of-k for each k in ``ks``."""
    rows = []
    for k in ks:
        best = choose(scores, k).tolist()
        chosen = [group[i] for group, i in zip(responses, best)]
        rows.append({"n": k, "kl": analytic_kl(k),
                     "gold": sum(human.gold_score(t, r) for t, r in zip(tasks, chosen)) / len(tasks),
                     "accuracy": sum(world.is_correct(t, r) for t, r in zip(tasks, chosen)) / len(tasks),
                     "proxy_reward": scores[torch.arange(len(best)), best].mean().item()})
    return rows
