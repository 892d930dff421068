"""PPO and REINFORCE: the pieces against direct computations, the probes, rollouts, and the stages end to end."""

import dataclasses
import json
import shutil

import pytest
import torch
from known_wrong.lesson05_ppo import gae_gamma_missing_in_delta, gae_returns_are_advantages, pl_wrong_sign, vl_no_half

from rlhf_course import exercises, model_cards, pipeline, report
from rlhf_course.algorithms import policy_gradient as pg
from rlhf_course.algorithms import ppo, rollouts
from rlhf_course.algorithms import reward_model as rm
from rlhf_course.analysis import ppo_probes
from rlhf_course.core import models, registry
from rlhf_course.simulation import data, world


def gae_per_step(rewards, values, mask, gamma, lam):
    """The definition, one (row, step) at a time: A_t = sum_k (gamma lam)^k delta_(t+k), V = 0 after the end."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n = int(mask[b].sum())
        deltas = [rewards[b, t] + gamma * (values[b, t + 1] if t + 1 < n else 0.0) - values[b, t] for t in range(n)]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    return adv


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 0.0), (1.0, 1.0)])
def test_gae_matches_the_per_step_definition(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 7, generator=gen), torch.randn(4, 7, generator=gen)
    mask = (torch.arange(7) < torch.tensor([[7], [3], [1], [5]])).long()
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    want = gae_per_step(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, want, atol=1e-5)
    assert torch.allclose(ret, (want + values) * mask, atol=1e-5)


def test_policy_loss_on_a_hand_computed_example():
    # ratios 1.5 and 0.5, advantages +1 and -1, eps 0.2:
    # token 1: max(-1 * 1.5, -1 * 1.2) = -1.2; token 2: max(1 * 0.5, 1 * 0.8) = 0.8; mean = -0.2
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 7.0]]))  # the third token is padding
    loss = ppo.ppo_policy_loss(new, old, torch.tensor([[1.0, -1.0, 5.0]]), torch.tensor([[1, 1, 0]]), 0.2)
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)


def test_value_loss_on_a_hand_computed_example():
    # V = 1.0 from old 0.5 (clipped to 0.7), R = 0: max(1.0, 0.49) = 1.0; V = 0.1 from old 0.0, R = 1:
    # max(0.81, 0.81) = 0.81. Loss = 0.5 * (1.0 + 0.81) / 2
    loss = ppo.ppo_value_loss(
        torch.tensor([[1.0, 0.1]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 1]]), 0.2
    )
    assert loss.item() == pytest.approx(0.5 * 1.81 / 2, abs=1e-6)
    # when the clipped value is further from the return, it wins: V = 0.9 from old 0.0, R = 1 -> (0.2 - 1)^2
    loss = ppo.ppo_value_loss(
        torch.tensor([[0.9]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[1]]), 0.2
    )
    assert loss.item() == pytest.approx(0.5 * 0.64, abs=1e-6)


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    logprobs, ref = (
        torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -9.0]]),
        torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, 0.0]]),
    )
    rewards = rollouts.kl_penalized_rewards(
        torch.tensor([10.0, 20.0]), logprobs, ref, torch.tensor([[1, 1, 1], [1, 1, 0]]), 0.5
    )
    assert torch.allclose(rewards, torch.tensor([[-0.25, 0.5, 10.0], [-0.5, 20.0, 0.0]]))


def test_whiten_uses_masked_statistics_and_can_keep_the_mean():
    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]])
    assert torch.allclose(ppo.whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4)
    assert torch.allclose(ppo.whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 3.0, 0.0]]), atol=1e-4)


def test_adaptive_kl_controller_moves_beta_toward_the_target_and_can_stay_fixed():
    ctl = ppo.AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert ctl.update(kl=5.0, n_samples=10) == pytest.approx(0.1 * 1.02)  # error clipped to +20%, times 10/100
    assert ctl.update(kl=0.0, n_samples=10) < 0.102
    assert ppo.AdaptiveKLController(0.1, target=None).update(kl=5.0, n_samples=10) == 0.1


def test_returns_to_go_and_leave_one_out_baseline():
    rewards, mask = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    returns = pg.returns_to_go(rewards, mask)
    assert torch.equal(returns, torch.tensor([[6.0, 5.0, 3.0], [4.0, 0.0, 0.0]]))
    baseline = pg.leave_one_out_baseline(returns, mask)
    assert torch.equal(baseline, torch.tensor([[4.0, 0.0, 0.0], [6.0, 0.0, 0.0]]))  # steps 2, 3: no other sample


def test_probe_tasks_pass_with_the_reference():
    assert all(r.passed for r in ppo_probes.run_probes(verbose=False))


@pytest.mark.parametrize(
    "piece, wrong, probe",
    [
        ("ppo_policy_loss", pl_wrong_sign, "action-dependent reward"),
        ("gae", gae_gamma_missing_in_delta, "delayed discounted reward"),
        ("gae", gae_returns_are_advantages, "constant reward"),
        ("ppo_value_loss", lambda *args: -vl_no_half(*args), "observation-dependent reward"),
    ],
)
def test_probe_tasks_catch_a_broken_piece(piece, wrong, probe):
    exercises.plug_in(piece, wrong)
    try:
        results = {r.probe.name: r for r in ppo_probes.run_probes(verbose=False)}
    finally:
        registry.reset()
    assert not results[probe].passed, str(results[probe])


@pytest.fixture(scope="module")
def tiny():
    tok = models.load_tokenizer()
    return tok, models.load_model(dev=torch.device("cpu")), world.generate_tasks("train", 2)


def test_rollout_logprobs_do_not_depend_on_left_padding(tiny):
    tok, model, tasks = tiny
    zero = lambda t, r: [0.0] * len(t)  # noqa: E731
    batch = rollouts.collect(model, model, zero, tok, tasks[:4], max_new_tokens=8, seed=1)
    assert batch.response_mask.shape == batch.logprobs.shape == batch.ref_logprobs.shape
    assert torch.allclose(batch.kl, torch.zeros(4))  # the policy is its own reference
    for row in range(4):  # each row alone, with no padding, gives the same log-probabilities
        n = int(batch.attention_mask[row].sum())
        seq = batch.sequences[row : row + 1][:, batch.attention_mask[row].bool()]
        width = n - int(batch.response_mask[row].sum())
        alone = rollouts.response_logprobs(model, seq, torch.ones_like(seq), width, 1.0)
        got = batch.logprobs[row][batch.response_mask[row].bool()]
        assert torch.allclose(alone[0], got, atol=1e-4)


def test_responses_without_eos_get_the_penalty(tiny):
    tok, model, tasks = tiny
    batch = rollouts.collect(
        model, model, lambda t, r: [5.0] * len(t), tok, tasks[:4], max_new_tokens=2, no_eos_penalty=-1.0, seed=0
    )
    assert torch.equal(batch.scores, torch.where(batch.ended, 5.0, -1.0))
    assert not batch.ended.all()


def test_ppo_learns_a_simple_reward_in_a_few_updates(tiny):
    """Reward: fewer characters in a 16-token reply. A working PPO moves the base model there within a few updates."""
    tok, _, tasks = tiny
    policy, reference = (
        ppo.PolicyWithValue(models.load_model(dev=torch.device("cpu"))),
        models.load_model(dev=torch.device("cpu")),
    )
    config = ppo.PPOConfig(
        updates=8, batch_size=16, minibatch_size=8, lr=3e-4, max_new_tokens=16, init_kl_coef=0.01, no_eos_penalty=None
    )
    history = ppo.train_ppo(policy, reference, lambda t, r: [-len(x) / 20 for x in r], tok, tasks, config).history
    first, last = sum(h["score"] for h in history[:2]) / 2, sum(h["score"] for h in history[-2:]) / 2
    assert last > first + 0.5, [round(h["score"], 2) for h in history]


TINY = pipeline.PipelineConfig(
    data=data.DataConfig(train_per_family=10, eval_per_family=2),
    rl_prompts_per_family=4,
    eval_samples_per_prompt=2,
    pg=pg.PGConfig(updates=2, batch_size=8, max_new_tokens=8),
    ppo=ppo.PPOConfig(updates=2, batch_size=8, minibatch_size=4, max_new_tokens=8),
)


@pytest.mark.parametrize("stage", ["pg", "ppo"])
def test_rl_stage_writes_the_promised_metrics(tmp_path, stage):
    shutil.copytree(models.BASE_MODEL_DIR, tmp_path / "sft_model")
    reward = rm.build(tmp_path / "sft_model", dev=torch.device("cpu"))
    reward.save_pretrained(tmp_path / "reward_model")
    pipeline.run(tmp_path, [stage], TINY)
    m = json.loads((tmp_path / "metrics.json").read_text())[stage]
    for key in ("gold_before", "gold_after", "accuracy_before", "accuracy_after", "kl", "seconds"):
        assert isinstance(m[key], float), key
    assert len(m["history"]) == 2 and m["test_samples"] == 2 * 2 * len(world.FAMILIES)
    assert (tmp_path / f"{stage}_model" / "model.safetensors").is_file()
    report.write(tmp_path, {stage: m})
    assert (tmp_path / f"{stage}_curves.png").is_file()
    assert model_cards.write(tmp_path, {stage: m}) == [tmp_path / f"{stage}_model" / "README.md"]
    card = (tmp_path / f"{stage}_model" / "README.md").read_text()
    assert (
        f"| {m['gold_after']:.3f} ± {m['gold_se_after']:.3f} |" in card
        and f"{m['kl']:.3f} ± {m['kl_se']:.3f} nats" in card
    )
    if stage == "ppo":
        assert (tmp_path / "ppo_model" / "value_head.safetensors").is_file()


def test_rl_stage_without_reward_model_says_what_to_run(tmp_path):
    shutil.copytree(models.BASE_MODEL_DIR, tmp_path / "sft_model")
    with pytest.raises(FileNotFoundError, match="run the 'reward' stage first"):
        pipeline.run(tmp_path, ["ppo"], TINY)


def test_a_resumed_ppo_run_matches_an_uninterrupted_one(tmp_path, tiny):
    tok, _, tasks = tiny
    # a KL target far from the measured KL, so the coefficient moves and its restoring is tested too
    config = ppo.PPOConfig(
        updates=4, batch_size=8, minibatch_size=4, max_new_tokens=8, checkpoint_every=2, target_kl=0.01, kl_horizon=20
    )

    taken = []  # the updates each run takes itself

    def run(updates, checkpoint_dir):
        policy = ppo.PolicyWithValue(models.load_model(dev=torch.device("cpu")))
        taken.clear()
        result = ppo.train_ppo(
            policy,
            models.load_model(dev=torch.device("cpu")),
            lambda t, r: [-len(x) / 20 for x in r],
            tok,
            tasks,
            dataclasses.replace(config, updates=updates),
            on_step=lambda row: taken.append(row["update"]),
            checkpoint_dir=checkpoint_dir,
        )
        return policy, result

    whole_policy, whole = run(4, None)
    run(2, tmp_path / "checkpoint")  # stopped after two updates, with its state saved
    resumed_policy, resumed = run(4, tmp_path / "checkpoint")
    assert taken == [2, 3]  # it resumed after the checkpoint: a fresh run would match too
    assert len({row["kl_coef"] for row in whole.history}) == 4
    assert resumed.history == whole.history and resumed.samples == whole.samples
    assert all(
        torch.equal(a, b) for a, b in zip(whole_policy.state_dict().values(), resumed_policy.state_dict().values())
    )

    fresh = ppo.PolicyWithValue(models.load_model(dev=torch.device("cpu")))
    (tmp_path / "checkpoint" / "optimizer.pt").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete.*optimizer.pt"):
        ppo.train_ppo(
            fresh,
            models.load_model(dev=torch.device("cpu")),
            lambda t, r: [0.0] * len(t),
            tok,
            tasks,
            config,
            checkpoint_dir=tmp_path / "checkpoint",
        )


def test_an_interrupted_ppo_stage_resumes_when_run_again(tmp_path):
    config = dataclasses.replace(TINY, ppo=dataclasses.replace(TINY.ppo, updates=4, checkpoint_every=2))
    for run in ("whole", "resumed"):
        shutil.copytree(models.BASE_MODEL_DIR, tmp_path / run / "sft_model")
        rm.build(tmp_path / run / "sft_model", dev=torch.device("cpu")).save_pretrained(tmp_path / run / "reward_model")
    whole = pipeline.run(tmp_path / "whole", ["ppo"], config)["ppo"]

    def stop(row):
        if row["update"] == 2:  # dies during the third update, after the checkpoint of the first two
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.run(tmp_path / "resumed", ["ppo"], config, on_step=stop)
    assert (tmp_path / "resumed" / "ppo_checkpoint" / "state.json").is_file()
    resumed = pipeline.run(tmp_path / "resumed", ["ppo"], config)["ppo"]
    assert resumed["history"] == whole["history"] and resumed["gold_after"] == whole["gold_after"]
    assert not (tmp_path / "resumed" / "ppo_checkpoint").exists()  # done: the next run starts afresh
