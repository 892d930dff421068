"""How good is a reward model, and where is it wrong?

Held-out comparisons give four numbers, each next to what bounds it:

* **label accuracy**: agreement with the labelers' choices, bounded by the **noise ceiling**
  (how often those labels agree with the gold ordering);
* **gold accuracy**: agreement with the gold ordering, which only a simulated world can measure;
* **correctness accuracy**: gold accuracy on pairs that differ only in whether the answer is right.
  A reward model that learns only style teaches the policy only style;
* **Spearman correlation** between reward and gold score over all sampled responses.

The calibration curve compares the Bradley-Terry probability ``sigmoid(r_a - r_b)`` with how often
labelers actually preferred ``a``; the disagreement table lists the pairs the model gets most
confidently wrong.
"""
from __future__ import annotations

import torch

from rlhf_course import feedback, human, reward_model, world


def spearman(x, y) -> float:
    """Spearman rank correlation (ties get their average rank)."""
    def ranks(v):
        v = torch.as_tensor(v, dtype=torch.float64)
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # average the ranks of tied values
            tied = v == value
            r[tied] = r[tied].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return (rx @ ry / (rx.norm() * ry.norm()).clamp(min=1e-12)).item()


def gold_oriented(rows: list[dict]) -> list[dict]:
    """The rows whose gold scores differ, turned so that ``chosen`` is the gold-better response."""
    out = []
    for row in rows:
        order = feedback.gold_order(row)
        if order:
            out.append(row if order > 0 else {**row, "chosen": row["rejected"], "rejected": row["chosen"]})
    return out


def sampled_correctness_pairs(rows: list[dict]) -> list[dict]:
    """Gold-oriented sampled pairs in the same style where exactly one answer is right."""
    out = []
    for row in gold_oriented(rows):
        task, a, b = feedback.task_of(row), row["chosen"][-1]["content"], row["rejected"][-1]["content"]
        if world.style_of(a) == world.style_of(b) and world.is_correct(task, a) != world.is_correct(task, b):
            out.append(row)
    return out


def pair_scores(model, tokenizer, raw: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised rewards of responses ``a`` and ``b`` of raw judgments: two (pairs,) tensors."""
    prompts = [j["task"]["prompt"] for j in raw]
    return (reward_model.score(model, tokenizer, prompts, [j["a"] for j in raw]),
            reward_model.score(model, tokenizer, prompts, [j["b"] for j in raw]))


def calibration(model, tokenizer, raw: list[dict], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted P(a preferred), observed share of labels for a, pairs) per non-empty bin."""
    r_a, r_b = pair_scores(model, tokenizer, raw)
    # Bradley-Terry works on the raw scale; the normalisation divided it by reward_std
    predicted = torch.sigmoid((r_a - r_b) * model.config.reward_std)  # (pairs,)
    observed = torch.tensor([j["choice"] == "a" for j in raw], dtype=torch.float32)
    which = (predicted * bins).long().clamp(max=bins - 1)
    return [(predicted[which == k].mean().item(), observed[which == k].mean().item(), int((which == k).sum()))
            for k in range(bins) if (which == k).any()]


def disagreements(model, tokenizer, raw: list[dict], k: int = 8) -> list[dict]:
    """The ``k`` pairs where reward and gold disagree most: gold prefers one, the reward the other."""
    r_a, r_b = pair_scores(model, tokenizer, raw)
    out = []
    for j, ra, rb in zip(raw, r_a.tolist(), r_b.tolist()):
        task = feedback.task_of(j["task"])
        gold_a, gold_b = human.gold_score(task, j["a"]), human.gold_score(task, j["b"])
        if (gold_a - gold_b) * (ra - rb) < 0:
            out.append({"prompt": task.prompt[-1]["content"], "a": j["a"], "b": j["b"], "gold_a": gold_a,
                        "gold_b": gold_b, "reward_a": ra, "reward_b": rb,
                        "severity": abs(ra - rb) * abs(gold_a - gold_b)})
    return sorted(out, key=lambda d: -d["severity"])[:k]


def evaluate(model, tokenizer, test_raw: list[dict], test_tasks: list[world.Task],
             test_candidates: list[list[str]]) -> dict:
    """Every number of the reward stage on held-out prompts (see the module docstring)."""
    rows = feedback.to_preferences(test_raw)
    correctness = feedback.correctness_pairs(test_tasks)
    sampled = sampled_correctness_pairs(rows)

    def wins(rows) -> torch.Tensor:  # (pairs,): 1 where the chosen reply scores higher, 0.5 on a tie
        prompts = [r["prompt"] for r in rows]
        chosen = reward_model.score(model, tokenizer, prompts, [r["chosen"][-1]["content"] for r in rows])
        rejected = reward_model.score(model, tokenizer, prompts, [r["rejected"][-1]["content"] for r in rows])
        return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()

    correct_wins = wins(correctness)
    families = [r["family"] for r in correctness]
    pairs = [(t, r) for t, replies in zip(test_tasks, test_candidates) for r in dict.fromkeys(replies)]
    rewards = reward_model.score(model, tokenizer, [t.prompt for t, _ in pairs], [r for _, r in pairs])
    return {
        "accuracy": wins(rows).mean().item(),
        "noise_ceiling": feedback.noise_ceiling(rows),
        "gold_accuracy": wins(gold_oriented(rows)).mean().item(),
        "correctness_accuracy": correct_wins.mean().item(),
        "correctness_by_family": {f: correct_wins[[g == f for g in families]].mean().item()
                                  for f in sorted(set(families))},
        "sampled_correctness_accuracy": wins(sampled).mean().item() if sampled else None,
        "sampled_correctness_pairs": len(sampled),
        "gold_spearman": spearman(rewards, [human.gold_score(t, r) for t, r in pairs]),
        "test_comparisons": len(rows),
    }
