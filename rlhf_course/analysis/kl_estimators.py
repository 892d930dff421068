"""Three sampled estimators of a reply's KL to the reference (k1, k2, k3), measured against the exact one.

A rollout gives, for each sampled token, its log-probability under the policy and under the reference. With
``r = log pi_ref(a) - log pi(a)`` at a token sampled from ``pi`` (Schulman, "Approximating KL divergence"):

- k1 = -r: unbiased, but negative whenever the reference likes the sampled token more; high variance.
- k2 = r**2 / 2: never negative, low variance, biased (its mean is not the KL, though close for nearby policies).
- k3 = exp(r) - 1 - r: never negative and unbiased (exp(r) has mean 1 under pi), low variance near pi_ref.

The exact per-token KL sums over the whole vocabulary at each sampled prefix,
``sum_v pi(v) (log pi(v) - log pi_ref(v))``; summed over a reply it has the same mean as the sampled
estimators' sums (the KL of the reply distribution), with far less noise: it is the yardstick here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_course.algorithms.rollouts import Rollout, forward_response

ESTIMATORS = ("k1", "k2", "k3", "exact")


@dataclass
class KLEstimates:
    per_reply: dict[str, torch.Tensor]  # estimator -> (replies,), summed over each reply's tokens
    lowest_k3_token: float  # the smallest per-token k3 seen (never below 0)

    def summary(self, name: str) -> tuple[float, float, float]:
        """(mean, standard error of the mean, standard deviation) of one estimator's per-reply values."""
        values = self.per_reply[name].double()
        std = values.std().item()
        return values.mean().item(), std / len(values) ** 0.5, std

    def table(self) -> str:
        rows = [f"{'estimator':<10}{'mean per reply':>16}{'± s.e.':>9}{'std per reply':>15}{'replies < 0':>13}"]
        for name in ESTIMATORS:
            mean, se, std = self.summary(name)
            negative = (self.per_reply[name] < 0).double().mean().item()
            rows.append(f"{name:<10}{mean:>16.4f}{se:>9.4f}{std:>15.4f}{negative:>13.1%}")
        return "\n".join(rows)


@torch.no_grad()
def estimate(policy, reference, rollout: Rollout, temperature: float = 1.0) -> KLEstimates:
    """Each reply's KL to ``reference`` by k1, k2, k3 and exactly, for a rollout sampled from ``policy`` at
    ``temperature`` (the distributions compared are the sampling ones: logits divided by it)."""
    policy.eval()
    reference.eval()
    args = (rollout.sequences, rollout.attention_mask, rollout.prompt_width)
    log_p = torch.log_softmax(forward_response(policy, *args)[1] / temperature, dim=-1)  # (batch, resp, vocab)
    log_q = torch.log_softmax(forward_response(reference, *args)[1] / temperature, dim=-1)
    tokens = rollout.sequences[:, rollout.prompt_width :].unsqueeze(-1)  # (batch, resp, 1)
    r = (log_q.gather(-1, tokens) - log_p.gather(-1, tokens)).squeeze(-1)  # (batch, resp): log(pi_ref / pi)
    mask = rollout.response_mask.to(r.dtype)
    per_token = {
        "k1": -r,
        "k2": 0.5 * r**2,
        "k3": torch.expm1(r) - r,
        "exact": (log_p.exp() * (log_p - log_q)).sum(-1),
    }
    return KLEstimates(
        per_reply={name: (value * mask).sum(dim=1).cpu() for name, value in per_token.items()},
        lowest_k3_token=per_token["k3"][mask.bool()].min().item(),
    )
