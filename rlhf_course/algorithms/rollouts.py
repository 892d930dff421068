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
    split = len(tasks) >= distributed.world_size()
    mine = distributed.shard(tasks) if split else tasks
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
        rows=distributed.shard_rows(len(tasks)) if split else None,
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
    return gather(rollout, tasks, tokenizer.pad_token_id) if split else rollout


def gather(rollout: Rollout, tasks: list[world.Task], pad_id: int) -> Rollout:
    """The whole batch's rollout, on every process, from each process's share of ``tasks``; with one
    process, ``rollout`` itself.

    Prompts are re-padded on the left to the widest prompt of the batch and responses on the right to its
    longest response, so the tensors are those one process would have collected for the whole batch.
    """
    if not distributed.active():
        return rollout
    n = len(tasks)
    left = distributed.max_(rollout.prompt_width) - rollout.prompt_width
    right = distributed.max_(rollout.response_mask.shape[1]) - rollout.response_mask.shape[1]

    def whole(tensor, pad=(0, right), value=0):
        return distributed.gather_rows(torch.nn.functional.pad(tensor, pad, value=value), n)

    return Rollout(
        tasks,
        whole(rollout.sequences, (left, right), pad_id),
        whole(rollout.attention_mask, (left, right)),
        whole(rollout.response_mask),
        rollout.prompt_width + left,
        distributed.gather_objects(rollout.responses, n),
        whole(rollout.logprobs),
        whole(rollout.ref_logprobs),
        distributed.gather_rows(rollout.scores, n),
        distributed.gather_rows(rollout.ended, n),
        distributed.gather_objects(rollout.gold, n),
    )


def reward_model_scorer(model, tokenizer):
    """A scorer from a trained reward model: its normalised reward for each (task, response)."""

    def score(tasks, responses):
        return reward_model.score(model, tokenizer, [t.prompt for t in tasks], responses)

    return score


def correctness_scorer(tasks, responses):
    """A verifiable reward: 1 for an exact-match answer, 0 otherwise (no reward model at all)."""
    return [float(world.is_correct(t, r)) for t, r in zip(tasks, responses)]
