import random

import pytest
import torch

from rlhf_course.analysis import group_norms
from rlhf_course.simulation import feedback, human, world


def _tasks(family: str, n: int = 20) -> list[world.Task]:
    return world.generate_tasks("train", n, seed=3, families=(family,))


def test_the_groups_differ_only_in_the_opener():
    helpful = pytest.approx(human.WEIGHTS["helpful"])
    for task in _tasks("arithmetic") + _tasks("refusal", 5):
        polite, bare = world.render(task, "polite"), world.render(task, "curt")
        # group A (the gold score) prefers the opener by its 0.2 weight; group B the bare answer by as much
        assert human.gold_score(task, polite) - human.gold_score(task, bare) == helpful
        assert group_norms.direct_utility(task, bare) - group_norms.direct_utility(task, polite) == helpful
        # both groups put a right answer above a wrong one, however it is phrased
        assert group_norms.direct_utility(task, polite) > group_norms.direct_utility(
            task, world.render(task, "curt", task.wrong)
        )
        # a rambling reply has neither the opener nor the bare form: neither group's 0.2
        rambling = world.render(task, "rambling")
        assert group_norms.direct_utility(task, rambling) == pytest.approx(human.gold_score(task, rambling))
    unsafe = _tasks("refusal", 1)[0]
    assert group_norms.direct_utility(unsafe, unsafe.wrong) == 0.0  # complying with an unsafe request: nothing


def test_group_b_labeler_prefers_the_bare_answer_and_the_team_the_opener():
    rng = random.Random(0)
    tasks = _tasks("lookup", 50)
    pairs = [(t, world.render(t, "curt"), world.render(t, "polite")) for t in tasks]
    assert sum(group_norms.GROUP_B_LABELER.prefers_first(t, a, b, rng) for t, a, b in pairs) > 45
    assert sum(human.CAREFUL.prefers_first(t, a, b, rng) for t, a, b in pairs) < 5
    assert group_norms.GROUP_B_LABELER.temperature == human.CAREFUL.temperature  # as reliable, another norm


def test_utilities_and_served():
    tasks = _tasks("sentiment", 3)
    samples = [[world.render(t, "polite"), world.render(t, "curt"), world.render(t, "curt", t.wrong)] for t in tasks]
    u = group_norms.utilities(tasks, samples)
    assert u["A"].shape == u["B"].shape == (3, 3)
    assert torch.equal(u["A"].argmax(dim=1), torch.zeros(3, dtype=torch.long))  # A: the polite right answer
    assert torch.equal(u["B"].argmax(dim=1), torch.ones(3, dtype=torch.long))  # B: the bare right answer
    scores = torch.tensor([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    assert torch.equal(group_norms.served(u["B"], scores), torch.stack([u["B"][0, 1], u["B"][1, 0], u["B"][2, 2]]))


def _rows(n_prompts: int = 9, per_prompt: int = 3) -> list[dict]:
    tasks = _tasks("translation", n_prompts)
    return [
        {
            "prompt": t.prompt,
            **feedback.task_record(t),
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, style)}],
        }
        for t in tasks
        for style in ("curt", "rambling", "curt")[:per_prompt]
    ]


def test_prompt_halves_split_by_prompt_not_by_row():
    rows = _rows()
    first, second = group_norms.prompt_halves(rows, seed=4)
    assert sorted(first.tolist() + second.tolist()) == list(range(len(rows)))
    prompts = [{repr(rows[i]["prompt"]) for i in half.tolist()} for half in (first, second)]
    assert not prompts[0] & prompts[1] and abs(len(prompts[0]) - len(prompts[1])) <= 1  # every row of a prompt together
    again = group_norms.prompt_halves(rows, seed=4)
    assert torch.equal(again[0], first) and not torch.equal(group_norms.prompt_halves(rows, seed=5)[0], first)


def test_relabel_swaps_exactly_where_the_new_labeler_disagrees():
    rows = _rows(per_prompt=2)  # polite over bare, and polite over rambling: group A's order
    chosen = torch.arange(1, len(rows) + 1).float()[:, None]  # (rows, 1): distinct from rejected
    rejected = -chosen
    new_c, new_r = group_norms.relabel(chosen, rejected, rows, group_norms.GROUP_B_LABELER, seed=0)
    swapped = (new_c != chosen).squeeze(1)
    bare_rows = torch.tensor([r["rejected"][0]["content"] == r["answer"] for r in rows])
    assert torch.equal(swapped, bare_rows)  # group B prefers the bare answer, and the opener to rambling
    assert torch.equal(torch.where(swapped[:, None], rejected, chosen), new_c)
    assert torch.equal(torch.where(swapped[:, None], chosen, rejected), new_r)
    same_c, _ = group_norms.relabel(chosen, rejected, rows, human.CAREFUL, seed=0)
    assert torch.equal(same_c, chosen)  # the team's own labeler keeps every label


def test_style_pairs_pair_the_opener_with_the_bare_answer():
    tasks = _tasks("translation", 4) + _tasks("refusal", 2)
    pairs = group_norms.style_pairs(tasks)
    assert len(pairs) == 4  # unsafe requests have their own polite refusal; left out
    for p, t in zip(pairs, tasks):
        assert p["chosen"][0]["content"] == "Sure! " + t.answer and p["rejected"][0]["content"] == t.answer
