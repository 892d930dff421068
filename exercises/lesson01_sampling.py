"""Lesson 01 exercise: nucleus (top-p) sampling.

Write the body of ``top_p_filter``, then check it from the lesson or with
``rlhf-course check top_p_filter``.
"""

import torch


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability reaches ``top_p``.

    logits: (batch, vocab). Return a new tensor of the same shape in which every dropped token's
    logit is -inf and every kept token keeps its logit. The most likely token is always kept, and so
    is the token whose probability makes the running total cross ``top_p``.

    Hint: sort the logits in descending order, turn them into probabilities, and compare the
    probability mass *before* each token with top_p; then map the decision back to vocabulary order.
    """
    # YOUR CODE HERE
    raise NotImplementedError()
