"""Plausible mistakes in lesson 02's exercises, one function each, with the words its check's hint must contain.

Each is written the way a student would write it, not derived from the reference, so a check that
recognises it is recognising the mistake and not a copy of its own code.
"""

import torch
import torch.nn.functional as F

IGNORE = -100


# --- pad_batch ------------------------------------------------------------------------------
def _pad(sequences, pad_id, left, fill_mask_ones=True):
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(s)
        mask[i, cols] = 1
    return ids, mask


def pad_ignores_side(sequences, pad_id, side="right"):
    return _pad(sequences, pad_id, left=False)


def pad_inverted_mask(sequences, pad_id, side="right"):
    ids, mask = _pad(sequences, pad_id, left=side == "left")
    return ids, 1 - mask


def pad_with_zero(sequences, pad_id, side="right"):
    ids, mask = _pad(sequences, 0, left=side == "left")
    return ids, mask


def pad_to_first_length(sequences, pad_id, side="right"):
    """Uses the first sequence's length as the width (works only when it is the longest)."""
    width = len(sequences[-1])
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        s = s[:width]
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


# --- sft_labels -----------------------------------------------------------------------------
def labels_no_padding_mask(input_ids, attention_mask, prompt_lengths):
    labels = input_ids.clone()
    for i, n in enumerate(prompt_lengths.tolist()):
        labels[i, :n] = IGNORE
    return labels


def labels_off_by_one(input_ids, attention_mask, prompt_lengths):
    """Masks one token too many: the first response token is lost."""
    labels = input_ids.clone()
    for i, n in enumerate(prompt_lengths.tolist()):
        labels[i, : n + 1] = IGNORE
    labels[attention_mask == 0] = IGNORE
    return labels


def labels_prompt_short(input_ids, attention_mask, prompt_lengths):
    """Masks one token too few: the last prompt token is trained on."""
    labels = input_ids.clone()
    for i, n in enumerate(prompt_lengths.tolist()):
        labels[i, : n - 1] = IGNORE
    labels[attention_mask == 0] = IGNORE
    return labels


def labels_in_place(input_ids, attention_mask, prompt_lengths):
    for i, n in enumerate(prompt_lengths.tolist()):
        input_ids[i, :n] = IGNORE
    input_ids[attention_mask == 0] = IGNORE
    return input_ids


def labels_shifted(input_ids, attention_mask, prompt_lengths):
    """Shifts the labels itself (and the loss shifts again)."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    for i, n in enumerate(prompt_lengths.tolist()):
        labels[i, : n - 1] = IGNORE
    labels[:, :-1][attention_mask[:, 1:] == 0] = IGNORE
    return labels


# --- next_token_loss ------------------------------------------------------------------------
def loss_no_shift(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def loss_mean_over_all(logits, labels):
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none")
    return per_token.mean()


def loss_sequence_mean(logits, labels):
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none")
    counted = (labels[:, 1:] != IGNORE).sum(1)
    return (per_token.sum(1) / counted).mean()


def loss_wrong_sign(logits, labels):
    return -F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE)


def loss_detached(logits, labels):
    value = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE).item()
    return torch.tensor(value)


def loss_probs_not_log(logits, labels):
    """Averages 1 - p(correct) instead of -log p(correct)."""
    probs = torch.softmax(logits[:, :-1], -1)
    target = labels[:, 1:]
    mask = target != IGNORE
    p = probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return ((1 - p) * mask).sum() / mask.sum()


def pad_float_mask(sequences, pad_id, side="right"):
    """A float attention mask, ready to multiply with."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros(len(sequences), width)
    for i, s in enumerate(sequences):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, cols], mask[i, cols] = torch.tensor(s), 1.0
    return ids, mask


# --- sft_step -------------------------------------------------------------------------------
def _loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE)


def step_no_zero_grad(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    loss = _loss(model, batch)
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def step_no_clip(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    loss = _loss(model, batch)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    optimizer.step()
    return loss.detach()


def step_clip_after_step(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    loss = _loss(model, batch)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    optimizer.step()
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    return loss.detach()


def step_ignores_weight(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    loss = _loss(model, batch)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def step_returns_weighted_loss(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    loss = _loss(model, batch) * weight
    optimizer.zero_grad()
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def step_returns_graph(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    loss = _loss(model, batch)
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss


def step_trains_on_prompt(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    """Uses the input ids as labels (padding masked), so the prompt is trained on too."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    loss = _loss(model, {**batch, "labels": labels})
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def step_unshifted(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
    optimizer.zero_grad()
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def step_zero_grad_before_step(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    loss = _loss(model, batch)
    accelerator.backward(loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.zero_grad()
    optimizer.step()
    return loss.detach()


def step_ascends(model, optimizer, accelerator, batch, weight=1.0, max_grad_norm=1.0):
    """Maximises the log-likelihood's negative: the sign of the loss flipped in the backward pass."""
    loss = _loss(model, batch)
    optimizer.zero_grad()
    accelerator.backward(-loss * weight)
    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.detach()


def pad_returns_lists(sequences, pad_id, side="right"):
    width = max(len(s) for s in sequences)
    ids, mask = [], []
    for s in sequences:
        pad = [pad_id] * (width - len(s))
        ids.append(s + pad if side == "right" else pad + s)
        mask.append([1] * len(s) + [0] * len(pad) if side == "right" else [0] * len(pad) + [1] * len(s))
    return ids, mask


def pad_swapped_outputs(sequences, pad_id, side="right"):
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        start = 0 if side == "right" else width - len(s)
        ids[i, start : start + len(s)] = torch.tensor(s)
        mask[i, start : start + len(s)] = 1
    return mask, ids


def pad_to_shortest(sequences, pad_id, side="right"):
    width = min(len(s) for s in sequences)
    ids = torch.tensor([s[:width] for s in sequences], dtype=torch.long)
    return ids, torch.ones_like(ids)


def labels_zero_not_ignore(input_ids, attention_mask, prompt_lengths):
    labels = input_ids.clone()
    for i, n in enumerate(prompt_lengths.tolist()):
        labels[i, :n] = 0
    labels[attention_mask == 0] = 0
    return labels


def labels_first_prompt_length(input_ids, attention_mask, prompt_lengths):
    """Uses the first row's prompt length for every row."""
    labels = input_ids.clone()
    labels[:, : int(prompt_lengths[0])] = IGNORE
    labels[attention_mask == 0] = IGNORE
    return labels


def labels_masks_eos(input_ids, attention_mask, prompt_lengths):
    """Masks the last real token too (thinking EOS is not part of the answer)."""
    labels = input_ids.clone()
    for i, n in enumerate(prompt_lengths.tolist()):
        labels[i, :n] = IGNORE
        last = int(attention_mask[i].sum()) - 1
        labels[i, last:] = IGNORE
    labels[attention_mask == 0] = IGNORE
    return labels


def loss_sum_per_sequence_mean(logits, labels):
    lp = torch.log_softmax(logits[:, :-1], -1)
    target = labels[:, 1:]
    mask = target != IGNORE
    taken = lp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(taken * mask).sum(1).mean()


def loss_gather_without_clamp(logits, labels):
    lp = torch.log_softmax(logits[:, :-1], -1)
    target = labels[:, 1:]
    taken = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    mask = target != IGNORE
    return -(taken * mask).sum() / mask.sum()


WRONG = {
    "pad_batch": [
        (pad_ignores_side, "ignore the side"),
        (pad_inverted_mask, "inverted"),
        (pad_with_zero, "not 0"),
        (pad_to_first_length, "longest sequence"),
        (pad_float_mask, "expected two torch.long tensors"),
        (pad_returns_lists, "should be a torch.Tensor"),
        (pad_swapped_outputs, "in the order (input_ids, attention_mask)"),
        (pad_to_shortest, "length of the longest sequence"),
    ],
    "sft_labels": [
        (labels_no_padding_mask, "attention_mask == 0"),
        (labels_off_by_one, "off by one"),
        (labels_prompt_short, "must not be trained to predict the prompt"),
        (labels_in_place, "in place; the caller still needs it"),
        (labels_shifted, "shifted by one"),
        (labels_zero_not_ignore, "hold 0, not -100"),
        (labels_first_prompt_length, "each row has its own prompt length"),
        (labels_masks_eos, "the EOS at the end of each reply was masked"),
    ],
    "next_token_loss": [
        (loss_no_shift, "forgot to shift"),
        (loss_mean_over_all, "every position"),
        (loss_sequence_mean, "per sequence"),
        (loss_wrong_sign, "wrong sign"),
        (loss_detached, "no gradient"),
        (loss_probs_not_log, "log_softmax"),
        (loss_sum_per_sequence_mean, "summed over each sequence's tokens, then averaged"),
        (loss_gather_without_clamp, "index -100 is out of bounds"),
    ],
    "sft_step": [
        (step_no_zero_grad, "zero_grad"),
        (step_no_clip, "not clipped before the step"),
        (step_clip_after_step, "not clipped before the step"),
        (step_ignores_weight, "not scaled by weight"),
        (step_returns_weighted_loss, "the returned loss is the weighted one"),
        (step_returns_graph, "still carries its graph"),
        (step_trains_on_prompt, "counted the prompt tokens"),
        (step_unshifted, "not t+1"),
        (step_zero_grad_before_step, "had not changed at all"),
        (step_ascends, "does not descend the loss"),
    ],
}
