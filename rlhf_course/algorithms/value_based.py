"""Why policy gradients and not Q-learning: a toy token MDP, value-based against policy-based (lesson 04).

The toy: write one target sequence of ``length`` tokens from a vocabulary of ``vocab``; the reward is 1 for
exactly that sequence, 0 otherwise, and arrives at the end, as a reward model's score does. A policy
gradient can start from a "pretrained" distribution that is often right; a Q-table holds values, not
probabilities, so tabular Q-learning starts from nothing.
"""

from __future__ import annotations

import random

import torch


def toy_episodes_to_solve(
    method: str,
    vocab: int = 30,
    length: int = 3,
    prior_mass: float = 0.3,
    seed: int = 0,
    max_episodes: int = 100_000,
    batch: int = 16,
    lr: float | None = None,
) -> int:
    """Episodes until a learner writes the target sequence reliably; ``max_episodes`` if it never does.

    ``"reinforce"`` starts from a policy that gives the right token ``prior_mass`` at each step (as an SFT
    model is often nearly right) and is solved when P(target) > 0.9. ``"q_learning"`` is tabular Q-learning
    over prefixes with epsilon-greedy exploration, solved when its greedy answer is the target. Every random
    draw comes from ``seed``, so a call gives the same answer whatever ran before it.
    """
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(vocab, (length,), generator=gen)  # (length,)
    if method == "reinforce":
        prior = torch.full((length, vocab), (1 - prior_mass) / (vocab - 1))
        prior[torch.arange(length), target] = prior_mass
        logits = prior.log().clone().requires_grad_(True)  # (length, vocab): one distribution per step
        optimizer = torch.optim.SGD([logits], lr=5.0 if lr is None else lr)
        for episodes in range(batch, max_episodes + 1, batch):
            log_probs = torch.log_softmax(logits, dim=-1)  # (length, vocab)
            with torch.no_grad():  # (batch, length): each step's token drawn from its distribution
                tokens = torch.multinomial(log_probs.exp(), batch, replacement=True, generator=gen).T
            reward = (tokens == target).all(dim=1).float()  # (batch,)
            advantage = reward - reward.mean()
            taken = log_probs[torch.arange(length), tokens].sum(dim=1)  # (batch,) log-probability of each sequence
            loss = -(taken * advantage).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if torch.log_softmax(logits, -1)[torch.arange(length), target].sum().exp() > 0.9:
                return episodes
        return max_episodes
    if method == "q_learning":
        goal = tuple(target.tolist())
        q = {}  # prefix (tuple of tokens) -> list of vocab action values; plain Python, it is tiny and scalar
        rng = random.Random(seed)
        for episode in range(1, max_episodes + 1):
            prefix = ()
            for step in range(length):
                values = q.setdefault(prefix, [0.0] * vocab)
                best = max(values)
                if rng.random() < 0.1 or best == 0.0:  # explore (always, until something was rewarded)
                    action = rng.randrange(vocab)
                else:
                    action = values.index(best)
                nxt = prefix + (action,)
                done = step == length - 1
                reward = float(done and nxt == goal)
                future = 0.0 if done else max(q.setdefault(nxt, [0.0] * vocab))
                values[action] += (0.5 if lr is None else lr) * (reward + future - values[action])
                prefix = nxt
            greedy = ()
            while len(greedy) < length and max(q.get(greedy, [0.0])) > 0:
                values = q[greedy]
                greedy += (values.index(max(values)),)
            if greedy == goal:
                return episode
        return max_episodes
    raise ValueError(f"method must be 'reinforce' or 'q_learning', got {method!r}")
