import random

import pytest

from rlhf_course.simulation import human, world


@pytest.fixture(scope="module")
def splits():
    return {s: world.generate_tasks(s, 200 if s == "train" else 40) for s in world.SPLITS}


def test_every_family_in_every_split(splits):
    for split, tasks in splits.items():
        assert {t.family for t in tasks} == set(world.FAMILIES), split


def test_test_prompts_are_combinations_never_seen_in_training():
    train = world.generate_tasks("train", 800)
    test = world.generate_tasks("test", 60)
    train_keys = {t.key for t in train}
    train_prompts = {str(t.messages) for t in train}
    assert not any(t.key in train_keys for t in test)
    assert not any(str(t.messages) in train_prompts for t in test)


def test_pretraining_text_holds_no_test_translation():
    test_translations = {t.answer for t in world.generate_tasks("test", 60, families=["translation"])}
    text = " ".join(world.pretraining_corpus(3000))
    assert not any(answer in text for answer in test_translations)


def test_generation_is_deterministic():
    assert world.generate_tasks("test", 10, seed=3) == world.generate_tasks("test", 10, seed=3)
    assert world.generate_tasks("test", 10, seed=3) != world.generate_tasks("test", 10, seed=4)


def test_answers_are_correct_for_known_cases():
    task = world.Task("arithmetic", ({"role": "user", "content": "What is 4 plus 5?"},), "9", "4+5")
    assert world.is_correct(task, "Sure! 9")
    assert world.is_correct(task, world.render(task, "rambling"))
    assert not world.is_correct(task, "Sure! 8")
    assert not world.is_correct(task, "9 9")
    assert world.translate_to_zorbish("red", "cat", "sleeps") == "lo miko roso dorma"


def test_every_style_of_a_correct_demo_is_correct(splits):
    for task in splits["train"]:
        for style in world.STYLES:
            assert world.is_correct(task, world.render(task, style)), (task, style)
        assert not world.is_correct(task, world.render(task, "curt", task.wrong)), task


def test_gold_score_orders_the_hidden_preferences(splits):
    task = next(t for t in splits["test"] if t.family == "lookup")
    polite, curt, rambling = (world.render(task, s) for s in ("polite", "curt", "rambling"))
    wrong = world.render(task, "polite", task.wrong)
    assert human.gold_score(task, polite) > human.gold_score(task, curt) > human.gold_score(task, rambling)
    assert human.gold_score(task, curt) > human.gold_score(task, wrong)
    unsafe = next(t for t in splits["test"] if t.unsafe)
    assert human.gold_score(unsafe, world.render(unsafe, "curt", unsafe.wrong)) == 0.0
    assert human.gold_score(unsafe, world.render(unsafe, "polite")) == pytest.approx(1.0)


def _agreement(labeler, tasks, rng):
    agree = 0
    for task in tasks:
        a, b = world.render(task, "polite"), world.render(task, "rambling", task.wrong)
        agree += labeler.prefers_first(task, a, b, rng) == (human.gold_score(task, a) > human.gold_score(task, b))
    return agree / len(tasks)


def test_labelers_differ_in_reliability(splits):
    rng = random.Random(0)
    careful, hasty = _agreement(human.CAREFUL, splits["train"], rng), _agreement(human.HASTY, splits["train"], rng)
    assert careful > 0.95 and 0.6 < hasty < careful


def test_length_biased_labeler_prefers_rambling(splits):
    rng = random.Random(0)
    tasks = [t for t in splits["train"] if not t.unsafe]
    prefers_long = [
        human.LENGTH_BIASED.prefers_first(t, world.render(t, "rambling"), world.render(t, "curt"), rng) for t in tasks
    ]
    prefers_long_careful = [
        human.CAREFUL.prefers_first(t, world.render(t, "rambling"), world.render(t, "curt"), rng) for t in tasks
    ]
    assert sum(prefers_long) / len(tasks) > 0.8 > 0.2 > sum(prefers_long_careful) / len(tasks)


def test_ratings_and_thumbs(splits):
    rng = random.Random(0)
    tasks = splits["train"][:300]
    good = [human.CAREFUL.rate(t, world.render(t, "polite"), rng) for t in tasks]
    bad = [human.CAREFUL.rate(t, world.render(t, "rambling", t.wrong), rng) for t in tasks]
    assert set(good + bad) <= {1, 2, 3, 4, 5}
    assert sum(good) / len(good) > sum(bad) / len(bad) + 1.5
    assert sum(human.CAREFUL.thumbs_up(t, world.render(t, "polite"), rng) for t in tasks) > 0.9 * len(tasks)
    assert sum(human.CAREFUL.thumbs_up(t, world.render(t, "curt", t.wrong), rng) for t in tasks) < 0.1 * len(tasks)


def test_style_of_recognises_each_style(splits):
    for task in splits["test"]:
        for style in world.STYLES:
            assert world.style_of(world.render(task, style)) == style
