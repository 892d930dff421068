"""Best-of-n: sample n responses, keep the one the reward model scores highest. No training at all.

It is the simplest way to spend a reward model, and a strong baseline: every RL method in the course
has to beat it at the same KL. The KL of the best-of-n policy to the policy it samples from is at most

    KL(best-of-n || pi) <= log n - (n - 1) / n

(Stiennon et al. 2020 quote it as exact; Beirami et al. 2024 show it is an upper bound, reached only when the
n samples never repeat), so n = 16 costs at most about 1.8 nats. A small model repeats itself (many prompts
have one obvious answer), and then the bound is loose. ``estimated_kl`` gives the course's estimate: the
exact KL of best-of-k on the distribution of the samples drawn, repeats merged (below).

One set of n samples per prompt gives the whole curve k = 1, 2, ..., n:
any k of the n samples are a best-of-k draw, and averaging over *all* k-subsets (not just the first k)
gives the same expectation with much less noise. Sort a prompt's samples by reward; the i-th lowest
(counting from 1) is the best of a random k-subset with probability C(i-1, k-1) / C(n, k)
(Nakano et al. 2021 and Gao et al. 2022 use this estimator).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlhf_course.simulation import data, feedback, human, world


def kl_upper_bound(n: int) -> float:
    """The upper bound log n - (n - 1) / n on best-of-n's KL to the sampling policy."""
    return math.log(n) - (n - 1) / n


def estimated_kl(responses: list[list[str]], scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per task, the KL of best-of-k to the sampling policy, estimated from that task's samples: (tasks,).

    Each task's samples stand for the policy: a distinct reply drawn c of n times has probability p = c / n.
    Sort the distinct replies by reward; with F the cumulative probability up to and including a reply,
    best-of-k picks it with probability F^k - F_prev^k (the largest of k draws lands on it: Beirami et al.
    2024 derive the same law), and the KL is the sum of q log(q / p) over the distinct replies. This is exact
    for the samples' distribution; for the policy itself it is an estimate: it sees repeats only as often as
    n samples show them, so where replies rarely repeat it stays near the upper bound, which it never exceeds.
    """
    n = scores.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the {n} samples drawn, got {k}")
    kls = []
    for group, row in zip(responses, scores.tolist()):
        reward_of = {}
        for reply, reward in zip(group, row):
            reward_of.setdefault(reply, reward)  # one reply, one reward (the first seen; batching may jitter it)
        mass = {}  # each reward level's probability: its replies' draws, over n
        for reply in group:
            mass[reward_of[reply]] = mass.get(reward_of[reply], 0.0) + 1 / n
        # within a level best-of-k picks in proportion to p, so only the levels carry KL
        p = torch.tensor([mass[level] for level in sorted(mass)], dtype=torch.float64)  # (levels,), lowest first
        cumulative = p.cumsum(0).clamp(max=1.0)
        picked = cumulative**k - torch.cat([cumulative.new_zeros(1), cumulative[:-1]]) ** k  # (levels,)
        kls.append(max(torch.xlogy(picked, picked / p).sum().item(), 0.0))
    return torch.tensor(kls, dtype=torch.float64)


def sample_and_score(
    policy, tokenizer, tasks: list[world.Task], n: int, scorer, *, temperature: float = 1.0, seed: int = 0
) -> tuple[list[list[str]], torch.Tensor]:
    """n samples per task and their reward: (responses per task, scores (tasks, n))."""
    responses = feedback.sample_candidates(policy, tokenizer, tasks, n, temperature, seed)
    flat_tasks = [task for task in tasks for _ in range(n)]
    scores = torch.as_tensor(scorer(flat_tasks, [r for group in responses for r in group]), dtype=torch.float32)
    return responses, scores.view(len(tasks), n)


def save_samples(tasks: list[world.Task], responses: list[list[str]], scores: torch.Tensor, path: str | Path) -> Path:
    return data.save_jsonl(
        [
            {"task": feedback.task_record(t), "responses": group, "scores": row}
            for t, group, row in zip(tasks, responses, scores.tolist())
        ],
        path,
    )


def load_samples(path: str | Path) -> tuple[list[world.Task], list[list[str]], torch.Tensor]:
    """What ``save_samples`` wrote: tasks, n responses per task, and their scores (tasks, n)."""
    rows = data.load_jsonl(path, "samples").to_list()
    n = len(rows[0]["responses"])
    for number, row in enumerate(rows, start=1):
        if not len(row["responses"]) == len(row["scores"]) == n:
            raise data.DataFileError(
                f"{path}, row {number}: expected {n} responses and {n} scores, got "
                f"{len(row['responses'])} and {len(row['scores'])}"
            )
    return (
        [feedback.task_of(r["task"]) for r in rows],
        [r["responses"] for r in rows],
        torch.tensor([r["scores"] for r in rows], dtype=torch.float32),
    )


def expected_best_of_k(scores: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """Expected ``values`` of the sample that best-of-k picks, over all k-subsets: (tasks, n) x2 -> (tasks,)."""
    n = scores.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the {n} samples drawn, got {k}")
    # weight of the i-th lowest score (i = 1..n) being the maximum of a random k-subset
    weights = torch.tensor([math.comb(i - 1, k - 1) / math.comb(n, k) for i in range(1, n + 1)], dtype=torch.float64)
    order = scores.argsort(dim=1, stable=True)  # (tasks, n), lowest reward first
    return values.double().gather(1, order) @ weights


def per_sample(tasks: list[world.Task], responses: list[list[str]]) -> dict[str, torch.Tensor]:
    """Gold score, exact match and length in words of every sample: each (tasks, n)."""

    def table(fn):
        return torch.tensor([[float(fn(t, r)) for r in group] for t, group in zip(tasks, responses)])

    return {
        "gold": table(human.gold_score),
        "accuracy": table(world.is_correct),
        "words": table(lambda t, r: len(r.split())),
    }


def curve(tasks: list[world.Task], responses: list[list[str]], scores: torch.Tensor, ks: list[int]) -> list[dict]:
    """Expected gold score, exact match, length and proxy score of best-of-k for each k in ``ks``, with its KL
    (``kl``: the estimate, averaged over tasks; ``kl_bound``: log k - (k - 1) / k)."""
    values = {**per_sample(tasks, responses), "proxy_reward": scores}
    return [
        {
            "n": k,
            "kl": estimated_kl(responses, scores, k).mean().item(),
            "kl_bound": kl_upper_bound(k),
            **{name: expected_best_of_k(scores, v, k).mean().item() for name, v in values.items()},
        }
        for k in ks
    ]
