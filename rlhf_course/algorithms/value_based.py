"""Value-based against policy-based on a toy token MDP (lesson 04), and soft Q-learning (lesson 06).

The toy: write one target sequence of ``length`` tokens from a vocabulary of ``vocab``; the reward is 1 for
exactly that sequence, 0 otherwise, and arrives at the end, as a reward model's score does. Each learner
starts either from nothing (uniform) or from a "pretrained" distribution that is often right: REINFORCE
starts its policy there; Q-learning, whose table holds values rather than probabilities, draws its
exploratory actions from it (it learns off-policy, so any behaviour policy will do).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch


def toy_episodes_to_solve(
    method: str,
    vocab: int = 20,
    length: int = 3,
    prior_mass: float = 0.3,
    seed: int = 0,
    max_episodes: int = 50_000,
    batch: int = 16,
    lr: float | None = None,
    start: str = "prior",
) -> int:
    """Episodes until a learner writes the target sequence reliably; ``max_episodes`` if it never does.

    ``start="prior"`` is a distribution that gives the right token ``prior_mass`` at each step (as an SFT
    model is often nearly right), ``"uniform"`` gives every token the same. ``"reinforce"`` starts its policy
    there and is solved when its policy writes the target with probability > 0.9. ``"q_learning"`` is tabular
    Q-learning over prefixes, epsilon-greedy, its exploratory actions drawn from the start distribution; it is
    solved when its greedy answer (the policy it would deploy) is the target. Every random draw comes from
    ``seed``, so a call gives the same answer whatever ran before it.
    """
    if start not in ("prior", "uniform"):
        raise ValueError(f"start must be 'prior' or 'uniform', got {start!r}")
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(vocab, (length,), generator=gen)  # (length,)
    on_target = prior_mass if start == "prior" else 1 / vocab  # the start's probability of each right token
    start_distribution = torch.full((length, vocab), (1 - on_target) / (vocab - 1))  # (length, vocab)
    start_distribution[torch.arange(length), target] = on_target
    if method == "reinforce":
        logits = start_distribution.log().clone().requires_grad_(True)  # (length, vocab): one distribution per step
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
                    if rng.random() < on_target:  # a draw from the start distribution
                        action = goal[step]
                    else:
                        action = rng.choice([a for a in range(vocab) if a != goal[step]])
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
    if method == "dqn":
        return _dqn_episodes_to_solve(target, start_distribution, seed, gen, max_episodes, batch, lr)
    raise ValueError(f"method must be 'reinforce', 'q_learning' or 'dqn', got {method!r}")


def _dqn_episodes_to_solve(target, start, seed, gen, max_episodes, batch, lr) -> int:
    """DQN (Mnih et al. 2015) on the toy: a network maps a prefix to the values of all ``vocab`` next tokens,
    learned from a replay buffer against a target network that is synced every ``SYNC_EVERY`` updates, with
    epsilon-greedy exploration annealed over ``EXPLORE_EPISODES``. ``batch`` episodes run side by side, then
    one update on a random minibatch of stored transitions."""
    length, vocab = start.shape  # start: (length, vocab), the distribution exploratory actions are drawn from
    width = length * (vocab + 1)  # each position one-hot over the vocabulary plus "not written yet"
    with torch.random.fork_rng():  # the network's initial weights come from the seed alone
        torch.manual_seed(seed)
        q_net = torch.nn.Sequential(torch.nn.Linear(width, 64), torch.nn.ReLU(), torch.nn.Linear(64, vocab))
    target_net = copy.deepcopy(q_net)
    optimizer = torch.optim.Adam(q_net.parameters(), lr=1e-3 if lr is None else lr)

    def encode(prefixes: torch.Tensor) -> torch.Tensor:  # (n, length) tokens, -1 unwritten -> (n, width)
        return torch.nn.functional.one_hot(prefixes + 1, vocab + 1).flatten(1).float()

    capacity = 50_000  # transitions; the oldest are overwritten
    states, next_states = torch.zeros(capacity, width), torch.zeros(capacity, width)
    actions, rewards, dones = torch.zeros(capacity, dtype=torch.long), torch.zeros(capacity), torch.zeros(capacity)
    stored, updates, rewarded = 0, 0, False
    for episodes in range(batch, max_episodes + 1, batch):
        prefixes = torch.full((batch, length), -1)  # (batch, length)
        epsilon = max(0.05, 1 - episodes / EXPLORE_EPISODES)  # annealed linearly, as CleanRL's DQN does
        for step in range(length):
            state = encode(prefixes)  # (batch, width)
            with torch.no_grad():
                greedy = q_net(state).argmax(dim=-1)  # (batch,)
            explored = torch.multinomial(start[step], batch, replacement=True, generator=gen)  # (batch,)
            action = torch.where(torch.rand(batch, generator=gen) < epsilon, explored, greedy)
            prefixes = prefixes.clone()
            prefixes[:, step] = action
            done = step == length - 1
            reward = (prefixes == target).all(dim=1).float() if done else torch.zeros(batch)  # (batch,)
            slots = torch.arange(stored, stored + batch) % capacity
            states[slots], actions[slots], rewards[slots] = state, action, reward
            next_states[slots], dones[slots] = encode(prefixes), float(done)
            stored += batch
        rewarded = rewarded or bool(reward.any())
        if not rewarded:  # no stored transition carries any reward yet: updates start at the first one
            continue

        sample = torch.randint(min(stored, capacity), (4 * batch,), generator=gen)  # a minibatch of transitions
        with torch.no_grad():  # the Bellman target, from the target network: r + max_a' Q(s', a') unless done
            goal = rewards[sample] + (1 - dones[sample]) * target_net(next_states[sample]).max(dim=-1).values
        taken = q_net(states[sample]).gather(1, actions[sample, None]).squeeze(1)  # (4 * batch,)
        loss = torch.nn.functional.smooth_l1_loss(taken, goal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        updates += 1
        if updates % SYNC_EVERY == 0:
            target_net.load_state_dict(q_net.state_dict())

        with torch.no_grad():  # solved when the greedy answer, the policy it would deploy, is the target
            answer = torch.full((1, length), -1)
            for step in range(length):
                answer[0, step] = q_net(encode(answer)).argmax()
        if torch.equal(answer[0], target):
            return episodes
    return max_episodes


SYNC_EVERY = 50  # DQN's target network is copied from the learner every this many updates
EXPLORE_EPISODES = 10_000  # DQN's epsilon falls from 1 to 0.05 over this many episodes


# --- Soft Q-learning: the value-based road to the KL-regularised optimum (lesson 06) -----------------------
# The same token MDP, with a graded reward (the fraction of the target's tokens written) and a reference policy
# pi_ref that gives the target token ``prior_mass`` at each step. Maximising E[r] - beta KL(pi || pi_ref) has
# the closed-form optimum pi*(y) = pi_ref(y) exp(r(y) / beta) / Z that DPO starts from. Soft Q-learning reaches
# it from sampled episodes: its Q-values obey the soft Bellman equation
#     Q(s, a) = r(s, a) + V(s'),   V(s) = beta log sum_a pi_ref(a | s) exp(Q(s, a) / beta),
# and its policy is pi(a | s) = pi_ref(a | s) exp((Q(s, a) - V(s)) / beta); along a sequence the V's telescope
# to log Z, which is why the product of the per-token policies is pi*. (SAC is the same idea with an entropy
# bonus, a uniform pi_ref, and continuous actions.)


@dataclass
class TokenMDP:
    """Write ``length`` tokens from a vocabulary of ``vocab``; states are the prefixes, numbered depth by depth
    (the empty prefix, then the ``vocab`` one-token prefixes, ...), lexicographically within a depth."""

    vocab: int
    length: int
    target: torch.Tensor  # (length,)
    log_ref: torch.Tensor  # (states, vocab): log pi_ref(a | s)

    @property
    def offsets(self) -> list[int]:  # the first state of each depth
        return [sum(self.vocab**k for k in range(t)) for t in range(self.length + 1)]

    def state(self, prefix: torch.Tensor) -> torch.Tensor:
        """State numbers of prefixes (batch, t) -> (batch,)."""
        t = prefix.shape[1]
        powers = self.vocab ** torch.arange(t - 1, -1, -1)  # (t,)
        return self.offsets[t] + (prefix * powers).sum(dim=1)

    def sequences(self) -> torch.Tensor:
        """Every sequence, lexicographically: (vocab**length, length)."""
        return torch.cartesian_prod(*[torch.arange(self.vocab)] * self.length).view(-1, self.length)

    def reward(self, sequences: torch.Tensor) -> torch.Tensor:
        """The fraction of the target's tokens each sequence has in place: (batch, length) -> (batch,)."""
        return (sequences == self.target).float().mean(dim=1)

    def sequence_logprobs(self, log_policy: torch.Tensor) -> torch.Tensor:
        """log pi(y) of every sequence (vocab**length,) under per-state log-probabilities (states, vocab)."""
        seqs = self.sequences()
        return sum(log_policy[self.state(seqs[:, :t]), seqs[:, t]] for t in range(self.length))


def token_mdp(vocab: int = 30, length: int = 3, prior_mass: float = 0.3, seed: int = 0) -> TokenMDP:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(vocab, (length,), generator=gen)
    states = sum(vocab**t for t in range(length))
    depth = torch.cat([torch.full((vocab**t,), t) for t in range(length)])  # (states,)
    ref = torch.full((states, vocab), (1 - prior_mass) / (vocab - 1))
    ref[torch.arange(states), target[depth]] = prior_mass  # at each depth, that step's target token
    return TokenMDP(vocab, length, target, ref.log())


def kl_regularised_optimum(mdp: TokenMDP, beta: float) -> torch.Tensor:
    """log pi*(y) = log pi_ref(y) + r(y) / beta - log Z, for every sequence (vocab**length,)."""
    unnormalised = mdp.sequence_logprobs(mdp.log_ref) + mdp.reward(mdp.sequences()) / beta
    return unnormalised - torch.logsumexp(unnormalised, dim=0)


def soft_policy(mdp: TokenMDP, q: torch.Tensor, beta: float) -> torch.Tensor:
    """log pi(a | s) = log pi_ref(a | s) + (Q(s, a) - V(s)) / beta: (states, vocab)."""
    return torch.log_softmax(mdp.log_ref + q / beta, dim=1)


def soft_values(mdp: TokenMDP, q: torch.Tensor, beta: float) -> torch.Tensor:
    """V(s) = beta log sum_a pi_ref(a | s) exp(Q(s, a) / beta): (states,)."""
    return beta * torch.logsumexp(mdp.log_ref + q / beta, dim=1)


def soft_value_iteration(mdp: TokenMDP, beta: float) -> torch.Tensor:
    """The exact soft Q-values, backwards from the last token: (states, vocab)."""
    q = torch.zeros_like(mdp.log_ref)
    start = mdp.offsets
    # the last token's Q is the reward of the sequence it completes (sequences() is in state order)
    q[start[-2] : start[-1]] = mdp.reward(mdp.sequences()).view(-1, mdp.vocab)
    for t in range(mdp.length - 2, -1, -1):  # Q(s, a) = V(s + a): depth t's children fill depth t + 1
        q[start[t] : start[t + 1]] = soft_values(mdp, q, beta)[start[t + 1] : start[t + 2]].view(-1, mdp.vocab)
    return q


def total_variation(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum().item()


@dataclass
class SoftQConfig:
    vocab: int = 30
    length: int = 3
    prior_mass: float = 0.3  # pi_ref's probability of the target token at each step
    beta: float = 0.5
    episodes: int = 40_000
    batch: int = 64  # episodes sampled per update, from the current soft policy
    lr: float = 0.3  # step towards the mean TD target of each visited (state, token)
    measure_every: int = 25  # updates (625 in all with the defaults)
    seed: int = 0


def soft_q_learning(config: SoftQConfig = SoftQConfig()) -> dict:
    """Tabular soft Q-learning from sampled episodes, starting at Q = 0, that is at pi = pi_ref.

    Returns the episodes seen and the total variation distance between the policy's distribution over whole
    sequences and the closed-form optimum at each measurement, and the final Q-table.
    """
    mdp = token_mdp(config.vocab, config.length, config.prior_mass, config.seed)
    optimum = kl_regularised_optimum(mdp, config.beta)
    gen = torch.Generator().manual_seed(config.seed + 1)
    q = torch.zeros_like(mdp.log_ref)  # (states, vocab)
    seen, tv = [0], [total_variation(mdp.sequence_logprobs(soft_policy(mdp, q, config.beta)), optimum)]
    for update in range(1, config.episodes // config.batch + 1):
        policy = soft_policy(mdp, q, config.beta).exp()  # (states, vocab)
        tokens = torch.zeros(config.batch, 0, dtype=torch.long)
        states = []
        for _ in range(config.length):  # sample each episode token by token from the current policy
            s = mdp.state(tokens)  # (batch,)
            states.append(s)
            tokens = torch.cat([tokens, torch.multinomial(policy[s], 1, generator=gen)], dim=1)
        states = torch.stack(states, dim=1)  # (batch, length)
        values = soft_values(mdp, q, config.beta)  # (states,)
        # TD targets: V of the next state, and the reward at the last token (no discount, reward at the end)
        targets = torch.cat([values[states[:, 1:]], mdp.reward(tokens).unsqueeze(1)], dim=1)  # (batch, length)
        pairs = (states * config.vocab + tokens).view(-1)  # flat (state, token) indices
        count = torch.zeros(q.numel()).index_add_(0, pairs, torch.ones_like(pairs, dtype=torch.float))
        total = torch.zeros(q.numel()).index_add_(0, pairs, targets.reshape(-1))
        visited = count > 0
        flat = q.view(-1)  # a visited pair moves toward the mean of its targets in this batch
        flat[visited] += config.lr * (total[visited] / count[visited] - flat[visited])
        if update % config.measure_every == 0:
            seen.append(update * config.batch)
            tv.append(total_variation(mdp.sequence_logprobs(soft_policy(mdp, q, config.beta)), optimum))
    return {"episodes": seen, "tv": tv, "q": q, "mdp": mdp}
