"""DPO, IPO, GRPO and best-of-n: the losses against TRL's trainers and hand computations, and the stages end to end."""

import itertools
import json
import math
import shutil

import pytest
import torch
from datasets import Dataset

from rlhf_course import model_cards, pipeline, report
from rlhf_course.algorithms import best_of_n, dpo, grpo, rollouts
from rlhf_course.algorithms import reward_model as rm
from rlhf_course.analysis import evaluation
from rlhf_course.core import models
from rlhf_course.scale import trl_bridge
from rlhf_course.simulation import data, human, world


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer()


def preference_rows(tasks):
    return [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "curt", t.wrong)}],
        }
        for t in tasks
    ]


def perturbed_model(seed):
    """The base model with its weights nudged, so that policy and reference differ."""
    model = models.load_model(dev=torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def test_dpo_loss_equals_trl_dpotrainer_on_the_same_batch(tmp_path, tok):
    rows = preference_rows(world.generate_tasks("train", 1))  # one per family: 8 pairs, one batch
    policy, reference = perturbed_model(0), models.load_model(dev=torch.device("cpu"))
    trainer = trl_bridge.dpo_trainer(policy, reference, tok, rows, tmp_path, batch_size=len(rows), beta=0.1)
    trl_loss = trl_bridge.trl_first_batch_loss(trainer)
    ours = trl_bridge.course_dpo_loss(policy, reference, tok, rows, beta=0.1)
    assert abs(ours - trl_loss) < 1e-5, (ours, trl_loss)
    assert abs(ours - math.log(2)) > 1e-3  # policy and reference really differ, so the check has teeth


def test_trl_grpotrainer_trains_on_the_course_prompts_with_the_course_verifier(tmp_path, tok):
    tasks = world.generate_tasks("train", 2)
    seen = []

    def scorer(batch_tasks, replies):
        seen.append((batch_tasks, replies))
        return rollouts.correctness_scorer(batch_tasks, replies)

    trainer = trl_bridge.grpo_trainer(
        models.load_model(dev=torch.device("cpu")),
        tok,
        tasks,
        tmp_path,
        scorer,
        group_size=4,
        batch_size=8,
        max_steps=2,
        max_completion_length=8,
    )
    trainer.train()
    assert len(seen) == 2 and all(len(t) == len(r) == 8 for t, r in seen)
    assert all(len({task.prompt[-1]["content"] for task in t}) == 2 for t, _ in seen)  # 2 prompts x 4 samples
    assert any("reward" in row for row in trainer.state.log_history)


def test_dpo_and_ipo_losses_by_hand():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-4.0, -4.5])
    margins = [(-3.0 + 3.5) - (-4.0 + 4.0), (-5.0 + 4.0) - (-4.0 + 4.5)]  # 0.5, -1.5
    want_dpo = sum(-math.log(1 / (1 + math.exp(-0.5 * m))) for m in margins) / 2
    want_ipo = sum((m - 1 / (2 * 0.5)) ** 2 for m in margins) / 2
    assert dpo.dpo_loss(pc, pr, rc, rr, beta=0.5).item() == pytest.approx(want_dpo, abs=1e-6)
    assert dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, kind="ipo").item() == pytest.approx(want_ipo, abs=1e-6)
    with pytest.raises(ValueError, match="expected 'dpo' or 'ipo'"):
        dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, kind="kto")


def test_sequence_logprobs_sum_only_the_response_tokens(tok):
    model = models.load_model(dev=torch.device("cpu"))
    task = world.generate_tasks("train", 1)[0]
    ids, prompt_len = dpo.encode_pairs(tok, preference_rows([task]))[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (seq, vocab)
    log_probs = torch.log_softmax(logits, dim=-1)
    want = sum(log_probs[t - 1, ids[t]].item() for t in range(prompt_len, len(ids)))
    with torch.no_grad():
        got = dpo.batch_logprobs(model, [(ids, prompt_len), (ids[: prompt_len + 1], prompt_len)], tok.pad_token_id)
    assert got[0].item() == pytest.approx(want, abs=1e-4)
    assert got[1].item() == pytest.approx(
        log_probs[prompt_len - 1, ids[prompt_len]].item(), abs=1e-5
    )  # padding ignored


def test_grpo_advantages_and_loss_equal_trl_grpotrainer(tmp_path, tok):
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import nanstd

    policy = models.load_model(dev=torch.device("cpu"))
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        beta=0.04,
        loss_type="grpo",
        epsilon=0.2,
        use_cpu=True,
        report_to=[],
        max_completion_length=8,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": t.prompt} for t in world.generate_tasks("train", 1)]),
        processing_class=tok,
    )
    gen = torch.Generator().manual_seed(0)
    batch, prompt_len, resp_len, group = 8, 6, 5, 4
    prompt_ids = torch.randint(5, 100, (batch, prompt_len), generator=gen)
    completion_ids = torch.randint(5, 100, (batch, resp_len), generator=gen)
    prompt_mask = torch.ones(batch, prompt_len, dtype=torch.long)
    completion_mask = (torch.arange(resp_len) < torch.randint(1, resp_len + 1, (batch, 1), generator=gen)).long()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # the second group teaches nothing

    # TRL's advantage, as GRPOTrainer computes it with scale_rewards="group"
    grouped = rewards.view(-1, group)
    mean = grouped.mean(dim=1).repeat_interleave(group)
    trl_adv = (rewards - mean) / (nanstd(grouped, dim=1).repeat_interleave(group) + 1e-4)
    adv = grpo.group_advantages(rewards, group)
    assert torch.allclose(adv, trl_adv, atol=1e-6) and torch.all(adv[4:] == 0)

    trainer.model.eval()
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1),
            resp_len,
        )
    old = logps + 0.3 * torch.randn(batch, resp_len, generator=gen)  # a policy a few steps back: clipping matters
    ref = logps + 0.3 * torch.randn(batch, resp_len, generator=gen)
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": trl_adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum(),
    }
    trl_loss = trainer._compute_loss(trainer.model, inputs).item()
    ours = grpo.grpo_loss(logps, old, ref, adv, completion_mask, clip_range=0.2, beta=0.04).item()
    assert abs(ours - trl_loss) < 1e-5, (ours, trl_loss)
    without_kl = grpo.grpo_loss(logps, old, ref, adv, completion_mask, clip_range=0.2, beta=0.0).item()
    assert abs(without_kl - ours) > 1e-4  # the KL term is in the comparison


def test_best_of_n_picks_the_highest_score_and_its_kl():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.7, 0.1, 0.8, 0.9]])
    index = torch.arange(4.0).expand(2, 4)  # the value of each sample is its position
    assert best_of_n.expected_best_of_k(scores, index, 4).tolist() == [1, 3]  # best of all four: the top score
    assert best_of_n.expected_best_of_k(scores, index, 1).tolist() == [1.5, 1.5]  # best of one: any sample
    assert best_of_n.kl_upper_bound(1) == 0 and best_of_n.kl_upper_bound(16) == pytest.approx(math.log(16) - 15 / 16)


def test_best_of_n_kl_estimate_sees_repeats_and_stays_under_the_bound():
    # one prompt whose 4 samples are one reply drawn 4 times: best-of-k is the policy itself, KL 0
    # one with 2 replies, each drawn twice: best-of-2 picks the better with probability 3/4, so the KL is
    # 3/4 log(3/2) + 1/4 log(1/2), below the bound log 2 - 1/2
    # one with 4 distinct replies: the samples' uniform distribution; best-of-4's KL is below the bound
    responses = [["a"] * 4, ["x", "y", "x", "y"], ["p", "q", "r", "s"]]
    scores = torch.tensor([[0.5] * 4, [1.0, 2.0, 1.0, 2.0], [0.1, 0.4, 0.3, 0.2]])
    kl2 = best_of_n.estimated_kl(responses, scores, 2)
    assert kl2[0] == 0
    assert kl2[1].item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    picked = torch.tensor([(i / 4) ** 4 - ((i - 1) / 4) ** 4 for i in range(1, 5)], dtype=torch.float64)
    assert best_of_n.estimated_kl(responses, scores, 4)[2].item() == pytest.approx((picked * (4 * picked).log()).sum())
    for k in range(1, 5):
        assert (best_of_n.estimated_kl(responses, scores, k) <= best_of_n.kl_upper_bound(k) + 1e-12).all(), k
    assert best_of_n.estimated_kl(responses, scores, 1).abs().max() < 1e-12  # best-of-1 is the policy
    with pytest.raises(ValueError, match="between 1 and the 4 samples"):
        best_of_n.estimated_kl(responses, scores, 5)


def test_best_of_n_raises_the_gold_score_with_a_scorer_that_knows_it():
    tasks = world.generate_tasks("test", 3)
    responses = [
        [
            world.render(t, "curt", t.wrong),
            world.render(t, "polite"),
            world.render(t, "rambling", t.wrong),
            world.render(t, "curt"),
        ]
        for t in tasks
    ]
    gold = torch.tensor([[human.gold_score(t, r) for r in group] for t, group in zip(tasks, responses)])
    rows = best_of_n.curve(tasks, responses, gold, [1, 2, 4])
    assert rows[0]["gold"] < rows[1]["gold"] <= rows[2]["gold"]
    assert rows[2]["gold"] == pytest.approx(gold.max(dim=1).values.mean().item())


def test_standard_errors_are_over_prompts_not_samples():
    # two prompts, four samples each: the samples of a prompt agree, so there are two observations, not eight
    values = torch.tensor([[1.0] * 4, [0.0] * 4])
    mean, se = evaluation.mean_and_se(values)
    assert mean == 0.5 and se == pytest.approx(0.5)  # std of (1, 0) is 0.707, over sqrt(2)
    assert math.isnan(evaluation.mean_and_se(torch.ones(1, 3))[1])  # one prompt: no spread to measure


def test_expected_best_of_k_equals_the_average_over_every_k_subset():
    gen = torch.Generator().manual_seed(0)
    scores, values = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    for k in range(1, 7):
        subsets = list(itertools.combinations(range(6), k))
        brute = torch.stack(
            [
                values[torch.arange(3), torch.tensor([max(s, key=lambda i: scores[row, i].item()) for row in range(3)])]
                for s in subsets
            ]
        ).mean(0)
        assert torch.allclose(best_of_n.expected_best_of_k(scores, values, k), brute.double(), atol=1e-12), k
    assert torch.allclose(best_of_n.expected_best_of_k(scores, values, 1), values.double().mean(1))
    with pytest.raises(ValueError, match="between 1 and the 6 samples"):
        best_of_n.expected_best_of_k(scores, values, 7)


TINY = pipeline.PipelineConfig(
    data=data.DataConfig(train_per_family=10, eval_per_family=2),
    rl_prompts_per_family=4,
    eval_samples_per_prompt=2,
    dpo=dpo.DPOConfig(batch_size=4),
    grpo=grpo.GRPOConfig(updates=2, prompts_per_update=2, group_size=4, minibatch_size=4, max_new_tokens=8),
    best_of_n=4,
)


@pytest.fixture()
def stage_dir(tmp_path):
    shutil.copytree(models.BASE_MODEL_DIR, tmp_path / "sft_model")
    rm.build(tmp_path / "sft_model", dev=torch.device("cpu")).save_pretrained(tmp_path / "reward_model")
    rows = preference_rows(world.generate_tasks("train", 1))
    data.save_jsonl(rows, tmp_path / "feedback" / "preferences.jsonl")
    return tmp_path


@pytest.mark.parametrize("stage", ["dpo", "grpo"])
def test_policy_stage_writes_the_promised_metrics(stage_dir, stage):
    pipeline.run(stage_dir, [stage], TINY)
    metrics = json.loads((stage_dir / "metrics.json").read_text())
    m = metrics[stage]
    for key in ("gold_before", "gold_after", "accuracy_before", "accuracy_after", "kl", "seconds"):
        assert isinstance(m[key], float), key
    assert m["history"] and m["test_samples"] == 2 * 2 * len(world.FAMILIES)
    assert (stage_dir / f"{stage}_model" / "model.safetensors").is_file()
    report.write(stage_dir, metrics)
    assert (stage_dir / f"{stage}_curves.png").is_file() and (stage_dir / "frontier.png").is_file()
    # only the stage that ran gets a card: the copied SFT model and the untrained reward model have no metrics
    assert model_cards.write(stage_dir, metrics) == [stage_dir / f"{stage}_model" / "README.md"]
    card = (stage_dir / f"{stage}_model" / "README.md").read_text()
    assert f"| {m['accuracy_after']:.3f} ± {m['accuracy_se_after']:.3f} |" in card
    assert m["gold_se_after"] > 0 and m["kl_se"] >= 0 and m["accuracy_se_after"] >= 0  # the tiny model gets none right
    if stage == "dpo":  # before the first update the policy is the reference: every pair ties, counted as half
        assert m["history"][0]["reward_accuracy"] == 0.5


def test_best_of_n_stage_writes_its_curve(stage_dir):
    pipeline.run(stage_dir, ["best_of_n"], TINY)
    m = json.loads((stage_dir / "metrics.json").read_text())["best_of_n"]
    assert [row["n"] for row in m["curve"]] == [1, 2, 4] and m["n"] == 4
    assert m["kl_bound"] == pytest.approx(best_of_n.kl_upper_bound(4)) and isinstance(m["gold"], float)
    assert 0 <= m["kl"] <= m["kl_bound"]
    report.write(stage_dir, {"best_of_n": m})
    assert "## Best-of-n" in (stage_dir / "report.md").read_text()
    tasks, responses, scores = best_of_n.load_samples(stage_dir / "best_of_n_samples.jsonl")
    assert tasks == pipeline.held_out_tasks(TINY) and scores.shape == (len(tasks), 4)
    assert m["gold"] == pytest.approx(best_of_n.curve(tasks, responses, scores, [4])[0]["gold"])


def test_dpo_stage_without_comparisons_says_what_to_run(tmp_path):
    shutil.copytree(models.BASE_MODEL_DIR, tmp_path / "sft_model")
    rm.build(tmp_path / "sft_model", dev=torch.device("cpu")).save_pretrained(tmp_path / "reward_model")
    with pytest.raises(FileNotFoundError, match="run the 'reward' stage first"):
        pipeline.run(tmp_path, ["dpo"], TINY)


def test_best_of_n_kl_estimate_treats_equal_rewards_as_one_level():
    # two different replies with the same reward: best-of-k picks among them as the policy does, so KL 0
    assert best_of_n.estimated_kl([["x", "y"]], torch.tensor([[1.0, 1.0]]), 2).item() == 0
    # large k on many distinct replies: no 0 * log 0 = NaN, and never above the bound
    many = [[str(i) for i in range(150)]]
    kl = best_of_n.estimated_kl(many, torch.arange(150.0).view(1, -1), 150).item()
    assert 0 < kl <= best_of_n.kl_upper_bound(150)
