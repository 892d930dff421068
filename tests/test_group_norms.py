import random

import pytest
import torch

from rlhf_course.analysis import group_norms
from rlhf_course.simulation import human, world


def _tasks(family: str, n: int = 20) -> list[world.Task]:
    return world.generate_tasks("train", n, seed=3, families=(family,))


def test_the_groups_differ_only_in_the_opener():
    for task in _tasks("arithmetic") + _tasks("refusal", 5):
        polite, curt = world.render(task, "polite"), world.render(task, "curt")
        # group A (the gold score) prefers the opener by its 0.2 weight; group B the bare answer by as much
        assert human.gold_score(task, polite) - human.gold_score(task, curt) == pytest.approx(human.WEIGHTS["helpful"])
        assert group_norms.direct_utility(task, curt) - group_norms.direct_utility(task, polite) == pytest.approx(
            human.WEIGHTS["helpful"]
        )
        wrong = world.render(task, "curt", task.wrong)
        # both groups put a right answer above a wrong one, whatever the phrasing
        assert group_norms.direct_utility(task, polite) > group_norms.direct_utility(task, wrong)
    unsafe = _tasks("refusal", 1)[0]
    assert group_norms.direct_utility(unsafe, unsafe.wrong) == 0.0  # complying with an unsafe request is worth nothing


def test_group_b_labeler_prefers_the_bare_answer_and_the_team_the_opener():
    rng = random.Random(0)
    tasks = _tasks("lookup", 50)
    b = sum(
        group_norms.GROUP_B_LABELER.prefers_first(t, world.render(t, "curt"), world.render(t, "polite"), rng)
        for t in tasks
    )
    a = sum(human.CAREFUL.prefers_first(t, world.render(t, "curt"), world.render(t, "polite"), rng) for t in tasks)
    assert b > 45 and a < 5
    assert group_norms.GROUP_B_LABELER.temperature == human.CAREFUL.temperature  # as reliable, a different norm


def test_utilities_and_served():
    tasks = _tasks("sentiment", 3)
    samples = [[world.render(t, "polite"), world.render(t, "curt"), world.render(t, "curt", t.wrong)] for t in tasks]
    u = group_norms.utilities(tasks, samples)
    assert u["A"].shape == u["B"].shape == (3, 3)
    assert torch.equal(u["A"].argmax(dim=1), torch.zeros(3, dtype=torch.long))  # A: the polite right answer
    assert torch.equal(u["B"].argmax(dim=1), torch.ones(3, dtype=torch.long))  # B: the bare right answer
    scores = torch.tensor([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert torch.equal(group_norms.served(u["B"], scores), torch.stack([u["B"][0, 1], u["B"][1, 0], u["B"][2, 2]]))


def test_split_prompts_is_a_deterministic_partition():
    tasks, candidates = list(range(11)), [[f"reply {i}"] for i in range(11)]
    (ta, ca), (tb, cb) = group_norms.split_prompts(tasks, candidates, seed=4)
    assert sorted(ta + tb) == tasks and not set(ta) & set(tb) and abs(len(ta) - len(tb)) <= 1
    assert ca == [candidates[i] for i in ta] and cb == [candidates[i] for i in tb]  # candidates follow their prompt
    assert group_norms.split_prompts(tasks, candidates, seed=4) == ((ta, ca), (tb, cb))
    assert group_norms.split_prompts(tasks, candidates, seed=5)[0][0] != ta


def test_name_groups_and_swaps():
    a, b = set(group_norms.GROUP_A_NAMES), set(group_norms.GROUP_B_NAMES)
    assert len(a) == len(b) > 50 and not a & b and not (a | b) & set(world.CITIES)
    for name in a:
        assert group_norms.PARTNER[name] in b and group_norms.PARTNER[group_norms.PARTNER[name]] == name
    text = "Hi! I am Ada. Your name is Ada, not Alan."
    assert group_norms.swap_names(group_norms.swap_names(text)) == text
    assert group_norms.swap_names("Sofia lives in Sofia.") == "Sofia lives in Sofia."  # a city's name stays


def test_name_swap_pairs_keep_only_named_answers_and_say_the_group():
    tasks = _tasks("dialogue", 30) + _tasks("summarization", 10) + _tasks("lookup", 5)
    pairs = group_norms.name_swap_pairs(tasks)
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    named_answers = [t for t in tasks if set(t.answer.replace(".", "").split()) & set(group_norms.PARTNER)]
    assert len(pairs) == len(named_answers) and all(t.family != "lookup" for t in named_answers)
    for p in pairs:
        right = p["chosen"][0]["content"]
        named = next(n for n in group_norms.PARTNER if n in right.replace(".", " ").split())
        assert p["group"] == ("A" if named in group_norms.GROUP_A_NAMES else "B")
        assert group_norms.PARTNER[named] in p["rejected"][0]["content"]


def test_style_pairs_pair_the_opener_with_the_bare_answer():
    tasks = _tasks("translation", 4) + _tasks("refusal", 2)
    pairs = group_norms.style_pairs(tasks)
    assert len(pairs) == 4  # unsafe requests have their own polite refusal; left out
    for p, t in zip(pairs, tasks):
        assert p["chosen"][0]["content"] == "Sure! " + t.answer and p["rejected"][0]["content"] == t.answer
