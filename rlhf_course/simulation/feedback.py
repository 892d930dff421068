"""Collecting human feedback: samples from the SFT model, judged by a team of simulated labelers.

As in InstructGPT, several responses are sampled per prompt and labelers judge them. The team has
labelers of different reliability (Bradley-Terry temperature); every judgment is kept raw, with who
gave it, and the comparisons are also written in TRL's preference format (prompt/chosen/rejected).

Two measurements keep the reward model honest:

* the **noise ceiling**: how often the labels agree with the gold ordering. A reward model trained on
  these labels cannot be expected to agree with them more often than they agree with the truth;
* **inter-labeler agreement**: on pairs judged twice, how often two labelers agree, which is how real
  teams estimate reliability when no gold exists.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict

from rlhf_course.core import chat
from rlhf_course.simulation import human, world

TEAM = (
    human.SimulatedHuman("expert", temperature=0.02, noise=0.05),
    human.SimulatedHuman("careful", temperature=0.05, noise=0.1),
    human.SimulatedHuman("hasty", temperature=0.2, noise=0.3),
    human.SimulatedHuman("careless", temperature=1.0, noise=0.8),
)


def sample_candidates(
    model, tokenizer, tasks: list[world.Task], n: int = 4, temperature: float = 1.0, seed: int = 0
) -> list[list[str]]:
    """``n`` sampled responses for every task (one list per task)."""
    repeated = [task for task in tasks for _ in range(n)]
    replies = chat.respond(model, tokenizer, repeated, temperature=temperature, seed=seed, batch_size=128)
    return [replies[i * n : (i + 1) * n] for i in range(len(tasks))]


def judge_pairs(
    tasks: list[world.Task], candidates: list[list[str]], team=TEAM, seed: int = 0, double_share: float = 0.2
) -> list[dict]:
    """Raw comparisons: every pair of distinct candidates of a task, each judged by a random labeler.

    As in InstructGPT, all K(K-1)/2 pairs of a prompt's K responses are compared. A share of the pairs
    (``double_share``) is judged by a second labeler too, to measure agreement.
    """
    rng = random.Random(f"judge:{seed}")
    raw = []
    for task, replies in zip(tasks, candidates):
        for a, b in itertools.combinations(dict.fromkeys(replies), 2):
            if rng.random() < 0.5:  # no position bias: which response is shown first is random
                a, b = b, a
            judges = rng.sample(team, 2 if rng.random() < double_share else 1)
            for judge in judges:
                first = judge.prefers_first(task, a, b, rng)
                raw.append(
                    {
                        "task": task_record(task),
                        "a": a,
                        "b": b,
                        "labeler": judge.name,
                        "choice": "a" if first else "b",
                        "pair_id": f"{task.key}|{a}|{b}",
                    }
                )
    return raw


def candidates_of(raw: list[dict]) -> tuple[list[world.Task], list[list[str]]]:
    """The prompts and distinct responses that raw comparisons were made from, to be judged again by someone else."""
    by_prompt: dict[str, tuple[world.Task, dict]] = {}
    for j in raw:
        task, seen = by_prompt.setdefault(repr(j["task"]["prompt"]), (task_of(j["task"]), {}))
        seen.update(dict.fromkeys((j["a"], j["b"])))
    return [task for task, _ in by_prompt.values()], [list(seen) for _, seen in by_prompt.values()]


def automatic_comparisons(tasks: list[world.Task], seed: int = 0) -> list[dict]:
    """Comparisons that cost no labeler: a verified answer against the same reply with a wrong answer.

    This is preference-model pretraining (Askell et al. 2021): cheap, automatically built comparisons
    teach the reward model to read the content of a reply before the scarce human comparisons teach
    it what people prefer. Both replies share one style, so only the answer tells them apart.
    """
    rng = random.Random(f"automatic:{seed}")
    rows = []
    for task in tasks:
        style = rng.choice(list(world.STYLES))
        rows.append(
            {
                "prompt": task.prompt,
                **task_record(task),
                "chosen": [{"role": "assistant", "content": world.render(task, style)}],
                "rejected": [{"role": "assistant", "content": world.render(task, style, task.wrong)}],
            }
        )
    return rows


def task_record(task: world.Task) -> dict:
    return {"family": task.family, "prompt": task.prompt, "answer": task.answer, "key": task.key}


def task_of(record: dict) -> world.Task:
    return world.Task(record["family"], tuple(record["prompt"]), record["answer"], record["key"])


def to_preferences(raw: list[dict]) -> list[dict]:
    """TRL preference rows (conversational) from raw comparisons, keeping the labeler's name."""
    rows = []
    for j in raw:
        chosen, rejected = (j["a"], j["b"]) if j["choice"] == "a" else (j["b"], j["a"])
        rows.append(
            {
                "prompt": j["task"]["prompt"],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "labeler": j["labeler"],
                "family": j["task"]["family"],
                "answer": j["task"]["answer"],
                "key": j["task"]["key"],
            }
        )
    return rows


def gold_order(row: dict) -> int:
    """+1 if the chosen response has the higher gold score, -1 if lower, 0 on a tie."""
    task = task_of(row)
    diff = human.gold_score(task, row["chosen"][-1]["content"]) - human.gold_score(task, row["rejected"][-1]["content"])
    return (diff > 1e-9) - (diff < -1e-9)


def noise_ceiling(rows: list[dict]) -> float:
    """How often the labels agree with the gold ordering, over pairs whose gold scores differ."""
    orders = [gold_order(r) for r in rows]
    decided = [o for o in orders if o != 0]
    return sum(o > 0 for o in decided) / max(1, len(decided))


def agreement_by_labeler(raw: list[dict]) -> dict[str, float]:
    """Each labeler's agreement with the gold ordering (only the simulator can know this)."""
    hits = defaultdict(list)
    for row, j in zip(to_preferences(raw), raw):
        order = gold_order(row)
        if order:
            hits[j["labeler"]].append(order > 0)
    return {name: sum(h) / len(h) for name, h in sorted(hits.items())}


def inter_labeler_agreement(raw: list[dict]) -> dict[tuple[str, str], float]:
    """On pairs judged by two labelers: how often each pair of labelers gave the same answer."""
    by_pair = defaultdict(list)
    for j in raw:
        by_pair[j["pair_id"]].append(j)
    agree = defaultdict(list)
    for judgments in by_pair.values():
        for x, y in itertools.combinations(judgments, 2):
            names = tuple(sorted((x["labeler"], y["labeler"])))
            agree[names].append(x["choice"] == y["choice"])
    return {names: sum(v) / len(v) for names, v in sorted(agree.items())}


def reliability_from_agreement(raw: list[dict]) -> dict[str, float]:
    """Estimate each labeler's accuracy from double-labeled pairs alone (no gold needed).

    If labelers err independently with accuracies p_i, two of them agree with probability
    p_i p_j + (1 - p_i)(1 - p_j). Writing q_i = 2 p_i - 1, the agreement a_ij satisfies
    2 a_ij - 1 = q_i q_j; the q's follow from the pairwise agreements by least squares in log space.
    """
    pairs = inter_labeler_agreement(raw)
    names = sorted({n for pair in pairs for n in pair})
    log_q = {n: 0.0 for n in names}
    for _ in range(200):  # Gauss-Seidel on log q_i + log q_j = log(2 a_ij - 1)
        for n in names:
            terms = [
                (max(2 * a - 1, 1e-3), m) for (x, y), a in pairs.items() if n in (x, y) for m in [y if x == n else x]
            ]
            if terms:
                log_q[n] = sum(math.log(t) - log_q[m] for t, m in terms) / len(terms)
    return {n: (1 + math.exp(min(log_q[n], 0.0))) / 2 for n in names}


def correctness_pairs(tasks: list[world.Task], seed: int = 0) -> list[dict]:
    """Held-out pairs that differ only in correctness: the same style around a right and a wrong answer."""
    return automatic_comparisons(tasks, seed=seed + 1_000_003)


def single_judgments(
    tasks: list[world.Task], candidates: list[list[str]], kind: str, team=TEAM, seed: int = 0
) -> list[dict]:
    """Raw judgments of single responses, one per distinct candidate, each by a random labeler.

    ``kind`` is ``"rating"`` (1-5) or ``"thumbs_up"`` (True/False).
    """
    judge_one = {
        "rating": lambda j, t, r, rng: j.rate(t, r, rng),
        "thumbs_up": lambda j, t, r, rng: j.thumbs_up(t, r, rng),
    }[kind]
    rng = random.Random(f"{kind}:{seed}")
    out = []
    for task, replies in zip(tasks, candidates):
        for reply in dict.fromkeys(replies):
            judge = rng.choice(team)
            out.append(
                {
                    "task": task_record(task),
                    "completion": reply,
                    "labeler": judge.name,
                    kind: judge_one(judge, task, reply, rng),
                }
            )
    return out


def to_single_rows(raw: list[dict]) -> list[dict]:
    """Training rows from single judgments: ``{"prompt", "completion", "rating"}`` for ratings, and
    TRL's unpaired preference format ``{"prompt", "completion", "label"}`` for thumbs."""
    rows = []
    for j in raw:
        row = {"prompt": j["task"]["prompt"], "completion": [{"role": "assistant", "content": j["completion"]}]}
        if "rating" in j:
            row["rating"] = j["rating"]
        else:
            row["label"] = j["thumbs_up"]
        rows.append(row)
    return rows
