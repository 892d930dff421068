"""Ratings, thumbs and comparisons: the single-judgment heads, labelers on their own scales, re-judging."""

import random

import pytest
import torch

from rlhf_course.analysis import feedback_kinds, probes
from rlhf_course.simulation import feedback, human, world


@pytest.fixture(scope="module")
def judged():
    tasks = [t for t in world.generate_tasks("train", 2) if not t.unsafe]  # a compliance with an unsafe one scores 0
    candidates = [
        [world.render(t, style) for style in world.STYLES] + [world.render(t, "curt", t.wrong)] for t in tasks
    ]
    return tasks, candidates


def test_single_heads_learn_the_direction_their_judgments_follow():
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    quality = x[:, 2]  # what the labelers judge
    ratings = (3 + 1.5 * quality).round().clamp(1, 5)
    thumbs = (quality > 0).float()
    for kind, y in (("ratings", ratings), ("thumbs", thumbs)):
        w = probes.fit_single_head(x, y, kind)
        assert w[2] > 0 and w[2].abs() == w.abs().max(), (kind, w)
    with pytest.raises(ValueError, match="comparisons are fitted by fit_head"):
        probes.fit_single_head(x, thumbs, "comparisons")


def test_an_offset_cancels_in_a_comparison_but_moves_ratings_and_thumbs(judged):
    tasks, candidates = judged
    generous, harsh = feedback_kinds.own_scale_team(0.25)[:2]
    assert (generous.offset, harsh.offset) == (0.25, -0.25)
    plain = human.SimulatedHuman(generous.name, generous.temperature, generous.noise)
    for task, replies in zip(tasks, candidates):
        a, b = replies[0], replies[-1]
        for judge in (generous, harsh):
            same = [plain.prefers_first(task, a, b, random.Random(k)) for k in range(50)]
            assert [judge.prefers_first(task, a, b, random.Random(k)) for k in range(50)] == same
        middling = world.render(task, "polite", task.wrong)  # gold 0.4: a thumb's bar (0.5) is within reach
        ups = [sum(j.thumbs_up(task, middling, random.Random(k)) for k in range(200)) for j in (harsh, plain, generous)]
        stars = [sum(j.rate(task, middling, random.Random(k)) for k in range(200)) for j in (harsh, plain, generous)]
        assert ups[0] <= ups[1] <= ups[2] and ups[0] < ups[2]
        assert stars[0] < stars[1] < stars[2]


def test_rejudging_keeps_replies_and_labelers_and_only_the_scale_moves(judged):
    tasks, candidates = judged
    for kind in ("rating", "thumbs_up"):
        raw = feedback.single_judgments(tasks, candidates, kind, seed=3)
        again = feedback_kinds.rejudge(raw, feedback.TEAM, seed=3)
        assert [(j["completion"], j["labeler"]) for j in again] == [(j["completion"], j["labeler"]) for j in raw]
        assert again == feedback_kinds.rejudge(raw, feedback.TEAM, seed=3)  # seeded
        values = feedback_kinds.targets(feedback_kinds.rejudge(raw, feedback_kinds.own_scale_team(0.25)))
        allowed = {1.0, 2.0, 3.0, 4.0, 5.0} if kind == "rating" else {0.0, 1.0}
        assert values.shape == (len(raw),) and set(values.tolist()) <= allowed
    with pytest.raises(ValueError, match="no labeler named"):
        feedback_kinds.rejudge(raw, feedback.TEAM[:1])
    with pytest.raises(ValueError, match="all carry 'rating' or all 'thumbs_up'"):
        feedback_kinds.targets([{"rating": 3}, {"thumbs_up": True}])


def test_correctness_differs_marks_right_against_wrong_pairs(judged):
    tasks, candidates = judged
    raw = feedback.judge_pairs(tasks, candidates, seed=0, double_share=0.0)
    rows = feedback.to_preferences(raw)
    marked = feedback_kinds.correctness_differs(rows)
    expected = [
        world.is_correct(feedback.task_of(j["task"]), j["a"]) != world.is_correct(feedback.task_of(j["task"]), j["b"])
        for j in raw
    ]
    assert marked.tolist() == expected and 0 < sum(expected) < len(expected)


def test_the_clustered_error_is_the_usual_one_for_single_pairs_and_grows_with_shared_prompts():
    torch.manual_seed(0)
    x = torch.randn(400)
    mean, se = feedback_kinds.mean_and_se(x, torch.arange(400))
    assert mean == pytest.approx(x.mean().item()) and se == pytest.approx(x.std().item() / 20, rel=0.01)
    copies = x.repeat_interleave(4)  # every value four times, as four pairs of one prompt
    _, clustered = feedback_kinds.mean_and_se(copies, torch.arange(400).repeat_interleave(4))
    _, naive = feedback_kinds.mean_and_se(copies, torch.arange(1600))
    assert clustered == pytest.approx(se, rel=0.01) and naive == pytest.approx(se / 2, rel=0.01)
    rows = [{"prompt": [{"role": "user", "content": c}]} for c in "abac"]
    assert feedback_kinds.prompt_groups(rows).tolist() == [0, 1, 0, 2]
