import copy

import torch

from rlhf_course.algorithms import rollouts
from rlhf_course.analysis import kl_estimators
from rlhf_course.checks import loops


def _rollout(policy, reference, n_per_family=8):
    tasks = loops.tasks(n_per_family)
    zero = lambda t, r: [0.0] * len(t)  # noqa: E731
    return rollouts.collect(policy, reference, zero, loops.tokenizer(), tasks, max_new_tokens=6, seed=3)


def test_a_policy_equal_to_its_reference_has_kl_zero_by_every_estimator():
    model = loops.tiny_lm()
    estimates = kl_estimators.estimate(model, copy.deepcopy(model), _rollout(model, model))
    for name in kl_estimators.ESTIMATORS:
        assert torch.allclose(estimates.per_reply[name], torch.zeros(()), atol=1e-5), name


def test_k1_and_k3_are_unbiased_k2_and_k3_never_negative_and_k1_noisier():
    policy, reference = loops.tiny_lm(0), loops.tiny_lm(1)
    estimates = kl_estimators.estimate(policy, reference, _rollout(policy, reference, n_per_family=40))
    exact, se_exact, _ = estimates.summary("exact")
    for name in ("k1", "k3"):
        mean, se, _ = estimates.summary(name)
        assert abs(mean - exact) < 4 * (se**2 + se_exact**2) ** 0.5, (name, mean, exact)
    assert estimates.lowest_k3_token >= -1e-6
    assert (estimates.per_reply["k2"] >= 0).all() and (estimates.per_reply["exact"] >= -1e-6).all()
    assert estimates.summary("k1")[2] > estimates.summary("exact")[2]
    assert "k3" in estimates.table()


def test_estimates_use_the_sampling_temperature():
    policy, reference = loops.tiny_lm(0), loops.tiny_lm(1)
    rollout = _rollout(policy, reference)
    at_one = kl_estimators.estimate(policy, reference, rollout, temperature=1.0).per_reply["exact"]
    at_half = kl_estimators.estimate(policy, reference, rollout, temperature=0.5).per_reply["exact"]
    assert not torch.allclose(at_one, at_half)
