"""Direct preference optimisation (DPO) and IPO: learning from comparisons without a reward model.

The KL-regularised RL objective of lessons 04-05, ``max E[r] - beta * KL(pi || pi_ref)``, has a closed-form
optimum: ``pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)``. Turned around, any policy defines an
implicit reward ``beta * log(pi(y|x) / pi_ref(y|x))`` (up to a per-prompt constant that cancels in a
comparison). Put that reward into the Bradley-Terry loss of lesson 03 and the policy is trained directly
on the comparisons (Rafailov et al. 2023):

    loss = -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

IPO (Azar et al. 2023) replaces the log-sigmoid, which keeps pushing the margin up even on noisy labels,
with a squared loss that pulls the margin towards ``1 / (2 beta)``; as in TRL, its log-ratios are
averaged over each response's tokens so that the target margin does not depend on length.

The reference model never changes, so its log-probabilities are computed once before training.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from rlhf_course.algorithms.sft import IGNORE_INDEX, collate, length_grouped_batches
from rlhf_course.core import distributed, optimization, runtime
from rlhf_course.core.chat import encode
from rlhf_course.core.registry import replaceable


@replaceable("sequence_logprobs")
def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log pi(response | prompt): the sum of the response tokens' log-probabilities.

    logits: (batch, seq, vocab), the model's output for the whole sequence (``logits[:, t]`` predicts
    token t+1); labels: (batch, seq), the token ids with prompt and padding set to -100. Returns (batch,).
    """
    logits, labels = logits[:, :-1], labels[:, 1:]  # (batch, seq-1): position t predicts label t
    mask = labels != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (batch, seq-1, vocab)
    taken = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (batch, seq-1)
    return (taken * mask).sum(dim=1)


@replaceable("dpo_loss")
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    kind: str = "dpo",
) -> torch.Tensor:
    """Mean preference loss over a batch of pairs. All inputs are (batch,) log-probabilities of the chosen
    and rejected responses under the policy and the reference. ``kind``: "dpo" (sigmoid) or "ipo" (squared)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)  # (batch,) difference of log-ratios
    if kind == "dpo":
        return -F.logsigmoid(beta * margin).mean()
    if kind == "ipo":
        return ((margin - 1 / (2 * beta)) ** 2).mean()
    raise ValueError(f"unknown preference loss {kind!r}; expected 'dpo' or 'ipo'")


@dataclass
class DPOConfig:
    loss: Literal["dpo", "ipo"] = "dpo"
    beta: float = (
        0.3  # 0.1 let the policy drift (KL 2-3.7 nats, exact match fell on one seed); 0.3 stays near the SFT model
    )
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    seed: int = 0


@dataclass
class DPOResult:
    history: list[dict]  # per step: loss, implicit-reward accuracy and margin, log-prob shifts
    seconds: float


def encode_pairs(tokenizer, rows: list[dict]) -> list[tuple[list[int], int]]:
    """``(ids, prompt_length)`` for every chosen response, then every rejected one (TRL's row format)."""
    return [encode(tokenizer, r["prompt"], r["chosen"]) for r in rows] + [
        encode(tokenizer, r["prompt"], r["rejected"]) for r in rows
    ]


def collated(model, encoded: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``sft.collate``'s batch of ``encoded`` conversations, on ``model``'s device."""
    dev = next(model.parameters()).device
    return {k: v.to(dev) for k, v in collate(encoded, pad_id).items()}


def logprobs_of(model, batch: dict[str, torch.Tensor], *, length_normalised: bool = False) -> torch.Tensor:
    """(batch,) response log-probabilities of a ``collated`` batch under ``model`` (with grad if enabled)."""
    with runtime.autocast(batch["input_ids"].device):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logprobs(logits, batch["labels"])
    if length_normalised:  # IPO: the mean log-probability per reply token
        logps = logps / (batch["labels"] != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return logps


def batch_logprobs(model, encoded: list[tuple[list[int], int]], pad_id: int, *, length_normalised: bool = False):
    """(batch,) response log-probabilities of ``encoded`` conversations under ``model`` (with grad if enabled)."""
    return logprobs_of(model, collated(model, encoded, pad_id), length_normalised=length_normalised)


@replaceable("dpo_step")
def dpo_step(
    policy,
    optimizer,
    accelerator,
    batch: dict[str, torch.Tensor],
    ref_chosen,
    ref_rejected,
    beta: float,
    loss_type: str = "dpo",
    weight=1.0,
    max_grad_norm: float = 1.0,
):
    """One optimizer step on a batch of pairs: ``batch`` is ``collated`` with every chosen reply first, then every
    rejected one. Returns (the loss, the policy's chosen and rejected log-probabilities), detached.

    ``weight`` scales the loss before the backward pass (1 in one process).
    """
    logps = logprobs_of(policy, batch, length_normalised=loss_type == "ipo")  # (2 * pairs,), in one forward pass
    chosen, rejected = logps.split(len(ref_chosen))  # (pairs,) each
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach(), chosen.detach(), rejected.detach()


@torch.no_grad()
def reference_logprobs(reference, encoded, pad_id: int, batch_size: int = 128, **kwargs) -> torch.Tensor:
    """The frozen reference's log-probabilities, computed once: (n,) on the CPU."""
    reference.eval()
    return torch.cat(
        [
            batch_logprobs(reference, encoded[i : i + batch_size], pad_id, **kwargs).cpu()
            for i in range(0, len(encoded), batch_size)
        ]
    )


def train_dpo(
    policy, reference, tokenizer, rows: list[dict], config: DPOConfig = DPOConfig(), on_step=None
) -> DPOResult:
    """Train ``policy`` on preference rows ``{"prompt", "chosen", "rejected"}`` against the frozen ``reference``.
    Under ``accelerate launch`` each process trains on its share of every batch (see ``distributed``)."""
    if config.loss not in ("dpo", "ipo"):
        raise ValueError(f"unknown preference loss {config.loss!r}; expected 'dpo' or 'ipo'")
    start = time.time()
    runtime.seed_everything(config.seed)
    rng = random.Random(config.seed)
    pad = tokenizer.pad_token_id
    normalised = config.loss == "ipo"
    encoded = encode_pairs(tokenizer, rows)  # chosen rows first, then rejected
    n = len(rows)
    ref = reference_logprobs(reference, encoded, pad, length_normalised=normalised)  # (2n,)
    lengths = [len(encoded[i][0]) + len(encoded[n + i][0]) for i in range(n)]
    batches = [b for _ in range(config.epochs) for b in length_grouped_batches(lengths, config.batch_size, rng)]
    optimizer = optimization.adam(policy.parameters(), config.lr)
    scheduler = optimization.warmup_then_decay(optimizer, config.warmup_steps, len(batches))
    dev = next(policy.parameters()).device
    accelerator = distributed.accelerator()
    ddp_policy, optimizer = accelerator.prepare(policy, optimizer)  # the policy itself, in one process
    history = []
    policy.train()
    for step, indices in enumerate(runtime.progress(batches, desc=config.loss)):
        # 1. this process's pairs of the batch (all of them, in one process)
        pairs, counted = distributed.my_rows(accelerator, indices)
        # 2. the loss on both replies of each pair, and the optimizer step (dpo_step: lesson 06's exercise); the
        # reference's log-probabilities were computed once
        batch = collated(ddp_policy, [encoded[i] for i in pairs] + [encoded[n + i] for i in pairs], pad)
        ref_chosen, ref_rejected = ref[pairs].to(dev), ref[[n + i for i in pairs]].to(dev)
        weight = distributed.share_weight(accelerator, len(pairs) if counted else 0)
        loss, chosen, rejected = dpo_step(
            ddp_policy,
            optimizer,
            accelerator,
            batch,
            ref_chosen,
            ref_rejected,
            config.beta,
            config.loss,
            weight,
            config.max_grad_norm,
        )
        scheduler.step()
        # 3. statistics, each a mean over the whole batch (tensors, read back at the end: runtime.to_host)
        with torch.no_grad():
            reward_chosen = config.beta * (chosen - ref_chosen)  # (pairs,) the implicit rewards
            reward_rejected = config.beta * (rejected - ref_rejected)
            # a tie counts as half, as in the reward model's accuracy: the untrained policy scores 0.5, not 0. A tie is
            # up to float noise: the reference's log-probabilities came from other batches, and on some CPUs their
            # last bits differ from the policy's
            margin = reward_chosen - reward_rejected  # (pairs,)
            wins = (margin > 1e-5).float() + 0.5 * (margin.abs() <= 1e-5).float()
            measured = {
                "loss": loss,
                "reward_accuracy": wins.mean(),
                "reward_margin": (reward_chosen - reward_rejected).mean(),
                "chosen_logratio": (chosen - ref_chosen).mean(),
                "rejected_logratio": (rejected - ref_rejected).mean(),
            }
        row = {"step": step, **{name: accelerator.reduce(value * weight, "mean") for name, value in measured.items()}}
        history.append(row)
        if on_step is not None:
            on_step(runtime.to_host([row])[0])
    policy.eval()
    return DPOResult(runtime.to_host(history), time.time() - start)
