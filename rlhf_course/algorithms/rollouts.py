"""Rollouts: the policy answers a batch of prompts, and every token gets its log-probability and reward.

Generation is a token-level MDP. The state is the prompt plus the tokens so far, an action is the next
token, the transition appends it, and the episode ends at EOS (or at the length limit). The reward
model scores the finished response once; a per-token KL penalty to the frozen reference (SFT) model
keeps the policy near the text the reward model was trained on.

Shapes. Prompts are left-padded to a common width P, so every response starts at column P and all
per-token tensors cover the response columns only: ``(batch, resp)``. The logits at column P-1+t
predict response token t. Details that matter (Huang et al. 2024): position ids come from the
attention mask, so a left-padded prompt still starts at position 0; the logits are divided by the
sampling temperature before the log-probabilities are taken, so they are the log-probabilities of
the distribution that was actually sampled; the score is read at the last real token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate.utils import gather as gather_tensors
from accelerate.utils import pad_across_processes

from rlhf_course.algorithms import reward_model
from rlhf_course.core import distributed, models, runtime
from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import decode_responses, generate, pad_batch
from rlhf_course.core.registry import replaceable
from rlhf_course.simulation import human, world


@replaceable("token_logprobs")
def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each taken token under the sampling distribution softmax(logits / temperature).

    logits: (batch, resp, vocab), already aligned so that ``logits[:, t]`` predicts ``tokens[:, t]``;
    tokens: (batch, resp). Returns (batch, resp). Padding positions get a value too; callers mask them.
    """
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)  # (batch, resp, vocab)
    return log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).to(logits.dtype)


@replaceable("kl_penalized_rewards")
def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * (log pi - log pi_ref)`` on every response token, plus the score on the last.

    scores: (batch,); logprobs, ref_logprobs, response_mask: (batch, resp), the mask 1 on response tokens
    (EOS included) and 0 on the padding after them. Padding gets reward 0.
    """
    mask = response_mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask  # (batch, resp)
    last = (response_mask.long().sum(dim=1) - 1).clamp(min=0)  # (batch,) index of the last response token
    return rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))


def forward_response(model, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int):
    """Hidden states and logits at the columns that predict the response: each (batch, resp, ...)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (batch, seq)
    with runtime.autocast(sequences.device):
        hidden = models.backbone(model)(
            input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state  # (batch, seq, d)
        hidden = hidden[:, prompt_width - 1 : -1]  # (batch, resp, d): the state before each response token
        logits = model.get_output_embeddings()(hidden)  # (batch, resp, vocab)
    return hidden, logits.float()


def response_logprobs(model, sequences, attention_mask, prompt_width: int, temperature: float) -> torch.Tensor:
    """(batch, resp) log-probabilities of the response tokens under ``model``."""
    _, logits = forward_response(model, sequences, attention_mask, prompt_width)
    return token_logprobs(logits, sequences[:, prompt_width:], temperature)


def freeze(reference) -> None:
    """The frozen reference of the KL penalty: eval mode (no dropout) and no gradients, ever."""
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)


@dataclass
class Rollout:
    tasks: list[world.Task]
    sequences: torch.Tensor  # (batch, seq): left-padded prompt, response, padding
    attention_mask: torch.Tensor  # (batch, seq)
    response_mask: torch.Tensor  # (batch, resp): 1 on response tokens, EOS included
    prompt_width: int
    responses: list[str]
    logprobs: torch.Tensor  # (batch, resp) under the policy that sampled them
    ref_logprobs: torch.Tensor  # (batch, resp) under the frozen reference
    scores: torch.Tensor  # (batch,) reward-model score, after the no-EOS penalty
    ended: torch.Tensor  # (batch,) bool: the response emitted EOS
    gold: list[float] = field(default_factory=list)  # the hidden gold score: for plots, never for training

    @property
    def kl(self) -> torch.Tensor:
        """(batch,) sampled KL to the reference: sum over response tokens of log pi - log pi_ref."""
        return ((self.logprobs - self.ref_logprobs) * self.response_mask).sum(dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)


@torch.no_grad()
def collect(
    policy,
    reference,
    scorer,
    tokenizer,
    tasks: list[world.Task],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 40,
    no_eos_penalty: float | None = -1.0,
    seed: int = 0,
) -> Rollout:
    """Sample one response per task and measure it: log-probs under policy and reference, and a score.

    ``scorer(tasks, responses) -> (batch,)`` is the reward (a reward model, or a verifier).
    A response that never emits EOS gets ``no_eos_penalty`` in place of its score (None keeps the score).
    Under several processes each one samples and measures its share of the tasks, and every process gets
    the whole batch's rollout: the one a single process would have collected (see ``gather``). So every
    process must call it, with the same tasks, as every process runs the trainers that call it. With fewer
    tasks than processes, every process samples all of them.
    """
    was_training = policy.training
    policy.eval()
    dev = next(policy.parameters()).device
    shares = _shares(len(tasks), distributed.processes())
    rows = shares[distributed.processes().process_index] if shares else range(len(tasks))
    mine = [tasks[i] for i in rows]
    prompts = [encode(tokenizer, task.prompt)[0] for task in mine]
    prompt_ids, prompt_mask = pad_batch(prompts, tokenizer.pad_token_id, side="left")  # (batch, P)
    sequences, full_response_mask = generate(
        policy,
        prompts,
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        rows=rows,
    )
    width = prompt_ids.shape[1]
    response_mask = full_response_mask[:, width:]  # (batch, resp)
    attention_mask = torch.cat([prompt_mask.to(dev), response_mask], dim=1)  # (batch, seq)
    logprobs = response_logprobs(policy, sequences, attention_mask, width, temperature)
    ref_logprobs = response_logprobs(reference, sequences, attention_mask, width, temperature)
    responses = decode_responses(tokenizer, sequences[:, width:], response_mask)
    response_tokens = sequences[:, width:]
    ended = ((response_tokens == tokenizer.eos_token_id) & (response_mask == 1)).any(dim=1)
    scores = torch.as_tensor(scorer(mine, responses), dtype=torch.float32).to(dev)
    if no_eos_penalty is not None:
        scores = torch.where(ended, scores, torch.full_like(scores, no_eos_penalty))
    policy.train(was_training)
    rollout = Rollout(
        mine,
        sequences,
        attention_mask,
        response_mask,
        width,
        responses,
        logprobs,
        ref_logprobs,
        scores,
        ended,
        [human.gold_score(t, r) for t, r in zip(mine, responses)],
    )
    return gather(rollout, tasks, tokenizer, shares) if shares else rollout


def _shares(n: int, processes) -> list[range] | None:
    """Each process's rows of a batch of ``n``: rows ``index, index + P, ...``, as in the trainers. None in
    one process, or with fewer rows than processes (then every process takes them all)."""
    count = processes.num_processes
    return [range(i, n, count) for i in range(count)] if 1 < count <= n else None


def gather(rollout: Rollout, tasks: list[world.Task], tokenizer, shares: list[range]) -> Rollout:
    """The whole batch's rollout, on every process, from each process's ``shares`` of ``tasks``.

    Prompts are re-padded on the left to the widest prompt of the batch and responses on the right to its
    longest response, so the tensors are those one process would have collected for the whole batch. Only
    tensors travel: texts and gold scores are decoded and scored again from the gathered tokens.
    """
    most = len(shares[0])  # the largest share
    # accelerate gathers process by process, each share padded to ``most`` rows: where each row of the batch is
    order = [p * most + j for j in range(most) for p, share in enumerate(shares) if j < len(share)]

    def whole(tensor, pad=0, left=False):
        wire = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor  # gloo sends no bools
        if wire.dim() > 1:  # the same width everywhere
            wire = pad_across_processes(wire, dim=1, pad_index=pad, pad_first=left)
        wire = pad_across_processes(wire, dim=0)  # the same number of rows everywhere
        return gather_tensors(wire)[order].to(tensor.dtype)

    width = rollout.prompt_width
    pad_id = tokenizer.pad_token_id
    prompts, responses = (
        whole(rollout.sequences[:, :width], pad_id, left=True),
        whole(rollout.sequences[:, width:], pad_id),
    )
    response_mask = whole(rollout.response_mask)
    attention_mask = torch.cat([whole(rollout.attention_mask[:, :width], left=True), response_mask], dim=1)
    texts = decode_responses(tokenizer, responses, response_mask)
    return Rollout(
        tasks,
        torch.cat([prompts, responses], dim=1),
        attention_mask,
        response_mask,
        prompts.shape[1],
        texts,
        whole(rollout.logprobs),
        whole(rollout.ref_logprobs),
        whole(rollout.scores),
        whole(rollout.ended),
        [human.gold_score(t, r) for t, r in zip(tasks, texts)],
    )


def reward_model_scorer(model, tokenizer):
    """A scorer from a trained reward model: its normalised reward for each (task, response)."""

    def score(tasks, responses):
        return reward_model.score(model, tokenizer, [t.prompt for t in tasks], responses)

    return score


def correctness_scorer(tasks, responses):
    """A verifiable reward: 1 for an exact-match answer, 0 otherwise (no reward model at all)."""
    return [float(world.is_correct(t, r)) for t, r in zip(tasks, responses)]
