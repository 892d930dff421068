"""The toy token MDP of lesson 04: value-based against policy-based learning."""

import pytest
import torch

from rlhf_course.algorithms import value_based


@pytest.mark.parametrize("method", ["reinforce", "q_learning", "dqn"])
def test_the_toy_is_a_function_of_its_seed_alone(method):
    first = value_based.toy_episodes_to_solve(method, seed=3, max_episodes=4_000)
    torch.manual_seed(12345)  # whatever ran before must not matter
    torch.rand(7)
    assert value_based.toy_episodes_to_solve(method, seed=3, max_episodes=4_000) == first


def test_from_the_same_start_the_table_beats_the_policy_gradient_and_the_start_beats_both():
    prior = {m: value_based.toy_episodes_to_solve(m, seed=1) for m in ("reinforce", "q_learning", "dqn")}
    assert prior["q_learning"] < prior["reinforce"] < prior["dqn"] < 5_000, prior
    for method in ("reinforce", "q_learning"):
        assert value_based.toy_episodes_to_solve(method, seed=1, start="uniform") > 5 * prior[method]
    with pytest.raises(ValueError, match="method must be"):
        value_based.toy_episodes_to_solve("sarsa")
    with pytest.raises(ValueError, match="start must be"):
        value_based.toy_episodes_to_solve("dqn", start="pretrained")


def test_the_token_mdp_numbers_its_states_depth_by_depth_and_pi_ref_is_a_distribution():
    mdp = value_based.token_mdp(vocab=4, length=3, prior_mass=0.5, seed=1)
    assert mdp.log_ref.shape == (1 + 4 + 16, 4)
    assert mdp.state(torch.tensor([[2, 3]])).item() == 1 + 4 + 2 * 4 + 3
    assert torch.logsumexp(mdp.sequence_logprobs(mdp.log_ref), dim=0).abs() < 1e-6
    assert mdp.reward(mdp.target.unsqueeze(0)).item() == 1.0


@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_soft_value_iteration_gives_exactly_the_kl_regularised_optimum(beta):
    mdp = value_based.token_mdp(vocab=6, length=3)
    q = value_based.soft_value_iteration(mdp, beta)
    learned = mdp.sequence_logprobs(value_based.soft_policy(mdp, q, beta))
    assert value_based.total_variation(learned, value_based.kl_regularised_optimum(mdp, beta)) < 1e-5


def test_soft_q_learning_starts_at_pi_ref_and_approaches_the_optimum_from_samples():
    run = value_based.soft_q_learning(value_based.SoftQConfig(episodes=25_600))
    mdp = run["mdp"]
    start = value_based.total_variation(
        mdp.sequence_logprobs(mdp.log_ref), value_based.kl_regularised_optimum(mdp, 0.5)
    )
    assert run["tv"][0] == pytest.approx(start)
    assert run["tv"][-1] < run["tv"][0] / 2.5  # 0.22 -> about 0.06
    again = value_based.soft_q_learning(value_based.SoftQConfig(episodes=640))
    assert again["tv"] == value_based.soft_q_learning(value_based.SoftQConfig(episodes=640))["tv"]
