"""Lesson 01 exercise: nucleus (top-p) sampling.

Write the body of ``top_p_filter``, then check it from the lesson or with
``rlhf-course check top_p_filter``.
"""

import torch


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus (top-p) filtering of next-token logits, by the rule in lesson 01's "Sampling" section.

    logits: (batch, vocab) float, a constant (do not modify it); top_p: a float in (0, 1].
    Return a new (batch, vocab) tensor of the logits' dtype: each kept token keeps its logit, each dropped one
    holds -inf. Rows are independent, and any row may have ties and very large or very small logits.
    """
    ### BEGIN SOLUTION
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (batch, vocab)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
    ### END SOLUTION
