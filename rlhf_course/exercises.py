"""Exercises: the catalog, the checks that name the likely mistake, and the exercise files.

Each exercise is one replaceable piece of the package (see ``registry``). A learner writes it in
``exercises/<file>.py``; ``check(id)`` runs that function on seeded inputs, compares it with the
reference and, when it fails, says which plausible mistake the output looks like (wrong mask,
off-by-one, missing shift, wrong normalisation...). ``plug_in_passing()`` puts every passing function
into the real training loop. ``exercises/`` is generated from ``solutions/`` by replacing the regions
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` with a stub (the nbgrader convention).
"""
from __future__ import annotations

import importlib
import importlib.util
import contextlib
import io
import multiprocessing
import re
import shutil
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhf_course import registry
from rlhf_course.dpo import dpo_loss, sequence_logprobs
from rlhf_course.grpo import group_advantages, grpo_loss
from rlhf_course.language_model import IGNORE_INDEX, next_token_loss, top_p_filter
from rlhf_course.policy_gradient import reinforce_loss
from rlhf_course.ppo import gae, ppo_policy_loss, ppo_value_loss, whiten
from rlhf_course.reward_model import bradley_terry_loss, last_token_rewards
from rlhf_course.rollouts import kl_penalized_rewards, token_logprobs
from rlhf_course.sft import sft_labels

REPO = Path(__file__).resolve().parent.parent
EXERCISES_DIR = REPO / "exercises"
SOLUTIONS_DIR = REPO / "solutions"


class Fail(Exception):
    """A check failed; the message says what was wrong and the likely mistake."""


@dataclass
class Check:
    name: str
    run: Callable[[Callable], None]  # raises Fail (or anything else) when the learner's function is wrong


@dataclass
class Exercise:
    id: str
    lesson: str
    file: str
    difficulty: str
    summary: str
    checks: list[Check]

    @property
    def reference(self) -> Callable:
        return registry.PIECES[self.id].reference


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)


def _diagnose(got: torch.Tensor, mistakes: dict[str, torch.Tensor], default: str) -> str:
    """The hint of the known mistake whose output matches the learner's, else ``default``."""
    for hint, value in mistakes.items():
        if _close(got.detach(), value):
            return hint
    return default


# --- pad_batch --------------------------------------------------------------------------------
PAD = 1
SEQS = [[5, 6, 7], [8], [9, 10]]


def _pad_shape(fn):
    ids, mask = fn(SEQS, PAD, side="right")
    if tuple(ids.shape) != (3, 3) or tuple(mask.shape) != (3, 3):
        raise Fail(f"expected shape (3, 3) (batch, longest sequence), got {tuple(ids.shape)} and {tuple(mask.shape)}; "
                   "the width must be the length of the longest sequence")
    if ids.dtype != torch.long or mask.dtype != torch.long:
        raise Fail(f"expected two torch.long tensors, got {ids.dtype} and {mask.dtype}")


def _pad_mask(fn):
    for side in ("right", "left"):
        ids, mask = fn(SEQS, PAD, side=side)
        if mask.sum().item() != 6 or set(mask.unique().tolist()) - {0, 1}:
            raise Fail(f"side={side!r}: the attention mask should hold 1 for the 6 real tokens and 0 for the 3 pads, "
                       f"got {mask.tolist()}; is it inverted?")
        if not torch.equal(mask.bool(), ids != PAD):
            raise Fail(f"side={side!r}: attention_mask must be 1 exactly where the real tokens are (mask {mask.tolist()}, "
                       f"ids {ids.tolist()})")


def _pad_value(fn):
    ids, _ = fn(SEQS, PAD, side="right")
    if (ids == 0).any():
        raise Fail(f"padding should use pad_id={PAD}, got {ids.tolist()}; fill with pad_id, not 0 "
                   "(token 0 is a real token)")


def _pad_sides(fn):
    right = torch.tensor([[5, 6, 7], [8, PAD, PAD], [9, 10, PAD]])
    left = torch.tensor([[5, 6, 7], [PAD, PAD, 8], [PAD, 9, 10]])
    got_right, _ = fn(SEQS, PAD, side="right")
    if not torch.equal(got_right, right):
        raise Fail(f"side='right' should put tokens first and padding after: expected {right.tolist()}, "
                   f"got {got_right.tolist()}")
    got_left, _ = fn(SEQS, PAD, side="left")
    if not torch.equal(got_left, left):
        raise Fail(f"side='left' should put padding first so every sequence ends in the last column: "
                   f"expected {left.tolist()}, got {got_left.tolist()}; did you ignore the side argument?")


# --- next_token_loss --------------------------------------------------------------------------
def _loss_inputs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[0, :2] = IGNORE_INDEX  # prompt
    labels[1, :4] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX  # padding
    labels[2, :1] = IGNORE_INDEX
    labels[2, 3:] = IGNORE_INDEX
    return logits, labels


def _nll(logits, labels):
    """(per-position NLL, mask) with no shift; masked positions hold 0."""
    mask = labels != IGNORE_INDEX
    lp = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -lp * mask, mask


def _loss_scalar(fn):
    logits, labels = _loss_inputs()
    logits.requires_grad_(True)
    out = fn(logits, labels)
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        raise Fail(f"expected a 0-d tensor (a scalar), got {out!r}")
    if not out.requires_grad:
        raise Fail("the loss has no gradient: do not call .item(), .detach() or torch.no_grad() inside the loss")


def _loss_value(fn):
    logits, labels = _loss_inputs()
    got = fn(logits, labels)
    want = next_token_loss.reference(logits, labels)
    if _close(got, want):
        return
    shifted, smask = _nll(logits[:, :-1], labels[:, 1:])
    unshifted, umask = _nll(logits, labels)
    mistakes = {
        "forgot to shift: the logits at position t predict the token at t+1 (use logits[:, :-1] with labels[:, 1:])":
            unshifted.sum() / umask.sum(),
        "divided by every position, padding and prompt included: average over the tokens whose label is not -100":
            shifted.sum() / smask.numel(),
        "averaged per sequence first: take the mean over all response tokens of the batch (token mean)":
            (shifted.sum(1) / smask.sum(1)).mean(),
        "wrong sign: the loss is the *negative* log-likelihood and must be positive": -want,
        "summed instead of averaged: divide by the number of counted tokens": shifted.sum(),
    }
    raise Fail(f"expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "use log_softmax over the vocabulary and pick the log-probability "
                                        "of each next token"))


def _loss_ignores_masked(fn):
    logits, labels = _loss_inputs()
    changed = logits.clone()
    changed[1, 5:] += 10 * torch.randn_like(changed[1, 5:])  # logits predicting padding (labels[1, 6:]) or past end
    if not _close(fn(logits, labels), fn(changed, labels)):
        raise Fail("the loss changed when logits at padded positions changed: positions whose label is -100 "
                   "must not count")


# --- top_p_filter ------------------------------------------------------------------------------
def _top_p_keeps_crossing(fn):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(fn(logits.clone(), 0.7))
    if kept.tolist() == [[True, False, False, False]]:
        raise Fail("with probabilities [0.5, 0.3, 0.15, 0.05] and top_p=0.7 the first two tokens must stay "
                   "(0.5 alone does not reach 0.7): keep the token that crosses the threshold")
    if kept.tolist() != [[True, True, False, False]]:
        raise Fail(f"with probabilities [0.5, 0.3, 0.15, 0.05] and top_p=0.7 expected to keep the first two tokens, "
                   f"kept {kept.tolist()}")


def _top_p_keeps_top(fn):
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    kept = torch.isfinite(fn(logits.clone(), 0.05))
    if kept.tolist() != [[False, True, False]]:
        raise Fail(f"with a tiny top_p only the most likely token should stay, kept {kept.tolist()}: "
                   "the most likely token must always survive")


def _top_p_unsorted(fn):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, generator=gen) * 2
    for p in (0.3, 0.6, 0.9):
        got, want = fn(logits.clone(), p), top_p_filter.reference(logits.clone(), p)
        if not torch.equal(torch.isfinite(got), torch.isfinite(want)):
            probs = torch.softmax(logits, -1)
            by_logit = probs.cumsum(-1) - probs >= p  # forgot to sort
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            raw_sorted = sorted_logits.cumsum(-1) - sorted_logits >= p  # accumulated logits, not probabilities
            raw = torch.zeros_like(raw_sorted).scatter(-1, order, raw_sorted)
            hint = ("the vocabulary is not sorted by probability: sort, take the cumulative sum, then map the "
                    "decision back to vocabulary order" if torch.equal(~torch.isfinite(got), by_logit) else
                    "take the cumulative sum of probabilities (softmax), not of raw logits"
                    if torch.equal(~torch.isfinite(got), raw) else
                    "compare your kept set with the definition: the smallest set of most likely tokens whose "
                    "probability reaches top_p")
            raise Fail(f"top_p={p}: kept {torch.isfinite(got).int().tolist()}, expected "
                       f"{torch.isfinite(want).int().tolist()}; {hint}")
        if not torch.equal(got[torch.isfinite(got)], logits[torch.isfinite(want)]):
            raise Fail("kept tokens must keep their original logits; only dropped ones become -inf")


def _top_p_not_in_place(fn):
    logits = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    before = logits.clone()
    fn(logits, 0.5)
    if not torch.equal(logits, before):
        raise Fail("the input logits were modified in place: return a new tensor (masked_fill, not masked_fill_)")


# --- sft_labels -------------------------------------------------------------------------------
def _labels_inputs():
    input_ids = torch.tensor([[11, 12, 13, 21, 22, 2, 0, 0],
                              [11, 12, 13, 14, 21, 2, 0, 0],
                              [11, 12, 21, 22, 23, 24, 25, 2]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0],
                                   [1, 1, 1, 1, 1, 1, 0, 0],
                                   [1, 1, 1, 1, 1, 1, 1, 1]])
    prompt_lengths = torch.tensor([3, 4, 2])
    return input_ids, attention_mask, prompt_lengths


def _labels_call(fn):
    ids, mask, lengths = _labels_inputs()
    out = fn(ids.clone(), mask, lengths)
    if not isinstance(out, torch.Tensor) or out.shape != ids.shape or out.dtype != torch.long:
        raise Fail(f"expected a torch.long tensor of shape {tuple(ids.shape)} (batch, seq), got "
                   f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}")
    return out


def _labels_prompt(fn):
    out = _labels_call(fn)
    _, _, lengths = _labels_inputs()
    for row, n in enumerate(lengths.tolist()):
        if (out[row, :n] != IGNORE_INDEX).any():
            raise Fail(f"row {row}: the {n} prompt tokens should be -100, got {out[row, :n].tolist()}; "
                       "the model must not be trained to predict the prompt")


def _labels_padding(fn):
    out = _labels_call(fn)
    _, mask, _ = _labels_inputs()
    if (out[mask == 0] != IGNORE_INDEX).any():
        raise Fail(f"padding positions should be -100, got labels {out.tolist()}; use attention_mask == 0")


def _labels_response(fn):
    out = _labels_call(fn)
    ids, mask, lengths = _labels_inputs()
    want = sft_labels.reference(ids, mask, lengths)
    if torch.equal(out, want):
        return
    if torch.equal(out[:, :-1], ids[:, 1:].masked_fill(want[:, 1:] == IGNORE_INDEX, IGNORE_INDEX)):
        raise Fail("the labels are shifted by one: keep labels aligned with input_ids; the loss does the shift")
    first = [out[r, n].item() for r, n in enumerate(lengths.tolist())]
    if any(f == IGNORE_INDEX for f in first):
        raise Fail(f"the first response token (at position prompt_length) was masked: off by one at the prompt "
                   f"boundary; expected {want.tolist()}, got {out.tolist()}")
    raise Fail(f"response tokens (EOS included) must keep their ids: expected {want.tolist()}, got {out.tolist()}")


def _labels_not_in_place(fn):
    ids, mask, lengths = _labels_inputs()
    before = ids.clone()
    fn(ids, mask, lengths)
    if not torch.equal(ids, before):
        raise Fail("input_ids were modified in place: they are also the model's input, so clone before "
                   "writing -100 (or use masked_fill)")


# --- last_token_rewards -------------------------------------------------------------------------
def _last_inputs():
    values = torch.arange(1.0, 25.0).view(3, 8)  # value = 1 + 8 * row + column: easy to read back
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0],
                         [1, 1, 1, 1, 1, 1, 1, 1],
                         [1, 1, 1, 0, 0, 0, 0, 0]])
    return values, mask


def _last_shape(fn):
    values, mask = _last_inputs()
    out = fn(values, mask)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (3,):
        raise Fail(f"expected one reward per row, shape (3,), got {getattr(out, 'shape', type(out).__name__)}")


def _last_value(fn):
    values, mask = _last_inputs()
    got = fn(values, mask).float()
    want = last_token_rewards.reference(values, mask)
    if torch.equal(got, want):
        return
    read = [int(v) - 1 - 8 * row for row, v in enumerate(got.tolist())]  # which column each row read
    if read == [7, 7, 7]:
        hint = "you read the last column, which is padding for shorter rows: use the attention mask"
    elif read == [5, 8, 3] or read[0] == 5 or read[2] == 3:
        hint = ("off by one: you read the first padding position (old TRL PPO did this); the last real "
                "token is at index (number of real tokens) - 1")
    elif read == [0, 0, 0]:
        hint = "you read the first token: the reward must come from the last real token, which has seen everything"
    else:
        hint = "take, for each row, the value at the index of its last 1 in the attention mask"
    raise Fail(f"expected {want.tolist()}, got {got.tolist()} (columns {read}); {hint}")


def _last_gradient(fn):
    values, mask = _last_inputs()
    values.requires_grad_(True)
    out = fn(values, mask)
    if not out.requires_grad:
        raise Fail("the rewards have no gradient: index with gather or advanced indexing, not .item() or a Python list")


# --- bradley_terry_loss ------------------------------------------------------------------------
def _bt_inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(6, generator=gen), torch.randn(6, generator=gen), torch.rand(6, generator=gen)


def _bt_value(fn):
    chosen, rejected, _ = _bt_inputs()
    got, want = fn(chosen, rejected), bradley_terry_loss.reference(chosen, rejected)
    if _close(got, want):
        return
    diff = (chosen - rejected).double()
    mistakes = {
        "wrong sign: the chosen response should get the higher reward, so use sigmoid(r_chosen - r_rejected)":
            -torch.nn.functional.logsigmoid(-diff).mean(),
        "use the log of the sigmoid (the log-likelihood), not the sigmoid itself": -torch.sigmoid(diff).mean(),
        "summed instead of averaged over the batch": -torch.nn.functional.logsigmoid(diff).sum(),
        "the loss is the *negative* log-likelihood and must be positive": torch.nn.functional.logsigmoid(diff).mean(),
    }
    raise Fail(f"expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "the loss is mean(-log sigmoid(r_chosen - r_rejected))"))


def _bt_margin(fn):
    chosen, rejected, margin = _bt_inputs()
    got, want = fn(chosen, rejected, margin), bradley_terry_loss.reference(chosen, rejected, margin)
    if _close(got, want):
        return
    if _close(got, bradley_terry_loss.reference(chosen, rejected)):
        raise Fail("the margin was ignored: subtract it, -log sigmoid(r_chosen - r_rejected - margin)")
    if _close(got, bradley_terry_loss.reference(chosen, rejected, -margin)):
        raise Fail("the margin was added: subtract it, so the chosen response must win by at least the margin")
    raise Fail(f"with a margin expected {want.item():.5f}, got {float(got):.5f}")


def _bt_stable(fn):
    chosen, rejected = torch.tensor([-60.0, 60.0]), torch.tensor([60.0, -60.0])
    got = fn(chosen, rejected)
    if not torch.isfinite(got) or abs(float(got) - 60.0) > 1e-3:
        raise Fail(f"for reward differences of -120 and +120 the loss should be 60.0, got {float(got)}: "
                   "log(sigmoid(x)) underflows to log(0); use torch.nn.functional.logsigmoid")


def _bt_gradient(fn):
    chosen, rejected, _ = _bt_inputs()
    chosen.requires_grad_(True)
    out = fn(chosen, rejected)
    if not (isinstance(out, torch.Tensor) and out.dim() == 0 and out.requires_grad):
        raise Fail("return a scalar tensor that keeps its gradient (no .item())")


# --- pairwise_accuracy -------------------------------------------------------------------------
def _acc_value(fn):
    chosen = torch.tensor([2.0, 1.0, 0.5, 3.0, -1.0])
    rejected = torch.tensor([1.0, 1.0, 0.7, 3.0, -2.0])  # wins, tie, loss, tie, win
    got = fn(chosen, rejected)
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        raise Fail(f"expected a 0-d tensor, got {got!r}")
    want = {0.6: None, 0.8: "ties counted as correct (>=): count a tie as half a correct answer",
            0.4: "ties counted as wrong: a tie is a coin flip, count it as half",
            3.0: "you returned a count: divide by the number of pairs",
            0.2: "reversed: a pair is correct when the *chosen* response gets the higher reward"}
    value = round(float(got), 4)
    if value == 0.6:
        return
    raise Fail(f"expected 0.6 for 2 wins, 2 ties and 1 loss, got {value}; " +
               (want.get(value) or "count chosen > rejected as 1 and ties as 0.5, then average"))


def _acc_dtype(fn):
    got = fn(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    if not got.is_floating_point():
        raise Fail(f"the accuracy should be a float tensor, got {got.dtype}: integer division would give 0")


# --- token_logprobs ------------------------------------------------------------------------------
def _tl_inputs():
    gen = torch.Generator().manual_seed(4)
    return torch.randn(2, 4, 6, generator=gen), torch.randint(6, (2, 4), generator=gen)


def _tl_shape(fn):
    logits, tokens = _tl_inputs()
    out = fn(logits, tokens, 1.0)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 4):
        raise Fail(f"expected one log-probability per token, shape (2, 4), got {getattr(out, 'shape', type(out).__name__)}; "
                   "the logits are already aligned with the tokens (no shift needed here): gather along the vocabulary")


def _tl_value(fn):
    logits, tokens = _tl_inputs()
    got, want = fn(logits, tokens, 1.0), token_logprobs.reference(logits, tokens, 1.0)
    if _close(got, want):
        return
    picked = lambda x: x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    mistakes = {"you returned probabilities: take log_softmax": picked(torch.softmax(logits, -1)),
                "you returned raw logits: normalise with log_softmax over the vocabulary": picked(logits),
                "log_softmax over the wrong dimension: normalise over the vocabulary (the last one)":
                    picked(torch.log_softmax(logits, 1))}
    raise Fail(f"expected {want[0].tolist()}, got {got[0].tolist()}: " +
               _diagnose(got, mistakes, "gather log_softmax(logits)[b, t, tokens[b, t]]"))


def _tl_temperature(fn):
    logits, tokens = _tl_inputs()
    got, want = fn(logits, tokens, 0.7), token_logprobs.reference(logits, tokens, 0.7)
    if _close(got, want):
        return
    mistakes = {"the temperature was ignored: the samples came from softmax(logits / temperature), so the "
                "log-probabilities must too": token_logprobs.reference(logits, tokens, 1.0),
                "you multiplied by the temperature: divide the logits by it": token_logprobs.reference(logits * 0.7, tokens, 1.0)}
    raise Fail(_diagnose(got, mistakes, "with temperature 0.7 the result differs from log_softmax(logits / 0.7)"))


def _tl_gradient(fn):
    logits, tokens = _tl_inputs()
    logits.requires_grad_(True)
    if not fn(logits, tokens, 1.0).requires_grad:
        raise Fail("the log-probabilities have no gradient: the policy is trained through them")


# --- kl_penalized_rewards ----------------------------------------------------------------------
def _klr_inputs():
    gen = torch.Generator().manual_seed(5)
    logprobs, ref = -torch.rand(3, 5, generator=gen), -torch.rand(3, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return torch.tensor([2.0, -1.0, 0.5]), logprobs, ref, mask


def _klr_value(fn):
    scores, logprobs, ref, mask = _klr_inputs()
    got = fn(scores, logprobs, ref, mask, 0.1)
    want = kl_penalized_rewards.reference(scores, logprobs, ref, mask, 0.1)
    if _close(got, want):
        return
    kl = -0.1 * (logprobs - ref)
    rows = torch.arange(3)

    def with_score_at(columns, base):
        out = base.clone()
        out[rows, columns] += scores
        return out

    mistakes = {
        "the score went on the last column, which is padding for shorter responses: put it on each response's last "
        "real token": with_score_at(torch.tensor([4, 4, 4]), kl * mask),
        "the score went on the first padding position (old TRL PPO did this): the last real token is at "
        "(number of response tokens) - 1": with_score_at(torch.tensor([4, 3, 1]), kl * mask),
        "the KL penalty has the wrong sign: it is -kl_coef * (log pi - log pi_ref)": with_score_at(
            torch.tensor([4, 2, 0]), -kl * mask),
        "the padding got a KL penalty: multiply it by the response mask": with_score_at(torch.tensor([4, 2, 0]), kl),
        "the score was added to every token: only the last token gets it": kl * mask + scores.unsqueeze(1) * mask,
        "the KL penalty is missing": with_score_at(torch.tensor([4, 2, 0]), torch.zeros_like(kl)),
    }
    raise Fail(f"row 1 expected {[round(v, 3) for v in want[1].tolist()]}, got "
               f"{[round(v, 3) for v in got[1].tolist()]}: " +
               _diagnose(got, mistakes, "rewards = -kl_coef * (logprobs - ref_logprobs) * mask, plus the score at the last real token"))


def _klr_not_in_place(fn):
    scores, logprobs, ref, mask = _klr_inputs()
    before = logprobs.clone()
    fn(scores, logprobs, ref, mask, 0.1)
    if not torch.equal(logprobs, before):
        raise Fail("logprobs were modified in place: the PPO ratio needs them unchanged")


# --- reinforce_loss --------------------------------------------------------------------------------
def _rl_inputs():
    gen = torch.Generator().manual_seed(6)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    return -torch.rand(3, 4, generator=gen), torch.randn(3, 4, generator=gen), mask


def _rl_value(fn):
    logprobs, adv, mask = _rl_inputs()
    got, want = fn(logprobs, adv, mask), reinforce_loss.reference(logprobs, adv, mask)
    if _close(got, want):
        return
    per_token = logprobs * adv
    mistakes = {"wrong sign: minimising the loss must *raise* the log-probability of tokens with positive advantage":
                    (per_token * mask).sum(1).mean(),
                "averaged over tokens: sum each response's terms, then average over responses "
                "(the policy gradient is a sum over the steps of an episode)": -(per_token * mask).sum() / mask.sum(),
                "padding was included: multiply by the mask": -per_token.sum(1).mean(),
                "summed over the batch: average over responses": -(per_token * mask).sum()}
    raise Fail(f"expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "loss = -mean over responses of sum_t logprob_t * advantage_t * mask_t"))


def _rl_detached(fn):
    logprobs, adv, mask = _rl_inputs()
    logprobs.requires_grad_(True)
    adv.requires_grad_(True)
    fn(logprobs, adv, mask).backward()
    if logprobs.grad is None or logprobs.grad.abs().sum() == 0:
        raise Fail("no gradient reached the log-probabilities")
    if adv.grad is not None and adv.grad.abs().sum() > 0:
        raise Fail("gradient flowed into the advantages: they are weights, not something to optimise; use .detach()")


# --- whiten ------------------------------------------------------------------------------------------
def _wh_inputs():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, -50.0]])
    return x, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def _wh_value(fn):
    x, mask = _wh_inputs()
    got, want = fn(x, mask), whiten.reference(x, mask)
    if _close(got, want, 1e-4):
        return
    m = mask.float()
    n = m.sum()
    mean = (x * m).sum() / n
    unbiased = (x - mean) / (((x - mean) ** 2 * m).sum() / (n - 1)).sqrt() * m
    mistakes = {"the padding entered the mean and variance: compute them over masked positions only":
                    (x - x.mean()) / x.std(unbiased=False) * m,
                "padding positions should come back as 0: multiply by the mask": (x - mean) * torch.rsqrt(
                    ((x - mean) ** 2 * m).sum() / n + 1e-8),
                "divide the squared deviations by the number of positions (the population variance), not n - 1": unbiased}
    raise Fail(f"expected {[round(v, 3) for v in want[0].tolist()]}, got {[round(v, 3) for v in got[0].tolist()]}: " +
               _diagnose(got, mistakes, "(x - masked mean) / sqrt(masked variance + 1e-8), 0 on padding"))


def _wh_shift(fn):
    x, mask = _wh_inputs()
    got, want = fn(x, mask, shift_mean=False), whiten.reference(x, mask, shift_mean=False)
    if _close(got, want, 1e-4):
        return
    if _close(got, whiten.reference(x, mask), 1e-4):
        raise Fail("shift_mean=False was ignored: scale to unit variance but add the mean back "
                   "(rewards keep their sign that way)")
    raise Fail(f"with shift_mean=False expected {want[0].tolist()}, got {got[0].tolist()}")


# --- gae ------------------------------------------------------------------------------------------------
def _gae_inputs():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, -1.0, 0.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0], [0.1, -0.3, 9.0, 9.0]])  # 9.0 sits on padding: never used
    return rewards, values, torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def _gae_step_by_step(rewards, values, mask, gamma, lam, bootstrap_padding=False):
    """GAE written as the textbook backward recursion, one step at a time."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        running = 0.0
        for t in reversed(range(rewards.shape[1])):
            if not mask[b, t]:
                continue
            last = t + 1 >= rewards.shape[1] or not mask[b, t + 1]
            next_value = values[b, t + 1] if t + 1 < rewards.shape[1] and (bootstrap_padding or not last) else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            adv[b, t] = running
    return adv


def _gae_call(fn, *args):
    out = fn(*args)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise Fail("return a tuple (advantages, returns)")
    return out


def _gae_advantages(fn):
    rewards, values, mask = _gae_inputs()
    got, _ = _gae_call(fn, rewards, values, mask, 0.9, 0.8)
    want, _ = gae.reference(rewards, values, mask, 0.9, 0.8)
    if _close(got * mask, want):
        return
    mistakes = {"lambda was ignored: A_t = delta_t + gamma * lam * A_(t+1)":
                    _gae_step_by_step(rewards, values, mask, 0.9, 1.0),
                "you bootstrapped from the value on a padding position: after the last token V = 0":
                    _gae_step_by_step(rewards, values, mask, 0.9, 0.8, bootstrap_padding=True),
                "gamma was left out of delta: delta_t = r_t + gamma * V_(t+1) - V_t":
                    _gae_step_by_step(rewards, values, mask, 1.0, 0.72),
                "no bootstrapping: delta_t needs + gamma * V_(t+1)":
                    _gae_step_by_step(rewards, values * 0, mask, 0.9, 0.8) - values * mask}
    raise Fail(f"row 0 expected {[round(v, 3) for v in want[0].tolist()]}, got {[round(v, 3) for v in got[0].tolist()]}: " +
               _diagnose(got * mask, mistakes, "accumulate backwards from the last response token: "
                                               "A_t = delta_t + gamma * lam * A_(t+1)"))


def _gae_returns(fn):
    rewards, values, mask = _gae_inputs()
    adv, got = _gae_call(fn, rewards, values, mask, 0.9, 0.8)
    want = gae.reference(rewards, values, mask, 0.9, 0.8)[1]
    if _close(got * mask, want):
        return
    if _close(got * mask, adv * mask):
        raise Fail("the returns equal the advantages: returns = advantages + values (the value loss's target)")
    raise Fail(f"returns: expected {want[0].tolist()}, got {got[0].tolist()}")


def _gae_padding(fn):
    rewards, values, mask = _gae_inputs()
    adv, ret = _gae_call(fn, rewards, values, mask, 0.9, 0.8)
    if (adv * (1 - mask)).abs().sum() > 0 or (ret * (1 - mask)).abs().sum() > 0:
        raise Fail("padding positions should hold 0 in both advantages and returns")


# --- ppo_policy_loss ---------------------------------------------------------------------------------
def _pl_inputs():
    old = torch.zeros(2, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9], [1.5, 0.5, 1.0, 3.0]]))  # ratios inside and outside the clip
    adv = torch.tensor([[1.0, -1.0, 2.0, -2.0], [-1.0, 1.0, 0.5, 7.0]])
    return new, old, adv, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def _pl_value(fn):
    new, old, adv, mask = _pl_inputs()
    got, want = fn(new, old, adv, mask, 0.2), ppo_policy_loss.reference(new, old, adv, mask, 0.2)
    if _close(got, want):
        return
    ratio, m = torch.exp(new - old), mask.float()
    clipped = ratio.clamp(0.8, 1.2)
    mean = lambda x: (x * m).sum() / m.sum()  # noqa: E731
    mistakes = {"min where the loss needs max: the objective takes the *pessimistic* (smaller) of the two terms, "
                "so the loss (its negative) takes the larger": mean(torch.minimum(-adv * ratio, -adv * clipped)),
                "no clipping: the clipped term keeps the new policy near the one that collected the data":
                    mean(-adv * ratio),
                "the ratio is inverted: ratio = exp(logprobs - old_logprobs), new over old": mean(torch.maximum(
                    -adv / ratio, -adv * (1 / ratio).clamp(0.8, 1.2))),
                "wrong sign: minimising the loss must raise the probability of tokens with positive advantage":
                    mean(torch.minimum(adv * ratio, adv * clipped)),
                "padding was included: average over masked tokens only":
                    torch.maximum(-adv * ratio, -adv * clipped).mean()}
    raise Fail(f"expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "loss = masked mean of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))"))


def _pl_gradient(fn):
    new, old, adv, mask = _pl_inputs()
    new.requires_grad_(True)
    fn(new, old, adv, mask, 0.2).backward()
    grad = new.grad
    if grad is None:
        raise Fail("no gradient reached the new log-probabilities")
    # ratio 1.5 with A > 0 is past the clip: the clipped term is flat there, so that token's gradient is 0
    if grad[0, 0].abs() > 1e-8 or grad[0, 2].abs() < 1e-8:
        raise Fail("tokens whose ratio is clipped (ratio 1.5, advantage > 0) must get no gradient, and tokens "
                   "inside the range must: check that the clipped term uses clamp on the ratio")


# --- ppo_value_loss -------------------------------------------------------------------------------------
def _vl_inputs():
    values = torch.tensor([[0.5, 1.0, -0.4, 2.0], [0.0, 0.9, 0.3, 5.0]])
    old = torch.tensor([[0.0, 0.95, 0.0, 0.0], [0.1, 0.0, 0.2, 0.0]])
    returns = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.3, 1.0, -1.0, 0.0]])
    return values, old, returns, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def _vl_value(fn):
    values, old, returns, mask = _vl_inputs()
    got, want = fn(values, old, returns, mask, 0.2), ppo_value_loss.reference(values, old, returns, mask, 0.2)
    if _close(got, want):
        return
    m = mask.float()
    mean = lambda x: (x * m).sum() / m.sum()  # noqa: E731
    clipped = old + (values - old).clamp(-0.2, 0.2)
    plain, clip = (values - returns) ** 2, (clipped - returns) ** 2
    mistakes = {"no clipping: clip the new value to within clip_range of the rollout's value and take the larger "
                "of the two squared errors": 0.5 * mean(plain),
                "min where it needs max: the clipped value loss takes the larger squared error": 0.5 * mean(torch.minimum(plain, clip)),
                "the 0.5 in front is missing": mean(torch.maximum(plain, clip)),
                "padding was included: average over masked tokens only": 0.5 * torch.maximum(plain, clip).mean()}
    raise Fail(f"expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "0.5 * masked mean of max((V - R)^2, (V_clipped - R)^2)"))


def _vl_gradient(fn):
    values, old, returns, mask = _vl_inputs()
    values.requires_grad_(True)
    fn(values, old, returns, mask, 0.2).backward()
    if values.grad is None or values.grad.abs().sum() == 0:
        raise Fail("no gradient reached the values")


# --- sequence_logprobs ----------------------------------------------------------------------------------
def _sl_inputs():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 6, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 5, 1, -100], [-100, 2, 4, 6, 0, 2]])  # prompt, response, padding
    return logits, labels


def _sl_variant(logits, labels, *, shift=True, log_softmax=True, mean=False, mask=True):
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    scores = torch.log_softmax(logits, dim=-1) if log_softmax else logits
    keep = (labels != IGNORE_INDEX).float() if mask else torch.ones(labels.shape)
    taken = scores.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return taken.sum(1) / keep.sum(1) if mean else taken.sum(1)


def _sl_value(fn):
    logits, labels = _sl_inputs()
    got, want = fn(logits, labels), sequence_logprobs.reference(logits, labels)
    if _close(got, want):
        return
    mistakes = {"no shift: the logits at position t predict the token at t + 1 (compare logits[:, :-1] with "
                "labels[:, 1:])": _sl_variant(logits, labels, shift=False),
                "raw logits were gathered: take log_softmax over the vocabulary first":
                    _sl_variant(logits, labels, log_softmax=False),
                "averaged over tokens: a sequence's log-probability is the *sum* of its tokens' log-probabilities":
                    _sl_variant(logits, labels, mean=True),
                "prompt and padding were counted: keep only positions whose label is not -100":
                    _sl_variant(logits, labels, mask=False)}
    raise Fail(f"expected {want.tolist()}, got {got.tolist() if hasattr(got, 'tolist') else got}: " +
               _diagnose(got, mistakes, "sum of log_softmax(logits[:, :-1]) at labels[:, 1:], where labels != -100"))


def _sl_gradient(fn):
    logits, labels = _sl_inputs()
    logits.requires_grad_(True)
    fn(logits, labels).sum().backward()
    if logits.grad is None or logits.grad.abs().sum() == 0:
        raise Fail("no gradient reached the logits: the policy is trained through these log-probabilities")


# --- dpo_loss ---------------------------------------------------------------------------------------------
def _dpo_inputs():
    return (torch.tensor([-3.0, -5.0, -2.0]), torch.tensor([-4.0, -4.0, -6.0]),
            torch.tensor([-3.5, -4.0, -2.5]), torch.tensor([-4.0, -4.5, -5.0]))


def _dpo_value(fn):
    pc, pr, rc, rr = _dpo_inputs()
    got, want = fn(pc, pr, rc, rr, 0.5), dpo_loss.reference(pc, pr, rc, rr, 0.5)
    if _close(got, want):
        return
    margin = (pc - rc) - (pr - rr)
    nll = lambda x: -torch.nn.functional.logsigmoid(x)  # noqa: E731
    mistakes = {"beta is missing: the loss is -log sigmoid(beta * margin)": nll(margin).mean(),
                "the reference was ignored: the implicit reward is log pi - log pi_ref": nll(0.5 * (pc - pr)).mean(),
                "chosen and rejected are swapped: the chosen response's log-ratio comes first": nll(-0.5 * margin).mean(),
                "summed over the batch: take the mean": nll(0.5 * margin).sum(),
                "the log is missing: -log sigmoid, not -sigmoid": (-torch.sigmoid(0.5 * margin)).mean()}
    raise Fail(f"expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "margin = (pc - rc) - (pr - rr); loss = mean of -log sigmoid(beta * margin)"))


def _dpo_ipo(fn):
    pc, pr, rc, rr = _dpo_inputs()
    got, want = fn(pc, pr, rc, rr, 0.5, "ipo"), dpo_loss.reference(pc, pr, rc, rr, 0.5, "ipo")
    if _close(got, want):
        return
    margin = (pc - rc) - (pr - rr)
    mistakes = {"kind='ipo' was ignored: IPO is the squared loss (margin - 1 / (2 beta))^2":
                    dpo_loss.reference(pc, pr, rc, rr, 0.5),
                "the IPO target is 1 / (2 * beta), not 1 / beta": ((margin - 1 / 0.5) ** 2).mean(),
                "IPO's margin is not multiplied by beta: (margin - 1 / (2 beta))^2": ((0.5 * margin - 1) ** 2).mean()}
    raise Fail(f"IPO: expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "loss = mean of (margin - 1 / (2 * beta)) ** 2"))


def _dpo_stable(fn):
    pc, pr = torch.tensor([0.0, -900.0]), torch.tensor([-900.0, 0.0])
    got = fn(pc, pr, torch.zeros(2), torch.zeros(2), 1.0)
    if not torch.isfinite(torch.as_tensor(got)):
        raise Fail("the loss is not finite for a margin of 900: use F.logsigmoid, not torch.log(torch.sigmoid(...))")


def _dpo_unknown(fn):
    pc, pr, rc, rr = _dpo_inputs()
    try:
        fn(pc, pr, rc, rr, 0.5, "kto")
    except ValueError:
        return
    raise Fail("an unknown kind should raise ValueError, not fall back silently to a loss")


# --- group_advantages -------------------------------------------------------------------------------------
def _ga_inputs():
    return torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # three groups of 4


def _ga_value(fn):
    rewards = _ga_inputs()
    got, want = fn(rewards, 4), group_advantages.reference(rewards, 4)
    if _close(got, want, 1e-4):
        return
    grouped = rewards.view(-1, 4)
    centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    strided = rewards.view(4, -1)  # groups read with the wrong stride
    mistakes = {"population standard deviation: use the unbiased one (torch.std's default, divide by n - 1)":
                    centred / (grouped.std(1, unbiased=False).repeat_interleave(4) + 1e-4),
                "statistics of the whole batch: normalise within each group":
                    (rewards - rewards.mean()) / (rewards.std() + 1e-4),
                "not divided by the group's standard deviation": centred,
                "the groups were read with the wrong stride: group g is rewards[g * G:(g + 1) * G]":
                    ((strided - strided.mean(0)) / (strided.std(0) + 1e-4)).reshape(-1)}
    raise Fail(f"expected {[round(v, 3) for v in want.tolist()]}, got {[round(v, 3) for v in got.tolist()]}: " +
               _diagnose(got, mistakes, "(r - mean of its group) / (std of its group + 1e-4)"))


def _ga_uniform(fn):
    got = fn(torch.full((8,), 0.5), 4)
    if not torch.all(torch.isfinite(got)) or got.abs().max() > 1e-6:
        raise Fail("a group whose rewards are all equal must get advantage 0 (not nan): add 1e-4 to the std")


# --- grpo_loss --------------------------------------------------------------------------------------------
def _gl_inputs():
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9], [1.5, 0.7, 1.0, 3.0]]))
    old = torch.zeros(2, 4)
    ref = torch.tensor([[0.2, -0.1, 0.3, 0.0], [-0.2, 0.1, 0.0, 0.5]])
    return new, old, ref, torch.tensor([1.0, -2.0]), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def _gl_variant(new, old, ref, adv, mask, *, use_min=True, clip=True, kl="k3_ratio", beta=0.1, per_response=True):
    ratio = torch.exp(new - old)
    a = adv.unsqueeze(1)
    clipped = ratio.clamp(0.8, 1.2) if clip else ratio
    surrogate = torch.min(ratio * a, clipped * a) if use_min else torch.max(ratio * a, clipped * a)
    log_r = ref - new
    k3 = torch.exp(log_r) - log_r - 1
    penalty = {"k3_ratio": k3 * ratio, "k3": k3, "k1": -log_r}[kl]
    per_token = (-surrogate + beta * penalty) * mask
    if per_response:
        return (per_token.sum(1) / mask.sum(1)).mean()
    return per_token.sum() / mask.sum()


def _gl_value(fn):
    new, old, ref, adv, mask = _gl_inputs()
    got, want = fn(new, old, ref, adv, mask, 0.2, 0.1), grpo_loss.reference(new, old, ref, adv, mask, 0.2, 0.1)
    if _close(got, want):
        return
    args = (new, old, ref, adv, mask)
    mistakes = {"max where the objective needs min: the surrogate takes the pessimistic of the two terms":
                    _gl_variant(*args, use_min=False),
                "no clipping: clamp the ratio to [1 - eps, 1 + eps] in the second term": _gl_variant(*args, clip=False),
                "the KL estimate is not weighted by the ratio (the tokens came from the old policy)":
                    _gl_variant(*args, kl="k3"),
                "the plain log-ratio (k1) was used for the KL: use k3 = exp(ref - logp) - (ref - logp) - 1":
                    _gl_variant(*args, kl="k1"),
                "the KL term is missing (or beta was ignored)": _gl_variant(*args, beta=0.0),
                "averaged over all tokens of the batch at once: average within each response first, then over "
                "responses": _gl_variant(*args, per_response=False),
                "padding was included: average over each response's real tokens":
                    _gl_variant(new, old, ref, adv, torch.ones(2, 4))}
    raise Fail(f"expected {want.item():.5f}, got {float(got):.5f}: " +
               _diagnose(got, mistakes, "per token -min(ratio*A, clip(ratio)*A) + beta * k3 * ratio; "
                                        "mean per response, then over responses"))


def _gl_gradient(fn):
    new, old, ref, adv, mask = _gl_inputs()
    new.requires_grad_(True)
    fn(new, old, ref, adv, mask, 0.2, 0.0).backward()
    if new.grad is None:
        raise Fail("no gradient reached the new log-probabilities")
    # token (0, 0): ratio 1.5 and A > 0 is past the clip, so with beta = 0 its gradient is 0
    if new.grad[0, 0].abs() > 1e-8 or new.grad[0, 2].abs() < 1e-8:
        raise Fail("tokens whose ratio is clipped (ratio 1.5, advantage > 0) must get no gradient, and tokens "
                   "inside the range must: clamp the ratio in the second term")


CATALOG: dict[str, Exercise] = {e.id: e for e in [
    Exercise("top_p_filter", "01", "lesson01_sampling.py", "**", "nucleus (top-p) filtering of logits", [
        Check("keeps the most likely token", _top_p_keeps_top),
        Check("keeps the token that crosses top_p", _top_p_keeps_crossing),
        Check("matches the reference on unsorted vocabularies", _top_p_unsorted),
        Check("leaves its input unchanged", _top_p_not_in_place)]),
    Exercise("pad_batch", "02", "lesson02_sft.py", "*", "pad token lists into input_ids and attention_mask", [
        Check("returns (batch, longest) long tensors", _pad_shape),
        Check("attention mask marks the real tokens", _pad_mask),
        Check("pads with pad_id", _pad_value),
        Check("pads on the requested side", _pad_sides)]),
    Exercise("sft_labels", "02", "lesson02_sft.py", "*", "labels for response-only loss", [
        Check("masks the prompt", _labels_prompt),
        Check("masks the padding", _labels_padding),
        Check("keeps the response and its EOS", _labels_response),
        Check("leaves input_ids unchanged", _labels_not_in_place)]),
    Exercise("next_token_loss", "02", "lesson02_sft.py", "**", "token-mean next-token NLL with a mask", [
        Check("returns a scalar with a gradient", _loss_scalar),
        Check("matches the reference value", _loss_value),
        Check("ignores positions labelled -100", _loss_ignores_masked)]),
    Exercise("last_token_rewards", "03", "lesson03_reward.py", "*", "read the reward at the last real token", [
        Check("returns one reward per row", _last_shape),
        Check("reads each row's last real token", _last_value),
        Check("keeps the gradient", _last_gradient)]),
    Exercise("bradley_terry_loss", "03", "lesson03_reward.py", "**", "the Bradley-Terry loss with a margin", [
        Check("matches the reference value", _bt_value),
        Check("subtracts the margin", _bt_margin),
        Check("is stable for large reward differences", _bt_stable),
        Check("returns a scalar with a gradient", _bt_gradient)]),
    Exercise("pairwise_accuracy", "03", "lesson03_reward.py", "*", "how often the chosen response wins", [
        Check("counts wins, ties and losses", _acc_value),
        Check("returns a float", _acc_dtype)]),
    Exercise("token_logprobs", "04", "lesson04_policy_gradient.py", "*", "log-probabilities of the sampled tokens", [
        Check("returns one value per token", _tl_shape),
        Check("matches the reference at temperature 1", _tl_value),
        Check("divides the logits by the temperature", _tl_temperature),
        Check("keeps the gradient", _tl_gradient)]),
    Exercise("kl_penalized_rewards", "04", "lesson04_policy_gradient.py", "**", "per-token KL penalty plus the score", [
        Check("matches the reference", _klr_value),
        Check("leaves its inputs unchanged", _klr_not_in_place)]),
    Exercise("reinforce_loss", "04", "lesson04_policy_gradient.py", "*", "the REINFORCE loss with a mask", [
        Check("matches the reference", _rl_value),
        Check("trains the log-probabilities, not the advantages", _rl_detached)]),
    Exercise("whiten", "05", "lesson05_ppo.py", "*", "masked whitening of advantages or rewards", [
        Check("uses masked statistics", _wh_value),
        Check("keeps the mean when asked", _wh_shift)]),
    Exercise("gae", "05", "lesson05_ppo.py", "***", "generalised advantage estimation", [
        Check("advantages match a step-by-step computation", _gae_advantages),
        Check("returns are advantages plus values", _gae_returns),
        Check("padding holds zeros", _gae_padding)]),
    Exercise("ppo_policy_loss", "05", "lesson05_ppo.py", "**", "the clipped surrogate loss", [
        Check("matches the reference", _pl_value),
        Check("clipped tokens get no gradient", _pl_gradient)]),
    Exercise("ppo_value_loss", "05", "lesson05_ppo.py", "**", "the clipped value loss", [
        Check("matches the reference", _vl_value),
        Check("trains the values", _vl_gradient)]),
    Exercise("sequence_logprobs", "06", "lesson06_direct_methods.py", "*", "log-probability of a response", [
        Check("sums the shifted, masked log-probabilities", _sl_value),
        Check("keeps the gradient", _sl_gradient)]),
    Exercise("dpo_loss", "06", "lesson06_direct_methods.py", "**", "the DPO and IPO losses", [
        Check("DPO matches the reference", _dpo_value),
        Check("IPO matches the reference", _dpo_ipo),
        Check("is stable for large margins", _dpo_stable),
        Check("rejects an unknown kind", _dpo_unknown)]),
    Exercise("group_advantages", "06", "lesson06_direct_methods.py", "*", "GRPO's group-normalised advantages", [
        Check("normalises within each group", _ga_value),
        Check("gives 0 to a group with equal rewards", _ga_uniform)]),
    Exercise("grpo_loss", "06", "lesson06_direct_methods.py", "**", "GRPO's clipped loss with a k3 KL term", [
        Check("matches the reference", _gl_value),
        Check("clipped tokens get no gradient", _gl_gradient)]),
]}


# --- loading a learner's code --------------------------------------------------------------------
def load_function(exercise_id: str, impl: str | Path | None = None) -> Callable:
    """The learner's function for ``exercise_id`` from a directory, a .py file or a module name.

    Files are re-read on every call, so edits in the editor count without restarting the kernel.
    """
    exercise = CATALOG[exercise_id]
    impl = EXERCISES_DIR if impl is None else impl
    path = Path(impl)
    if path.is_dir():
        path = path / exercise.file
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"No exercise file at {path} (expected {exercise.file} with a function "
                                    f"{exercise.id}); `rlhf-course make-exercises` writes the missing stubs (and keeps your files)")
        name = f"_learner_{path.stem}_{abs(hash(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.reload(importlib.import_module(str(impl)))
    fn = getattr(module, exercise.id, None)
    if fn is None:
        raise AttributeError(f"{module.__name__} has no function {exercise.id!r}")
    return fn


@dataclass
class CheckResult:
    exercise: str
    lines: list[tuple[str, bool, str]]  # (check name, passed, message)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.lines)

    def __str__(self) -> str:
        rows = [f"{'PASS' if ok else 'FAIL'}  {self.exercise}: {name}" + ("" if ok else f"\n      -> {msg}")
                for name, ok, msg in self.lines]
        verdict = "all checks passed" if self.passed else "some checks failed"
        return "\n".join(rows + [f"{self.exercise}: {verdict}"])


CHECK_SECONDS = 30  # far more than any check needs with a correct function: past it, the learner's code is stuck
CHILD_START_SECONDS = 60  # on top of the checks' limits: the child's start and the loading of the learner's file


class CheckTimedOut(BaseException):
    """Raised in the learner's code when a check runs too long. A BaseException, so that a learner's own
    ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Interrupt the code inside after ``seconds`` (with SIGALRM: in the main thread of a Unix process, which is
    where the CLI and a Jupyter kernel run cells; elsewhere no limit is set)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise CheckTimedOut()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_checks(exercise_id: str, fn: Callable, seconds: float = CHECK_SECONDS) -> CheckResult:
    """Run every check of ``exercise_id`` on ``fn``; the verdict comes from the checks alone. A function that
    runs past ``seconds`` in one check, or ends the program (``sys.exit``), fails that check."""
    exercise = CATALOG[exercise_id]
    lines = []
    for check in exercise.checks:
        try:
            with _time_limit(seconds):
                check.run(fn)
            lines.append((check.name, True, ""))
        except CheckTimedOut:
            lines.append((check.name, False, f"your function did not finish within {seconds:g} s (the check stopped "
                                             "it): look for a loop that never ends"))
        except SystemExit as stop:
            lines.append((check.name, False, f"your function called sys.exit({stop.code!r}); return a value instead"))
        except Fail as fail:
            lines.append((check.name, False, str(fail)))
        except NotImplementedError:
            lines.append((check.name, False, f"not implemented yet: write {exercise.id} in exercises/{exercise.file}"))
        except Exception as err:  # the learner's code crashed: show where
            where = traceback.extract_tb(err.__traceback__)[-1]
            lines.append((check.name, False, f"your function raised {type(err).__name__}: {err} "
                                             f"(at {Path(where.filename).name}:{where.lineno})"))
    return CheckResult(exercise_id, lines)


def _load_and_run(exercise_id: str, impl: str | Path | None) -> CheckResult:
    try:
        return run_checks(exercise_id, load_function(exercise_id, impl))
    except (FileNotFoundError, AttributeError, SyntaxError, ImportError) as err:
        return CheckResult(exercise_id, [("loads", False, f"{type(err).__name__}: {err}")])


def _check_in_child(exercise_id: str, impl: str | Path | None, connection) -> None:
    """The child's side of ``check``: load and check the learner's code, send back the results and its prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        result = _load_and_run(exercise_id, impl)
    connection.send((result.lines, printed.getvalue()))
    connection.close()


def _checking_context():
    """Children forked from a server that imported the package but never computed: quick to start, and safe
    with torch's thread pools (which a fork of a process that has used them can deadlock on)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["rlhf_course.exercises"])
    return context


@contextlib.contextmanager
def _main_script_hidden():
    """Start a child without it re-running the caller's script: multiprocessing imports the ``__main__`` of a
    script into its children, which re-runs a script without an ``if __name__ == "__main__"`` guard (a
    learner's ``check.py``, say). The checking child needs nothing from it."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:  # a module run with -m, a kernel, a shell
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def check(exercise_id: str, impl: str | Path | None = None, verbose: bool = True) -> CheckResult:
    """Run one exercise's checks against the learner's code (``exercises/`` by default).

    The learner's code runs in a child process: a function that hangs is stopped (each check has
    ``CHECK_SECONDS``; the child as a whole is killed past the sum), one that ends the process (``sys.exit``,
    ``os._exit``, a crash) fails instead of taking the caller with it, and the verdict comes only from the
    results the child sends back, never from how it exits. What the learner's code prints is shown here.
    """
    if exercise_id not in CATALOG:
        raise KeyError(f"No exercise {exercise_id!r}; known: {', '.join(CATALOG)}")
    if "forkserver" not in multiprocessing.get_all_start_methods():  # not on this platform: check in-process
        result = _load_and_run(exercise_id, impl)
    else:
        limit = CHECK_SECONDS * len(CATALOG[exercise_id].checks) + CHILD_START_SECONDS
        receiving, sending = multiprocessing.Pipe(duplex=False)
        child = _checking_context().Process(target=_check_in_child, args=(exercise_id, impl, sending), daemon=True)
        lines, printed, timed_out = None, "", False
        try:
            with _main_script_hidden():
                child.start()
            sending.close()
            if receiving.poll(limit):
                try:
                    lines, printed = receiving.recv()
                except EOFError:  # the child ended without a word: the learner's code stopped the process
                    pass
            else:
                timed_out = True
        finally:  # a hung child, a learner's thread that outlives the checks, or a Ctrl-C here: no child is kept
            receiving.close()
            child.join(timeout=0 if timed_out else 5)
            if child.is_alive():
                child.kill()
                child.join()
        if printed:
            print(printed, end="" if printed.endswith("\n") else "\n")
        if lines is None:
            why = (f"did not finish within {limit:g} s" if timed_out else
                   f"ended the checking process (exit status {child.exitcode}: sys.exit or os._exit outside a "
                   "function, a crash, or a kill)")
            lines = [("runs", False, f"your code {why} before the checks could report; look for a call that "
                                     "exits or never returns")]
        result = CheckResult(exercise_id, lines)
    if verbose:
        print(result)
    return result


def plug_in_passing(lesson: str | None = None, impl: str | Path | None = None, verbose: bool = True) -> dict[str, bool]:
    """Put each passing learner function into the training loop; keep the reference for the others."""
    used = {}
    for exercise in CATALOG.values():
        if lesson is not None and exercise.lesson != lesson:
            continue
        result = check(exercise.id, impl, verbose=False)
        registry.reset(exercise.id)
        if result.passed:
            registry.plug_in(exercise.id, load_function(exercise.id, impl))
        used[exercise.id] = result.passed
        if verbose:
            print(f"{exercise.id:<16} {'your code' if result.passed else 'reference (your version does not pass yet)'}")
    return used


# --- generating exercises/ from solutions/ -------------------------------------------------------
SOLUTION_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION\n", re.M | re.S)


def strip_solutions(source: str) -> str:
    """Replace every marked solution region by a stub, keeping its indentation."""
    def stub(match):
        indent = match.group(1)
        return f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError()\n"

    stripped, count = SOLUTION_REGION.subn(stub, source)
    if count == 0:
        raise ValueError("no '### BEGIN SOLUTION' ... '### END SOLUTION' region found")
    return stripped


def make_exercises(solutions: Path = SOLUTIONS_DIR, exercises: Path = EXERCISES_DIR,
                   replace: bool = False) -> list[tuple[Path, str]]:
    """Write the stubs of ``exercises/`` from ``solutions/``, never losing what a learner wrote.

    A missing file is written; one equal to its stub is left alone. One that differs (a learner's work, or a
    stub from before the solutions changed) is kept, and the fresh stub goes beside it as ``NAME.py.new``;
    with ``replace`` (for instructors regenerating the committed stubs) the old file is first copied to
    ``NAME.py.bak``. Returns ``(path, what was done)`` for every file.
    """
    done = []
    exercises.mkdir(parents=True, exist_ok=True)
    for source in sorted(solutions.glob("*.py")):
        target, stub = exercises / source.name, strip_solutions(source.read_text())
        if not target.exists():
            target.write_text(stub)
            done.append((target, "written"))
        elif target.read_text() == stub:
            done.append((target, "unchanged"))
        elif replace:
            backup = target.with_name(target.name + ".bak")
            shutil.copy2(target, backup)
            target.write_text(stub)
            done.append((target, f"replaced; the old file is kept as {backup.name}"))
        else:
            fresh = target.with_name(target.name + ".new")
            fresh.write_text(stub)
            done.append((target, f"kept (it differs from the stub); the fresh stub is {fresh.name}"))
    return done
