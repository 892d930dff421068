"""The three ways of averaging a per-token loss, and the length toy that shows the sequence mean's bias."""

import pytest
import torch

from rlhf_course.analysis import loss_averaging as la

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 70.0, 80.0], [9.0, 90.0, 90.0, 90.0]])


def test_each_averaging_is_the_formula_trl_names_it_by():
    # "grpo": mean per reply, then over replies; "bnpo": one mean over real tokens; "dr_grpo": sum / (B * T)
    assert la.average(PER_TOKEN, MASK, "sequence", 40).item() == pytest.approx((2.5 + 5.5 + 9.0) / 3)
    assert la.average(PER_TOKEN, MASK, "token", 40).item() == pytest.approx((10 + 11 + 9) / 7)
    assert la.average(PER_TOKEN, MASK, "constant", 40).item() == pytest.approx(30 / (3 * 40))


def test_weights_are_zero_on_padding_and_the_sequence_mean_favours_short_replies():
    for how in la.AVERAGINGS:
        weights = la.token_weights(MASK, how, 40)
        assert weights.shape == MASK.shape and (weights[MASK == 0] == 0).all()
    sequence = la.token_weights(MASK, "sequence", 40)
    assert sequence[2, 0] == 4 * sequence[0, 0]  # a 1-token reply's token weighs 4 times a 4-token reply's
    assert sequence.sum().item() == pytest.approx(1.0) and la.token_weights(MASK, "token", 40).sum() == 1.0
    assert torch.unique(la.token_weights(MASK, "constant", 40)[MASK == 1]).numel() == 1


def test_an_unknown_averaging_is_refused_by_name():
    with pytest.raises(ValueError, match="sequence"):
        la.token_weights(MASK, "mean", 40)


def test_expected_length_is_the_capped_geometric_mean():
    logit = torch.tensor(0.9).logit()
    assert la.expected_length(logit, 40).item() == pytest.approx(sum(0.9**n for n in range(40)), rel=1e-5)


def test_batches_side_by_side_average_separately():
    stacked = la.average(torch.stack([PER_TOKEN, 2 * PER_TOKEN]), torch.stack([MASK, MASK]), "token", 40)
    assert stacked.shape == (2,) and stacked[1] == 2 * stacked[0] == 2 * la.average(PER_TOKEN, MASK, "token", 40)


def test_the_sequence_mean_lengthens_wrong_replies_and_shortens_right_ones_while_the_constant_does_not():
    config = la.LengthToyConfig(runs=20, updates=150)
    sequence = la.length_toy("sequence", config)
    assert sequence["right"].shape == (20, 151)
    assert torch.allclose(sequence["right"][:, 0], sequence["wrong"][:, 0])
    assert sequence["right"][0, 0].item() == pytest.approx(config.start_length, abs=0.5)
    assert (sequence["wrong"][:, -1] > 25).all() and (sequence["right"][:, -1] < 3).all()
    constant = la.length_toy("constant", config)
    gaps = constant["wrong"][:, -1] - constant["right"][:, -1]
    assert gaps.mean().abs() < 3 * gaps.std() / len(gaps) ** 0.5  # a random walk: Adam on zero-mean gradients


def test_the_toy_is_deterministic_for_a_seed():
    config = la.LengthToyConfig(runs=3, updates=20, seed=3)
    first, second = la.length_toy("token", config), la.length_toy("token", config)
    assert all(torch.equal(first[k], second[k]) for k in ("right", "wrong"))
