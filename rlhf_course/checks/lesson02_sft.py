"""Lesson 02's exercises: padding a batch, response-only labels, the next-token loss, one step of SFT.

Each check runs the learner's function on inputs where the plausible mistakes give different outputs,
and its message names the mistake the output looks like.
"""

import torch

from rlhf_course.algorithms.sft import SFTConfig, batch_loss, collate, sft_labels, sft_step, train_sft
from rlhf_course.checks import loops
from rlhf_course.checks.base import Check, Exercise, Fail, close, diagnose
from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import IGNORE_INDEX, next_token_loss
from rlhf_course.core.registry import ExerciseOutputError, expect_tensor

# --- pad_batch --------------------------------------------------------------------------------
PAD = 1
SEQS = [[5, 6, 7], [8], [9, 10]]


def _pad_shape(fn):
    ids, mask = fn(SEQS, PAD, side="right")
    if tuple(ids.shape) != (3, 3) or tuple(mask.shape) != (3, 3):
        raise Fail(
            f"expected shape (3, 3) (batch, longest sequence), got {tuple(ids.shape)} and {tuple(mask.shape)}; "
            "the width must be the length of the longest sequence"
        )
    if ids.dtype != torch.long or mask.dtype != torch.long:
        raise Fail(f"expected two torch.long tensors, got {ids.dtype} and {mask.dtype}")


def _pad_mask(fn):
    for side in ("right", "left"):
        ids, mask = fn(SEQS, PAD, side=side)
        if set(ids.unique().tolist()) <= {0, 1} and (mask > 1).any():
            raise Fail("you returned (attention_mask, input_ids): return them in the order (input_ids, attention_mask)")
        if mask.sum().item() != 6 or set(mask.unique().tolist()) - {0, 1}:
            raise Fail(
                f"side={side!r}: the attention mask should hold 1 for the 6 real tokens and 0 for the 3 pads, "
                f"got {mask.tolist()}; is it inverted?"
            )
        if not torch.equal(mask.bool(), ids != PAD):
            raise Fail(
                f"side={side!r}: attention_mask must be 1 exactly where the real tokens are (mask {mask.tolist()}, "
                f"ids {ids.tolist()})"
            )


def _pad_value(fn):
    ids, _ = fn(SEQS, PAD, side="right")
    if (ids == 0).any():
        raise Fail(
            f"padding should use pad_id={PAD}, got {ids.tolist()}; fill with pad_id, not 0 (token 0 is a real token)"
        )


def _pad_sides(fn):
    right = torch.tensor([[5, 6, 7], [8, PAD, PAD], [9, 10, PAD]])
    left = torch.tensor([[5, 6, 7], [PAD, PAD, 8], [PAD, 9, 10]])
    got_right, _ = fn(SEQS, PAD, side="right")
    if not torch.equal(got_right, right):
        raise Fail(
            f"side='right' should put tokens first and padding after: expected {right.tolist()}, "
            f"got {got_right.tolist()}"
        )
    got_left, _ = fn(SEQS, PAD, side="left")
    if not torch.equal(got_left, left):
        raise Fail(
            f"side='left' should put padding first so every sequence ends in the last column: "
            f"expected {left.tolist()}, got {got_left.tolist()}; did you ignore the side argument?"
        )


# --- sft_labels -------------------------------------------------------------------------------
def _labels_inputs():
    input_ids = torch.tensor(
        [[11, 12, 13, 21, 22, 2, 0, 0], [11, 12, 13, 14, 21, 2, 0, 0], [11, 12, 21, 22, 23, 24, 25, 2]]
    )
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    prompt_lengths = torch.tensor([3, 4, 2])
    return input_ids, attention_mask, prompt_lengths


def _labels_call(fn):
    ids, mask, lengths = _labels_inputs()
    out = fn(ids.clone(), mask, lengths)
    if not isinstance(out, torch.Tensor) or out.shape != ids.shape or out.dtype != torch.long:
        raise Fail(
            f"expected a torch.long tensor of shape {tuple(ids.shape)} (batch, seq), got "
            f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}"
        )
    return out


def _labels_prompt(fn):
    out = _labels_call(fn)
    _, _, lengths = _labels_inputs()
    for row, n in enumerate(lengths.tolist()):
        if (out[row, :n] != IGNORE_INDEX).any():
            if (out[row, :n] == 0).all():
                raise Fail(
                    f"row {row}: the prompt tokens hold 0, not -100: 0 is a real token id, which the loss would "
                    "train on; use IGNORE_INDEX (-100)"
                )
            same_length = " (each row has its own prompt length: prompt_lengths[row])" if row > 0 else ""
            raise Fail(
                f"row {row}: the {n} prompt tokens should be -100, got {out[row, :n].tolist()}; "
                f"the model must not be trained to predict the prompt{same_length}"
            )


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
    last = mask.sum(1) - 1  # each row's EOS
    if (out[torch.arange(len(out)), last] == IGNORE_INDEX).all() and torch.equal(
        out.masked_fill(mask == 0, IGNORE_INDEX)[:, :1], want[:, :1]
    ):
        raise Fail(
            "the EOS at the end of each reply was masked: keep its id, so that the model learns to stop "
            f"(expected {want.tolist()}, got {out.tolist()})"
        )
    first = [out[r, n].item() for r, n in enumerate(lengths.tolist())]
    if any(f == IGNORE_INDEX for f in first):
        raise Fail(
            f"the first response token (at position prompt_length) was masked: off by one at the prompt "
            f"boundary; expected {want.tolist()}, got {out.tolist()}"
        )
    raise Fail(f"response tokens (EOS included) must keep their ids: expected {want.tolist()}, got {out.tolist()}")


def _labels_not_in_place(fn):
    # every check's call fails when the function writes into its input (exercises.guarded); input_ids are
    # also the model's input
    fn(*_labels_inputs())


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
    if close(got, want):
        return
    shifted, smask = _nll(logits[:, :-1], labels[:, 1:])
    unshifted, umask = _nll(logits, labels)
    mistakes = {
        "forgot to shift: the logits at position t predict the token at t+1 (use logits[:, :-1] with labels[:, 1:])": unshifted.sum()
        / umask.sum(),
        "divided by every position, padding and prompt included: average over the tokens whose label is not -100": shifted.sum()
        / smask.numel(),
        "averaged per sequence first: take the mean over all response tokens of the batch (token mean)": (
            shifted.sum(1) / smask.sum(1)
        ).mean(),
        "wrong sign: the loss is the *negative* log-likelihood and must be positive": -want,
        "summed instead of averaged: divide by the number of counted tokens": shifted.sum(),
        "summed over each sequence's tokens, then averaged over the sequences: divide the batch's sum by its "
        "number of counted tokens": shifted.sum(1).mean(),
    }
    raise Fail(
        f"expected {want.item():.5f}, got {float(got):.5f}: "
        + diagnose(
            got,
            mistakes,
            "use log_softmax over the vocabulary and pick the log-probability of each next token",
            want=want,
        )
    )


def _loss_ignores_masked(fn):
    logits, labels = _loss_inputs()
    changed = logits.clone()
    changed[1, 5:] += 10 * torch.randn_like(changed[1, 5:])  # logits predicting padding (labels[1, 6:]) or past end
    if not close(fn(logits, labels), fn(changed, labels)):
        raise Fail(
            "the loss changed when logits at padded positions changed: positions whose label is -100 must not count"
        )


# --- sft_step ---------------------------------------------------------------------------------
def _step_batches(tok):
    rows = loops.demonstrations()
    encoded = [encode(tok, r["prompt"], r["completion"]) for r in rows]
    return [collate(encoded[i : i + 4], tok.pad_token_id) for i in (0, 4)]


def _step_setup():
    """Two steps from the same tiny model: the first clipped (its gradient's norm is far above 0.05), the second
    weighted by 0.5 and not clipped (clipping would hide the weight)."""
    model = loops.tiny_lm()
    optimizer, accelerator = loops.sgd(model), loops.accelerator()
    calls = [
        ((model, optimizer, accelerator, batch), {"weight": weight, "max_grad_norm": norm})
        for batch, weight, norm in zip(_step_batches(loops.tokenizer()), (1.0, 0.5), (0.05, 1e3))
    ]
    return model, calls


def _reference_loss(model, batch):
    return batch_loss(model, batch)[0]


def _loss_on_every_token(model, batch):
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return _reference_loss(model, {**batch, "labels": labels})


def _loss_unshifted(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())


_SFT_STEP_MISTAKES = {
    **{hint: loops.step_variant(_reference_loss, **flags) for hint, flags in loops.STEP_MISTAKES.items()},
    "the loss counted the prompt tokens: compute it against batch['labels'], where the prompt is -100": (
        loops.step_variant(_loss_on_every_token)
    ),
    "the logits at position t were scored against the label at t, not t+1: use your next_token_loss": (
        loops.step_variant(_loss_unshifted)
    ),
}


def _step_parameters(fn):
    got, want = loops.run(fn, _step_setup), loops.run(sft_step.reference, _step_setup)
    loops.compare_parameters(got, want, _SFT_STEP_MISTAKES, _step_setup, "two steps")


def _step_returns_loss(fn):
    got, want = loops.run(fn, _step_setup), loops.run(sft_step.reference, _step_setup)
    for g, w, (_, kwargs) in zip(got.outputs, want.outputs, _step_setup()[1]):
        loops.loss_returned(g, w, kwargs["weight"])


def _step_learns(fn):
    """Forty steps of Adam on one batch of four demonstrations: the loss must fall to under half its start."""
    model = loops.tiny_lm()
    optimizer, accelerator = torch.optim.Adam(model.parameters(), lr=1e-2), loops.accelerator()
    batch = _step_batches(loops.tokenizer())[0]
    losses = [
        float(fn(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0).detach()) for _ in range(40)
    ]
    if not losses[-1] < losses[0] / 2:
        raise Fail(
            f"forty steps on one batch took the loss from {losses[0]:.3f} to {losses[-1]:.3f} (the reference "
            "reaches under half its start): the step does not descend the loss"
        )


def _step_in_trainer(fn):
    """train_sft with the function plugged in: the same losses as with the reference."""
    tok, rows = loops.tokenizer(), loops.demonstrations()
    config = SFTConfig(epochs=1, batch_size=4, warmup_steps=1)
    got, want = loops.trained_with(
        "sft_step", fn, _validate_step, lambda: train_sft(loops.tiny_lm(), tok, rows, config).losses
    )
    if not torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5):
        raise Fail(f"train_sft with your step logged the losses {got}, with the reference's {want}")


def _validate_step(out, model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    expect_tensor(out, shape=(), what="the returned loss")


def _validate_pad_batch(out, sequences, pad_id, side="right"):
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ExerciseOutputError("should return a tuple (input_ids, attention_mask)")
    shape = (len(sequences), max(len(s) for s in sequences))
    expect_tensor(out[0], shape=shape, dtype=torch.long, what="input_ids")
    expect_tensor(out[1], shape=shape, dtype=torch.long, what="attention_mask")


def _validate_loss(out, logits, labels):
    expect_tensor(out, shape=(), what="the loss")
    if not out.is_floating_point():
        raise ExerciseOutputError(f"the loss should be a floating-point scalar, got {out.dtype}")


def _validate_labels(out, input_ids, attention_mask, prompt_lengths):
    expect_tensor(out, shape=input_ids.shape, dtype=torch.long, device=input_ids.device, what="labels")


EXERCISES = [
    Exercise(
        "pad_batch",
        "*",
        "pad token lists into input_ids and attention_mask",
        _validate_pad_batch,
        [
            Check("returns (batch, longest) long tensors", _pad_shape),
            Check("attention mask marks the real tokens", _pad_mask),
            Check("pads with pad_id", _pad_value),
            Check("pads on the requested side", _pad_sides),
        ],
    ),
    Exercise(
        "sft_labels",
        "*",
        "labels for response-only loss",
        _validate_labels,
        [
            Check("masks the prompt", _labels_prompt),
            Check("masks the padding", _labels_padding),
            Check("keeps the response and its EOS", _labels_response),
            Check("leaves input_ids unchanged", _labels_not_in_place),
        ],
    ),
    Exercise(
        "next_token_loss",
        "**",
        "token-mean next-token NLL with a mask",
        _validate_loss,
        [
            Check("returns a scalar with a gradient", _loss_scalar),
            Check("matches the reference value", _loss_value),
            Check("ignores positions labelled -100", _loss_ignores_masked),
        ],
    ),
    Exercise(
        "sft_step",
        "**",
        "one optimizer step of SFT: the loss, backward, clip, step",
        _validate_step,
        [
            Check("two steps leave the reference's parameters", _step_parameters),
            Check("returns the unweighted loss, detached", _step_returns_loss),
            Check("forty steps on one batch learn it", _step_learns),
            Check("train_sft runs with it and logs the reference's losses", _step_in_trainer),
        ],
    ),
]
