import pytest
import torch

from rlhf_course.algorithms import reward_model as rm
from rlhf_course.analysis import probes
from rlhf_course.core import models
from rlhf_course.scale import trl_bridge
from rlhf_course.simulation import data, feedback, human, world


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer()


@pytest.fixture(scope="module")
def tasks():
    return world.generate_tasks("validation", 6)


def test_reward_is_the_hugging_face_classifier_output_at_the_last_real_token(tok, tasks):
    model = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"))
    replies = [world.render(t, "rambling" if i % 2 else "curt") for i, t in enumerate(tasks[:8])]
    ids, mask = rm.encode_conversations(tok, [t.prompt for t in tasks[:8]], replies, 128)
    assert (mask == 0).any()  # the batch really is padded
    with torch.no_grad():
        ours = rm.raw_rewards(model, ids, mask)
        theirs = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_head_init_and_save_load_keep_the_normalisation(tok, tasks, tmp_path):
    model = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"))
    d = model.config.hidden_size
    assert abs(model.score.weight.std().item() - (d + 1) ** -0.5) < 0.2 * (d + 1) ** -0.5
    prompts = [t.prompt for t in tasks]
    replies = [world.render(t, "polite") for t in tasks]
    rm.normalise(model, tok, prompts, replies)
    scores = rm.score(model, tok, prompts, replies)
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std().item() - 1) < 1e-4
    model.save_pretrained(tmp_path)
    again = rm.load(tmp_path, dev=torch.device("cpu"))
    assert torch.allclose(rm.score(again, tok, prompts, replies), scores, atol=1e-5)


def test_too_long_conversation_is_refused_not_truncated(tok, tasks):
    model = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"))
    with pytest.raises(ValueError, match="more than the reward model's context of 128"):
        rm.score(model, tok, [tasks[0].prompt], ["word " * 200])


def test_losses_for_ratings_and_thumbs():
    rewards = torch.tensor([2.0, -2.0])
    assert rm.rating_loss(rewards, torch.tensor([5, 1])) == 0
    assert rm.thumbs_loss(rewards, torch.tensor([1, 0])) < rm.thumbs_loss(rewards, torch.tensor([0, 1]))


def test_training_learns_a_simple_preference(tok, tasks):
    """Prefer the polite answer to the rambling wrong one: a few dozen steps should learn it."""
    train = world.generate_tasks("train", 8)
    rows = feedback.correctness_pairs(train)
    for row, task in zip(rows, train):
        row["chosen"] = [{"role": "assistant", "content": world.render(task, "polite")}]
        row["rejected"] = [{"role": "assistant", "content": world.render(task, "rambling", task.wrong)}]
    model = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"))
    held_out = [
        {
            **r,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "rambling", t.wrong)}],
        }
        for r, t in zip(feedback.correctness_pairs(tasks), tasks)
    ]
    before = rm.comparison_accuracy(model, tok, held_out)
    result = rm.train(
        model, tok, rows, held_out[:16], rm.RewardConfig(epochs=3, batch_size=8, lr=1e-3, warmup_steps=5, eval_every=10)
    )
    assert rm.comparison_accuracy(model, tok, held_out) > max(0.9, before)
    assert result.val_accuracy and result.losses[-1] < result.losses[0]


def test_feedback_rows_are_trl_preferences_and_round_trip(tmp_path, tasks):
    candidates = [
        [world.render(t, s) for s in ("polite", "curt", "rambling")] + [world.render(t, "curt", t.wrong)] for t in tasks
    ]
    raw = feedback.judge_pairs(tasks, candidates, double_share=1.0)
    rows = feedback.to_preferences(raw)
    for i, row in enumerate(rows):
        data.validate_row(row, "preference", f"row {i}")
    assert list(data.load_jsonl(data.save_jsonl(rows, tmp_path / "p.jsonl"), "preference")) == rows
    assert 0.6 < feedback.noise_ceiling(rows) <= 1.0
    agreement = feedback.agreement_by_labeler(raw)
    assert agreement["expert"] > agreement["careless"]


def test_candidates_of_recovers_what_was_judged_so_another_labeler_can_judge_it(tasks):
    candidates = [[world.render(t, s) for s in ("polite", "curt", "rambling")] for t in tasks]
    raw = feedback.judge_pairs(tasks, candidates, double_share=1.0)
    again_tasks, again = feedback.candidates_of(raw)
    assert again_tasks == tasks and [sorted(c) for c in again] == [sorted(c) for c in candidates]
    biased = feedback.judge_pairs(again_tasks, again, team=(human.LENGTH_BIASED,), double_share=0.0)
    assert {j["labeler"] for j in biased} == {"length_biased"} and len(biased) == 3 * len(tasks)


def test_reliability_is_estimated_from_agreement_alone(tasks):
    many = world.generate_tasks("train", 60)
    candidates = [
        [world.render(t, s) for s in ("polite", "curt", "rambling")] + [world.render(t, "polite", t.wrong)]
        for t in many
    ]
    raw = feedback.judge_pairs(many, candidates, double_share=1.0)
    estimate = feedback.reliability_from_agreement(raw)
    truth = feedback.agreement_by_labeler(raw)
    assert estimate["expert"] > estimate["hasty"] > estimate["careless"]
    assert abs(estimate["careless"] - truth["careless"]) < 0.15


def test_ratings_and_thumbs_judge_each_distinct_response_once(tasks):
    candidates = [
        [world.render(t, "polite"), world.render(t, "polite"), world.render(t, "curt", t.wrong)] for t in tasks
    ]
    for kind, values in (("rating", {1, 2, 3, 4, 5}), ("thumbs_up", {True, False})):
        raw = feedback.single_judgments(tasks, candidates, kind)
        assert len(raw) == 2 * len(tasks) and {r[kind] for r in raw} <= values
        right = [world.is_correct(feedback.task_of(r["task"]), r["completion"]) for r in raw]
        good = [r[kind] for r, ok in zip(raw, right) if ok]
        bad = [r[kind] for r, ok in zip(raw, right) if not ok]
        assert sum(good) / len(good) > sum(bad) / len(bad)
    with pytest.raises(KeyError):
        feedback.single_judgments(tasks, candidates, "stars")


def test_head_init_depends_on_its_seed_only():
    torch.manual_seed(1)
    a = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu")).score.weight
    torch.manual_seed(2)
    b = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu")).score.weight
    c = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"), seed=1).score.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["rating", "thumbs_up"])
def test_training_on_ratings_or_thumbs_learns_a_simple_preference(tok, tasks, kind):
    train = world.generate_tasks("train", 10)
    candidates = [[world.render(t, "polite"), world.render(t, "rambling", t.wrong)] for t in train]
    rows = feedback.to_single_rows(
        feedback.single_judgments(
            train, candidates, kind, team=(human.SimulatedHuman("reliable", temperature=0.02, noise=0.0),)
        )
    )
    assert ("rating" in rows[0]) == (kind == "rating") and ("label" in rows[0]) == (kind == "thumbs_up")
    held_out = [
        {
            **r,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "rambling", t.wrong)}],
        }
        for r, t in zip(feedback.correctness_pairs(tasks), tasks)
    ]
    model = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"))
    config = rm.RewardConfig(
        feedback={"rating": "ratings", "thumbs_up": "thumbs"}[kind], epochs=4, batch_size=8, lr=1e-3, warmup_steps=5
    )
    result = rm.train(model, tok, rows, None, config)
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    assert rm.comparison_accuracy(model, tok, held_out) > 0.9


def test_training_refuses_unknown_feedback_and_misfit_weights(tok):
    model = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"))
    rows = feedback.correctness_pairs(world.generate_tasks("train", 1))
    with pytest.raises(ValueError, match="unknown feedback 'stars'"):
        rm.train(model, tok, rows, config=rm.RewardConfig(feedback="stars"))
    with pytest.raises(ValueError, match="one weight per training row"):
        rm.train(model, tok, rows, weights=[1.0])


def test_linear_head_on_frozen_features_learns_a_feature_direction():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(200, 8), torch.randn(200, 8)
    chosen[:, 3] += 2.0  # the chosen responses are higher along one direction
    w = probes.fit_head(chosen, rejected)
    assert w[3] > 0 and w[3].abs() == w.abs().max()
    assert ((chosen - rejected) @ w > 0).float().mean() > 0.85


def test_bradley_terry_loss_equals_trl_rewardtrainer_on_the_same_batch(tmp_path, tok, tasks):
    rows = [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "curt", t.wrong)}],
            "margin": 0.5 * (i % 3),
        }
        for i, t in enumerate(tasks[:8])
    ]
    model = rm.build(models.BASE_MODEL_DIR, dev=torch.device("cpu"))
    trl_loss = trl_bridge.trl_first_batch_loss(trl_bridge.reward_trainer(model, tok, rows, tmp_path, batch_size=8))
    assert abs(trl_bridge.course_reward_loss(model, tok, rows) - trl_loss) < 1e-5  # what train() minimises
    unmargined = trl_bridge.course_reward_loss(model, tok, [{**r, "margin": 0.0} for r in rows])
    assert abs(unmargined - trl_loss) > 1e-3  # TRL used the margins, so matching them is a real check
