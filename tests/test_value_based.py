"""The toy token MDP of lesson 04: value-based against policy-based learning."""

import pytest
import torch

from rlhf_course.algorithms import value_based


@pytest.mark.parametrize("method", ["reinforce", "q_learning"])
def test_the_toy_is_a_function_of_its_seed_alone(method):
    first = value_based.toy_episodes_to_solve(method, seed=3, max_episodes=20_000)
    torch.manual_seed(12345)  # whatever ran before must not matter
    torch.rand(7)
    assert value_based.toy_episodes_to_solve(method, seed=3, max_episodes=20_000) == first


def test_a_policy_gradient_from_a_good_prior_solves_the_toy_long_before_q_learning_from_scratch():
    reinforce = value_based.toy_episodes_to_solve("reinforce", seed=0)
    q_learning = value_based.toy_episodes_to_solve("q_learning", seed=0)
    assert reinforce < 1_000 < q_learning
    with pytest.raises(ValueError, match="method must be"):
        value_based.toy_episodes_to_solve("sarsa")
