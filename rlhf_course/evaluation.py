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

from rlhf_course import human, world
from rlhf_course.language_model import decode_responses, generate
from rlhf_course.rollouts import collect
from rlhf_course.sft import encode


def respond(model, tokenizer, tasks: list[world.Task], *, batch_size: int = 64, max_new_tokens: int = 40,
            temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[str]:
    """The model's reply to each task (greedy by default), batched with the KV cache."""
    model.eval()
    replies = []
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start:start + batch_size]
        prompts = [encode(tokenizer, task.prompt)[0] for task in chunk]
        sequences, mask = generate(model, prompts, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=seed + start)
        replies.extend(decode_responses(tokenizer, sequences, mask))
    return replies


@dataclass
class Report:
    accuracy: float
    by_family: dict[str, float]
    bleu: float
    gold: float
    replies: list[str] = field(repr=False)

    def table(self) -> str:
        lines = [f"{'family':<14} accuracy"] + [f"{f:<14} {a:.2f}" for f, a in self.by_family.items()]
        lines.append(f"{'overall':<14} {self.accuracy:.3f}   (translation BLEU {self.bleu:.1f}, gold {self.gold:.3f})")
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
    accuracy = sum(sum(h) for h in hits.values()) / len(tasks)
    gold = sum(human.gold_score(t, r) for t, r in zip(tasks, replies)) / len(tasks)
    return Report(accuracy, by_family, bleu, gold, replies)


def evaluate(model, tokenizer, tasks: list[world.Task], **kwargs) -> Report:
    return score(tasks, respond(model, tokenizer, tasks, **kwargs))


def evaluate_policy(policy, reference, tokenizer, tasks: list[world.Task], scorer, *, samples_per_prompt: int = 4,
                    temperature: float = 1.0, batch_size: int = 128, seed: int = 0) -> dict:
    """A policy as RL sees it: ``samples_per_prompt`` samples at ``temperature`` for each held-out task.

    Returns the mean gold score, exact-match accuracy, the reward ``scorer``'s mean (the proxy), and the
    mean KL to ``reference`` (sum over response tokens of log pi - log pi_ref), plus accuracy by family.
    """
    repeated = [task for task in tasks for _ in range(samples_per_prompt)]
    replies, kls, scores = [], [], []
    for start in range(0, len(repeated), batch_size):
        rollout = collect(policy, reference, scorer, tokenizer, repeated[start:start + batch_size],
                          temperature=temperature, no_eos_penalty=None, seed=seed + start)
        replies += rollout.responses
        kls += rollout.kl.tolist()
        scores += rollout.scores.tolist()
    report = score(repeated, replies)
    return {"gold": report.gold, "accuracy": report.accuracy, "by_family": report.by_family,
            "proxy_reward": sum(scores) / len(scores), "kl": sum(kls) / len(kls), "samples": len(replies)}
