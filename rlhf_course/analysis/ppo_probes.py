"""Probe tasks: tiny environments with known answers that catch a broken PPO piece in a second.

A bug in an RL loss rarely crashes; the run just learns a little less, and on a language model that
costs minutes to notice. These probes (after Andy Jones' debugging advice for RL) train a *tabular*
policy and value function with the very pieces the language-model PPO uses (``gae``, ``whiten``,
``ppo_policy_loss``, ``ppo_value_loss``, through the registry, so a learner's versions are probed too)
on environments whose optimal values and actions are known:

1. constant reward: the value must learn 1. Fails when the value loss or the returns are wrong.
2. reward depends on the observation: values +1 and -1. Fails when the value ignores the state.
3. delayed, discounted reward: values 0.25, 0.5, 1. Fails when GAE bootstraps or discounts wrongly.
4. reward depends on the action: the policy must pick action 0. Fails with a flipped advantage sign
   or a clipped objective that takes the wrong side.
5. credit assignment: only the *first* action (matching the observation) is rewarded, two steps later.
   Fails when advantages do not carry the reward back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhf_course.algorithms.ppo import gae, ppo_policy_loss, ppo_value_loss, whiten


@dataclass(frozen=True)
class Probe:
    name: str
    steps: int  # episode length
    observations: int  # the observation is drawn at the start and stays fixed
    actions: int
    gamma: float
    reward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (obs (n,), actions (n, steps)) -> (n,) final reward
    values: list[list[float]]  # optimal value of each (observation, step)
    best_first_action: list[int] | None  # optimal action at step 0 per observation, when the policy matters
    catches: str


PROBES = [
    Probe(
        "constant reward",
        1,
        1,
        1,
        1.0,
        lambda o, a: torch.ones(len(o)),
        [[1.0]],
        None,
        "the value loss or the returns (returns = advantages + values)",
    ),
    Probe(
        "observation-dependent reward",
        1,
        2,
        1,
        1.0,
        lambda o, a: 1.0 - 2.0 * o.float(),
        [[1.0], [-1.0]],
        None,
        "the value loss: it should fit each state's own return",
    ),
    Probe(
        "delayed discounted reward",
        3,
        1,
        1,
        0.5,
        lambda o, a: torch.ones(len(o)),
        [[0.25, 0.5, 1.0]],
        None,
        "GAE: delta_t = r_t + gamma * V_(t+1) - V_t, with V = 0 after the last step",
    ),
    Probe(
        "action-dependent reward",
        1,
        1,
        2,
        1.0,
        lambda o, a: (a[:, 0] == 0).float(),
        [[1.0]],
        [0],
        "the policy loss: its sign, or which side of the clip it takes (the loss is the max of -A*ratio terms)",
    ),
    Probe(
        "credit assignment",
        3,
        2,
        2,
        1.0,
        lambda o, a: (a[:, 0] == o).float(),
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [0, 1],
        "GAE: the advantage of the first action must carry the reward from the end of the episode",
    ),
]


@dataclass
class ProbeResult:
    probe: Probe
    values: list[list[float]]
    best_action_prob: float | None
    passed: bool

    def __str__(self) -> str:
        line = (
            f"{'PASS' if self.passed else 'FAIL'}  {self.probe.name}: values {self.values} (want {self.probe.values})"
        )
        if self.best_action_prob is not None:
            line += f", P(best first action) {self.best_action_prob:.2f} (want > 0.9)"
        return line + ("" if self.passed else f"\n      -> look at {self.probe.catches}")


def run_probe(
    probe: Probe, iterations: int = 150, episodes: int = 64, epochs: int = 4, lr: float = 0.1, seed: int = 0
) -> ProbeResult:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.zeros(probe.observations, probe.steps, probe.actions, requires_grad=True)
    value = torch.zeros(probe.observations, probe.steps, requires_grad=True)
    optimizer = torch.optim.Adam([logits, value], lr=lr)
    mask = torch.ones(episodes, probe.steps)
    for _ in range(iterations):
        obs = torch.randint(probe.observations, (episodes,), generator=gen)  # (n,)
        with torch.no_grad():
            probs = torch.softmax(logits[obs], dim=-1)  # (n, steps, actions)
            actions = torch.multinomial(probs.view(-1, probe.actions), 1, generator=gen).view(episodes, probe.steps)
            old_logprobs = torch.log(probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1))  # (n, steps)
            old_values = value[obs]  # (n, steps)
            rewards = torch.zeros(episodes, probe.steps)
            rewards[:, -1] = probe.reward(obs, actions)
            advantages, returns = gae(rewards, old_values, mask, probe.gamma, 0.95)
            advantages = whiten(advantages, mask) if probe.actions > 1 else advantages
        for _ in range(epochs):
            logprobs = torch.log_softmax(logits[obs], -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            loss = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, 0.2) + ppo_value_loss(
                value[obs], old_values, returns, mask, 0.2
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    learned = value.detach()
    values_ok = torch.allclose(learned, torch.tensor(probe.values), atol=0.1)
    best = None
    if probe.best_first_action is not None:
        first = torch.softmax(logits.detach()[:, 0], dim=-1)  # (observations, actions)
        best = float(first[torch.arange(probe.observations), torch.tensor(probe.best_first_action)].min())
    return ProbeResult(
        probe,
        [[round(v, 2) for v in row] for row in learned.tolist()],
        best,
        bool(values_ok and (best is None or best > 0.9)),
    )


def run_probes(verbose: bool = True) -> list[ProbeResult]:
    """Every probe with the pieces now active in the registry (the learner's, once plugged in)."""
    results = [run_probe(p) for p in PROBES]
    if verbose:
        print("\n".join(str(r) for r in results))
    return results
