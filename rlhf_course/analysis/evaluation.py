"""Evaluation on held-out prompts: exact match per family, BLEU for translation, the gold score.

Exact match compares the *core* of a response (the reply without the known politeness prefixes and
sign-offs) with the task's answer, so a polite correct answer counts as correct and a near miss does
not. BLEU comes from sacrebleu, the maintained reference implementation. The gold score is the
simulated human's hidden utility: lessons may look at it, training never does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sacrebleu
import torch

from rlhf_course.algorithms.rollouts import collect
from rlhf_course.core.chat import respond
from rlhf_course.simulation import human, world


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean of ``values`` (prompts, samples) and its standard error over prompts.

    Samples of one prompt are not independent (they share the prompt's difficulty), so the standard error
    comes from the spread of the per-prompt means: std / sqrt(prompts).
    """
    per_prompt = values.double().mean(dim=1)  # (prompts,)
    se = per_prompt.std().item() / len(per_prompt) ** 0.5 if len(per_prompt) > 1 else float("nan")
    return per_prompt.mean().item(), se


@dataclass
class Report:
    accuracy: float
    by_family: dict[str, float]
    bleu: float
    gold: float
    replies: list[str] = field(repr=False)
    accuracy_se: float = float("nan")  # standard errors over the prompts
    gold_se: float = float("nan")

    def table(self) -> str:
        lines = [f"{'family':<14} accuracy"] + [f"{f:<14} {a:.2f}" for f, a in self.by_family.items()]
        lines.append(
            f"{'overall':<14} {self.accuracy:.3f} ± {self.accuracy_se:.3f}   (translation BLEU "
            f"{self.bleu:.1f}, gold {self.gold:.3f} ± {self.gold_se:.3f}; ± one standard error)"
        )
        return "\n".join(lines)


def score(tasks: list[world.Task], replies: list[str]) -> Report:
    if len(tasks) != len(replies):
        raise ValueError(f"{len(tasks)} tasks but {len(replies)} replies")
    hits = defaultdict(list)
    for task, reply in zip(tasks, replies):
        hits[task.family].append(world.is_correct(task, reply))
    by_family = {f: sum(hits[f]) / len(hits[f]) for f in world.FAMILIES if hits[f]}
    pairs = [(world.core_of(r), t.answer) for t, r in zip(tasks, replies) if t.family == "translation"]
    bleu = sacrebleu.corpus_bleu([h for h, _ in pairs], [[ref for _, ref in pairs]]).score if pairs else float("nan")
    accuracy, accuracy_se = mean_and_se(torch.tensor([[float(world.is_correct(t, r))] for t, r in zip(tasks, replies)]))
    gold, gold_se = mean_and_se(torch.tensor([[human.gold_score(t, r)] for t, r in zip(tasks, replies)]))
    return Report(accuracy, by_family, bleu, gold, replies, accuracy_se, gold_se)


def evaluate(model, tokenizer, tasks: list[world.Task], **kwargs) -> Report:
    return score(tasks, respond(model, tokenizer, tasks, **kwargs))


def evaluate_policy(
    policy,
    reference,
    tokenizer,
    tasks: list[world.Task],
    scorer,
    *,
    samples_per_prompt: int = 4,
    temperature: float = 1.0,
    batch_size: int = 128,
    seed: int = 0,
) -> dict:
    """A policy as RL sees it: ``samples_per_prompt`` samples at ``temperature`` for each held-out task.

    Returns the mean gold score, exact-match accuracy, the reward ``scorer``'s mean (the proxy), and the
    mean KL to ``reference`` (sum over response tokens of log pi - log pi_ref), plus accuracy by family, and
    the standard errors (over prompts) of gold, accuracy and KL as ``gold_se``, ``accuracy_se``, ``kl_se``.
    """
    repeated = [task for task in tasks for _ in range(samples_per_prompt)]
    replies, kls, scores = [], [], []
    for start in range(0, len(repeated), batch_size):
        rollout = collect(
            policy,
            reference,
            scorer,
            tokenizer,
            repeated[start : start + batch_size],
            temperature=temperature,
            no_eos_penalty=None,
            seed=seed + start,
        )
        replies += rollout.responses
        kls += rollout.kl.tolist()
        scores += rollout.scores.tolist()
    report = score(repeated, replies)
    per_prompt = (len(tasks), samples_per_prompt)
    gold, gold_se = mean_and_se(
        torch.tensor([human.gold_score(t, r) for t, r in zip(repeated, replies)]).view(per_prompt)
    )
    accuracy, accuracy_se = mean_and_se(
        torch.tensor([float(world.is_correct(t, r)) for t, r in zip(repeated, replies)]).view(per_prompt)
    )
    kl, kl_se = mean_and_se(torch.tensor(kls).view(per_prompt))
    return {
        "gold": gold,
        "gold_se": gold_se,
        "accuracy": accuracy,
        "accuracy_se": accuracy_se,
        "by_family": report.by_family,
        "proxy_reward": sum(scores) / len(scores),
        "kl": kl,
        "kl_se": kl_se,
        "samples": len(replies),
    }
