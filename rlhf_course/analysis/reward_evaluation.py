"""How good is a reward model, and where is it wrong?

Held-out comparisons give four numbers, each next to what bounds it:

* **label accuracy**: agreement with the labelers' choices, bounded by the **noise ceiling**
  (how often those labels agree with the gold ordering);
* **gold accuracy**: agreement with the gold ordering, which only a simulated world can measure;
* **correctness accuracy**: gold accuracy on pairs that differ only in whether the answer is right.
  A reward model that learns only style teaches the policy only style;
* **Spearman correlation** between reward and gold score over all sampled responses, and its mean
  within each prompt's samples (what comparisons actually train).

The calibration curve compares the Bradley-Terry probability ``sigmoid(r_a - r_b)`` with how often
labelers actually preferred ``a``; the disagreement table lists the pairs the model gets most
confidently wrong.
"""

from __future__ import annotations

import torch

from rlhf_course.algorithms import reward_model
from rlhf_course.simulation import feedback, human, world


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


def pair_scores(model, tokenizer, raw: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised rewards of responses ``a`` and ``b`` of raw judgments: two (pairs,) tensors."""
    prompts = [j["task"]["prompt"] for j in raw]
    return (
        reward_model.score(model, tokenizer, prompts, [j["a"] for j in raw]),
        reward_model.score(model, tokenizer, prompts, [j["b"] for j in raw]),
    )


def agreement(reward_diff: torch.Tensor, truth_diff: torch.Tensor) -> float:
    """Share of pairs where the reward orders a and b as the truth does; a reward tie counts half."""
    return ((reward_diff * truth_diff > 0).float() + 0.5 * (reward_diff == 0).float()).mean().item()


def calibration_bins(
    r_a: torch.Tensor, r_b: torch.Tensor, chose_a: torch.Tensor, reward_std: float, bins: int = 10
) -> list[tuple[float, float, int]]:
    """(mean predicted P(a preferred), observed share of labels for a, pairs) per non-empty bin."""
    # Bradley-Terry works on the raw scale; the normalisation divided it by reward_std
    predicted = torch.sigmoid((r_a - r_b) * reward_std)  # (pairs,)
    which = (predicted * bins).long().clamp(max=bins - 1)
    return [
        (predicted[which == k].mean().item(), chose_a[which == k].float().mean().item(), int((which == k).sum()))
        for k in range(bins)
        if (which == k).any()
    ]


def calibration(model, tokenizer, raw: list[dict], bins: int = 10) -> list[tuple[float, float, int]]:
    r_a, r_b = pair_scores(model, tokenizer, raw)
    chose_a = torch.tensor([j["choice"] == "a" for j in raw])
    return calibration_bins(r_a, r_b, chose_a, model.config.reward_std, bins)


def disagreements(model, tokenizer, raw: list[dict], k: int = 8) -> list[dict]:
    """The ``k`` pairs where reward and gold disagree most: gold prefers one, the reward the other."""
    r_a, r_b = pair_scores(model, tokenizer, raw)
    out = []
    for j, ra, rb in zip(raw, r_a.tolist(), r_b.tolist()):
        task = feedback.task_of(j["task"])
        gold_a, gold_b = human.gold_score(task, j["a"]), human.gold_score(task, j["b"])
        if (gold_a - gold_b) * (ra - rb) < 0:
            out.append(
                {
                    "prompt": task.prompt[-1]["content"],
                    "a": j["a"],
                    "b": j["b"],
                    "gold_a": gold_a,
                    "gold_b": gold_b,
                    "reward_a": ra,
                    "reward_b": rb,
                    "severity": abs(ra - rb) * abs(gold_a - gold_b),
                }
            )
    return sorted(out, key=lambda d: -d["severity"])[:k]


def evaluate(
    model, tokenizer, test_raw: list[dict], test_tasks: list[world.Task], test_candidates: list[list[str]]
) -> dict:
    """Every number of the reward stage on held-out prompts (see the module docstring).

    Each held-out pair is scored once; labels, gold scores and correctness are compared with that.
    """
    r_a, r_b = pair_scores(model, tokenizer, test_raw)  # (pairs,) each
    tasks = [feedback.task_of(j["task"]) for j in test_raw]
    chose_a = torch.tensor([j["choice"] == "a" for j in test_raw])
    label_diff = chose_a.float() * 2 - 1  # +1 where the label prefers a
    gold_diff = torch.tensor(
        [human.gold_score(t, j["a"]) - human.gold_score(t, j["b"]) for t, j in zip(tasks, test_raw)]
    )
    decided = gold_diff.abs() > 1e-9
    right = torch.tensor([[world.is_correct(t, j["a"]), world.is_correct(t, j["b"])] for t, j in zip(tasks, test_raw)])
    same_style = torch.tensor([world.style_of(j["a"]) == world.style_of(j["b"]) for j in test_raw])
    only_correctness = decided & same_style & (right[:, 0] != right[:, 1])

    correctness = feedback.correctness_pairs(test_tasks)  # chosen = right answer, in the same style
    prompts = [r["prompt"] for r in correctness]
    correct_diff = reward_model.score(
        model, tokenizer, prompts, [r["chosen"][-1]["content"] for r in correctness]
    ) - reward_model.score(model, tokenizer, prompts, [r["rejected"][-1]["content"] for r in correctness])
    families = [r["family"] for r in correctness]
    by_family = {
        f: agreement(correct_diff[[g == f for g in families]], torch.ones(families.count(f)))
        for f in sorted(set(families))
    }

    pairs = [(t, r) for t, replies in zip(test_tasks, test_candidates) for r in dict.fromkeys(replies)]
    rewards = reward_model.score(model, tokenizer, [t.prompt for t, _ in pairs], [r for _, r in pairs])
    gold = [human.gold_score(t, r) for t, r in pairs]
    # Comparisons only ever contrast replies to the same prompt, so Bradley-Terry leaves each prompt's
    # reward level free; the pooled correlation depends on those levels, the within-prompt one does not.
    groups = {}
    for i, (t, _) in enumerate(pairs):
        groups.setdefault(t.key, []).append(i)
    within = [
        spearman(rewards[g], [gold[i] for i in g])
        for g in groups.values()
        if len(g) >= 3 and len({gold[i] for i in g}) > 1
    ]
    return {
        "accuracy": agreement(r_a - r_b, label_diff),
        "noise_ceiling": (label_diff[decided] * gold_diff[decided] > 0).float().mean().item(),
        "gold_accuracy": agreement((r_a - r_b)[decided], gold_diff[decided]),
        "correctness_accuracy": agreement(correct_diff, torch.ones(len(correct_diff))),
        "correctness_by_family": by_family,
        "sampled_correctness_accuracy": agreement((r_a - r_b)[only_correctness], gold_diff[only_correctness]),
        "sampled_correctness_pairs": int(only_correctness.sum()),
        "gold_spearman": spearman(rewards, gold),
        "gold_spearman_within_prompt": sum(within) / max(1, len(within)),
        "calibration": calibration_bins(r_a, r_b, chose_a, model.config.reward_std),
        "test_comparisons": len(test_raw),
    }
