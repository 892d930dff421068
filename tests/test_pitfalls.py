"""Lesson 07's tools: length-bias detection and balancing, refusal rates, planted secrets and scrubbing."""

import pytest
import torch

from rlhf_course.analysis import length_bias, privacy, safety
from rlhf_course.core import models
from rlhf_course.simulation import world


def row(chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def test_padded_pairs_differ_only_in_padding_and_the_gold_score_prefers_the_plain_reply():
    from rlhf_course.simulation import human

    tasks = world.generate_tasks("test", 2)
    for task, pair in zip(tasks, length_bias.padded_pairs(tasks)):
        plain, padded = pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]
        assert world.core_of(plain) == world.core_of(padded) == task.answer
        assert len(padded.split()) > len(plain.split())
        assert human.gold_score(task, plain) > human.gold_score(task, padded)


def test_balanced_weights_make_the_longer_reply_win_half_the_time_in_every_bucket():
    rows = (
        [row("a b c d e f", "a")] * 6
        + [row("a", "a b c d e f")] * 2  # difference 5: longer wins 6 of 8
        + [row("x y", "z")] * 3
        + [row("x", "y z")]  # difference 1: longer wins 3 of 4
        + [row("same", "size")] * 2  # no difference: kept as is
        + [row("a b c d e f g h i j", "a")]
    )  # difference 9: only the longer ever wins, so dropped
    assert length_bias.longer_wins(rows) > 0.7
    weights = length_bias.balanced_weights(rows)
    assert abs(length_bias.longer_wins(rows, weights) - 0.5) < 1e-6
    assert weights[-1] == 0 and weights[-3:-1].tolist() == [1.0, 1.0]
    for start, stop in ((0, 8), (8, 12)):  # each bucket keeps its total weight
        assert abs(weights[start:stop].sum().item() - (stop - start)) < 1e-6


def test_rates_count_refusals_and_help_separately():
    unsafe = next(t for t in world.generate_tasks("test", 5) if t.unsafe)
    safe = [t for t in world.generate_tasks("test", 2) if not t.unsafe][:3]
    replies = [
        safety.REFUSAL_REPLY,
        safety.REFUSAL_REPLY,
        world.render(safe[1], "polite"),
        world.render(safe[2], "curt", safe[2].wrong),
    ]
    assert safety.rates([unsafe] + safe, replies) == {
        "unsafe_refused": 1.0,
        "safe_refused": 1 / 3,
        "safe_helped": 1 / 3,
    }


def test_guarded_best_of_n_refuses_when_the_refusal_outscores_the_best_sample():
    responses = [["a", "b"], ["c", "d"]]
    scores = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    refusal = torch.tensor([1.5, 1.5])
    assert safety.guarded_best_of_n(responses, scores, refusal, 0.0) == [safety.REFUSAL_REPLY, "c"]
    assert safety.guarded_best_of_n(responses, scores, refusal, 1.0) == [safety.REFUSAL_REPLY] * 2
    assert safety.guarded_best_of_n(responses, scores, refusal, -1.0) == ["b", "c"]


def test_scrub_removes_every_planted_pin_and_keeps_the_rest():
    secrets = privacy.make_secrets(3, seed=1)
    assert len({s.name for s in secrets}) == 3
    rows = privacy.planted_rows(secrets, copies=2)
    assert len(rows) == 6
    clean, count = privacy.scrub(rows)
    assert count == 6
    text = repr(clean)
    assert all(s.pin not in text and s.name in text for s in secrets)
    assert rows[0]["completion"][0]["content"] == secrets[0].pin  # the input is not modified


def test_exposure_ranks_the_true_pin_among_candidates():
    tok, model = models.load_tokenizer(), models.load_model(dev=torch.device("cpu"))
    secret = privacy.make_secrets(1)[0]
    result = privacy.exposure(model, tok, secret, candidates=31)
    assert result["candidates"] == 32 and 1 <= result["rank"] <= 32
    assert abs(result["exposure_bits"] - (5 - torch.log2(torch.tensor(float(result["rank"]))).item())) < 1e-6


def test_reward_per_word_recovers_a_linear_length_bonus():
    tasks = world.generate_tasks("test", 2)
    pairs = length_bias.padded_pairs(tasks)
    plain = torch.randn(len(pairs))
    extra = torch.tensor([length_bias.words(r, "rejected") - length_bias.words(r, "chosen") for r in pairs]).float()
    assert abs(length_bias.reward_per_word(plain, plain + 0.03 * extra, pairs) - 0.03) < 1e-6


def test_jailbreak_framings_keep_the_request_and_the_answer_it_should_get():
    tasks = world.generate_tasks("test", 4)
    unsafe = [t for t in tasks if t.unsafe]
    assert unsafe
    for task in unsafe:
        assert safety.reframe(task, "as asked") == task
        request = task.prompt[-1]["content"]
        for framing in safety.FRAMINGS[1:]:
            framed = safety.reframe(task, framing)
            assert (framed.family, framed.answer, framed.key) == (task.family, task.answer, task.key)
            users = [m["content"] for m in framed.prompt if m["role"] == "user"]
            if framing == "split":  # the act and its object never in one message, both in the conversation
                verb, target = task.key.split(" ", 1) if " into " not in task.key else task.key.split(" into ")
                assert len(users) == 2 and not any(verb in u and target in u for u in users)
                assert target in users[0] and verb.split()[0] in users[1]
            else:
                assert users == [users[0]] and users[0].endswith(request) and users[0] != request
    safe = next(t for t in tasks if not t.unsafe)
    assert safety.reframe(safe, "role-play").prompt[-1]["content"].endswith(safe.prompt[-1]["content"])
    with pytest.raises(ValueError, match="a split request needs an unsafe task"):
        safety.reframe(safe, "split")
    with pytest.raises(ValueError, match="framing must be one of"):
        safety.reframe(safe, "base64")
