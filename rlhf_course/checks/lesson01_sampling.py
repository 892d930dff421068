"""Lesson 01's exercise: nucleus (top-p) filtering.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import torch

from rlhf_course.checks.base import Check, Exercise, Fail
from rlhf_course.core.language_model import top_p_filter
from rlhf_course.core.registry import expect_tensor


# --- top_p_filter ------------------------------------------------------------------------------
def _kept(out: torch.Tensor) -> torch.Tensor:
    """Which tokens the filter kept (finite logits); a filter that returns probabilities is told so."""
    if out.isfinite().all() and (out >= 0).all() and (out == 0).any() and out.sum(-1).le(1 + 1e-5).all():
        raise Fail(
            "you returned probabilities, with 0 for the dropped tokens: return the logits, with -inf on the "
            "dropped tokens (sampling takes the softmax afterwards, and exp(-inf) = 0)"
        )
    if out.isfinite().all() and (out == 0).any():
        raise Fail(
            "no logit is -inf, and some are 0: a dropped token must get -inf (a logit of 0 still has probability "
            "after the softmax)"
        )
    return torch.isfinite(out)


def _top_p_keeps_crossing(fn):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = _kept(fn(logits.clone(), 0.7))
    if kept.tolist() == [[True, False, False, False]]:
        raise Fail(
            "with probabilities [0.5, 0.3, 0.15, 0.05] and top_p=0.7 the first two tokens must stay "
            "(0.5 alone does not reach 0.7): keep the token that crosses the threshold"
        )
    if kept.tolist() != [[True, True, False, False]]:
        raise Fail(
            f"with probabilities [0.5, 0.3, 0.15, 0.05] and top_p=0.7 expected to keep the first two tokens, "
            f"kept {kept.tolist()}"
        )


def _top_p_keeps_top(fn):
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    kept = _kept(fn(logits.clone(), 0.05))
    if kept.tolist() != [[False, True, False]]:
        raise Fail(
            f"with a tiny top_p only the most likely token should stay, kept {kept.tolist()}: "
            "the most likely token must always survive"
        )


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
            by_batch = torch.softmax(logits, 0)  # the softmax over the rows, not the vocabulary
            sorted_batch, order_batch = by_batch.sort(-1, descending=True)
            across = torch.zeros_like(raw_sorted).scatter(-1, order_batch, sorted_batch.cumsum(-1) - sorted_batch >= p)
            in_sorted_order = torch.isfinite(want).sum(-1, keepdim=True) > torch.arange(logits.shape[-1])
            hint = (
                "the softmax ran over the batch (dim 0): take it over the vocabulary (dim=-1)"
                if torch.equal(~torch.isfinite(got), across)
                else "your result is in sorted order: put each logit back at its token's place in the vocabulary "
                "(scatter with the indices the sort returned)"
                if torch.equal(torch.isfinite(got), in_sorted_order)
                else "the vocabulary is not sorted by probability: sort, take the cumulative sum, then map the "
                "decision back to vocabulary order"
                if torch.equal(~torch.isfinite(got), by_logit)
                else "take the cumulative sum of probabilities (softmax), not of raw logits"
                if torch.equal(~torch.isfinite(got), raw)
                else "compare your kept set with the definition: the smallest set of most likely tokens whose "
                "probability reaches top_p"
            )
            raise Fail(
                f"top_p={p}: kept {torch.isfinite(got).int().tolist()}, expected "
                f"{torch.isfinite(want).int().tolist()}; {hint}"
            )
        if not torch.equal(got[torch.isfinite(got)], logits[torch.isfinite(want)]):
            raise Fail("kept tokens must keep their original logits; only dropped ones become -inf")


def _top_p_not_in_place(fn):
    # every check's call fails when the function writes into its input (exercises.guarded): logits that
    # cross top_p early, so that most of them would be written
    fn(torch.randn(2, 6, generator=torch.Generator().manual_seed(2)), 0.5)


def _validate_top_p(out, logits, top_p):
    expect_tensor(out, shape=logits.shape, dtype=logits.dtype, device=logits.device, what="the filtered logits")


EXERCISES = [
    Exercise(
        "top_p_filter",
        "**",
        "nucleus (top-p) filtering of logits",
        _validate_top_p,
        [
            Check("keeps the most likely token", _top_p_keeps_top),
            Check("keeps the token that crosses top_p", _top_p_keeps_crossing),
            Check("matches the reference on unsorted vocabularies", _top_p_unsorted),
            Check("leaves its input unchanged", _top_p_not_in_place),
        ],
    ),
]
