"""Plausible mistakes in lesson 01's exercises, one function each, with the words its check's hint must contain.

Each is written the way a student would write it, not derived from the reference, so a check that
recognises it is recognising the mistake and not a copy of its own code.
"""

import torch


# --- top_p_filter ---------------------------------------------------------------------------
def top_p_exclusive(logits, top_p):
    """Keeps only tokens whose cumulative probability stays below top_p (drops the crossing one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits, -1).cumsum(-1)
    drop_sorted = cum > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_p_unsorted(logits, top_p):
    """Cumulative sum in vocabulary order, forgetting to sort."""
    probs = torch.softmax(logits, -1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))


def top_p_on_logits(logits, top_p):
    """Sorts, but accumulates raw logits instead of probabilities."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    drop_sorted = sorted_logits.cumsum(-1) - sorted_logits >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_p_in_place(logits, top_p):
    """Right answer, but writes -inf into the caller's tensor."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, -1)
    drop_sorted = probs.cumsum(-1) - probs >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill_(drop, float("-inf"))


def top_p_probabilities(logits, top_p):
    """Filters the distribution itself and hands back what it filtered."""
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # the crossing token stays
    return probs.masked_fill(drop.scatter(-1, order, drop), 0.0)


def top_p_softmax_wrong_dim(logits, top_p):
    probs = torch.softmax(logits, dim=0)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_p_zero_not_inf(logits, top_p):
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, 0.0)


def top_p_sorted_order(logits, top_p):
    """Filters correctly but returns the logits in sorted order."""
    sorted_logits, _ = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(-1) - probs >= top_p
    return sorted_logits.masked_fill(drop, float("-inf"))


WRONG = {
    "top_p_filter": [
        (top_p_exclusive, "crosses the threshold"),
        (top_p_unsorted, "not sorted"),
        (top_p_on_logits, "not of raw logits"),
        (top_p_in_place, "in place; the caller still needs it"),
        (top_p_probabilities, "you returned probabilities"),
        (top_p_softmax_wrong_dim, "the softmax ran over the batch"),
        (top_p_zero_not_inf, "a dropped token must get -inf"),
        (top_p_sorted_order, "your result is in sorted order"),
    ],
}
