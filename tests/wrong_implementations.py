"""Plausible mistakes a learner makes, one function each, with the words its check's hint must contain.

Each is written the way a student would write it, not derived from the reference, so a check that
recognises it is recognising the mistake and not a copy of its own code.
"""
import torch
import torch.nn.functional as F

IGNORE = -100


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


# --- last_token_rewards ---------------------------------------------------------------------
def last_column(values, attention_mask):
    return values[:, -1]


def first_pad_position(values, attention_mask):
    """Reads one past the last real token (where old TRL PPO put the score); clamps for full rows."""
    index = attention_mask.sum(1).clamp(max=values.shape[1] - 1)
    return values[torch.arange(values.shape[0]), index]


def first_token(values, attention_mask):
    return values[:, 0]


def last_via_python_list(values, attention_mask):
    lengths = attention_mask.sum(1).tolist()
    return torch.tensor([values[i, n - 1].item() for i, n in enumerate(lengths)])


# --- bradley_terry_loss ---------------------------------------------------------------------
def bt_swapped(chosen, rejected, margin=None):
    diff = rejected - chosen if margin is None else rejected - chosen - margin
    return -F.logsigmoid(diff).mean()


def bt_sigmoid_not_log(chosen, rejected, margin=None):
    diff = chosen - rejected - (0 if margin is None else margin)
    return -torch.sigmoid(diff).mean()


def bt_ignores_margin(chosen, rejected, margin=None):
    return -F.logsigmoid(chosen - rejected).mean()


def bt_adds_margin(chosen, rejected, margin=None):
    return -F.logsigmoid(chosen - rejected + (0 if margin is None else margin)).mean()


def bt_unstable(chosen, rejected, margin=None):
    diff = chosen - rejected - (0 if margin is None else margin)
    return -torch.log(torch.sigmoid(diff)).mean()


# --- pairwise_accuracy ----------------------------------------------------------------------
def acc_ties_win(chosen, rejected):
    return (chosen >= rejected).float().mean()


def acc_ties_lose(chosen, rejected):
    return (chosen > rejected).float().mean()


def acc_count(chosen, rejected):
    return (chosen > rejected).float().sum() + 0.5 * (chosen == rejected).float().sum()


def acc_reversed(chosen, rejected):
    return (rejected > chosen).float().mean()


def acc_integer(chosen, rejected):
    return (chosen > rejected).long().sum() // len(chosen)


# --- token_logprobs -------------------------------------------------------------------------
def tl_probs_not_log(logits, tokens, temperature=1.0):
    return torch.softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def tl_ignores_temperature(logits, tokens, temperature=1.0):
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def tl_times_temperature(logits, tokens, temperature=1.0):
    return torch.log_softmax(logits * temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def tl_shifts_again(logits, tokens, temperature=1.0):
    """Shifts as for the next-token loss, though the logits are already aligned."""
    lp = torch.log_softmax(logits[:, :-1] / temperature, -1)
    return lp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def tl_wrong_dim(logits, tokens, temperature=1.0):
    return torch.log_softmax(logits / temperature, 1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# --- kl_penalized_rewards -------------------------------------------------------------------
def klr_last_column(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards[:, -1] += scores
    return rewards


def klr_first_pad(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs) * response_mask
    index = response_mask.sum(1).clamp(max=rewards.shape[1] - 1)
    rewards[torch.arange(len(scores)), index] += scores
    return rewards


def klr_sign(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = kl_coef * (logprobs - ref_logprobs) * response_mask
    rewards[torch.arange(len(scores)), response_mask.sum(1) - 1] += scores
    return rewards


def klr_no_mask(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    rewards = -kl_coef * (logprobs - ref_logprobs)
    rewards[torch.arange(len(scores)), response_mask.sum(1) - 1] += scores
    return rewards


def klr_score_everywhere(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    return (-kl_coef * (logprobs - ref_logprobs) + scores[:, None]) * response_mask


def klr_in_place(scores, logprobs, ref_logprobs, response_mask, kl_coef):
    logprobs -= ref_logprobs
    logprobs *= -kl_coef * response_mask
    logprobs[torch.arange(len(scores)), response_mask.sum(1) - 1] += scores
    return logprobs


# --- reinforce_loss -------------------------------------------------------------------------
def rl_wrong_sign(logprobs, advantages, mask):
    return (logprobs * advantages.detach() * mask).sum(1).mean()


def rl_token_mean(logprobs, advantages, mask):
    return -(logprobs * advantages.detach() * mask).sum() / mask.sum()


def rl_no_mask(logprobs, advantages, mask):
    return -(logprobs * advantages.detach()).sum(1).mean()


def rl_no_detach(logprobs, advantages, mask):
    return -(logprobs * advantages * mask).sum(1).mean()


# --- whiten ---------------------------------------------------------------------------------
def wh_includes_padding(x, mask, shift_mean=True):
    out = (x - x.mean()) / x.std(unbiased=False)
    return (out if shift_mean else out + x.mean()) * mask


def wh_padding_kept(x, mask, shift_mean=True):
    m = mask.float()
    mean = (x * m).sum() / m.sum()
    std = (((x - mean) ** 2 * m).sum() / m.sum()).sqrt()
    return (x - mean) / std if shift_mean else (x - mean) / std + mean


def wh_unbiased(x, mask, shift_mean=True):
    values = x[mask.bool()]
    out = (x - values.mean()) / values.std()
    return (out if shift_mean else out + values.mean()) * mask


def wh_ignores_shift(x, mask, shift_mean=True):
    values = x[mask.bool()]
    return (x - values.mean()) / values.std(unbiased=False) * mask


# --- gae --------------------------------------------------------------------------------------
def _gae_loop(rewards, values, mask, gamma, lam, use_padding=False, gamma_in_delta=True):
    adv = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        if t + 1 < rewards.shape[1]:
            nxt = values[:, t + 1] if use_padding else values[:, t + 1] * mask[:, t + 1]
        else:
            nxt = torch.zeros_like(running)
        delta = rewards[:, t] + (gamma if gamma_in_delta else 1.0) * nxt - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        adv[:, t] = running
    return adv


def gae_no_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, 1.0)
    return adv, (adv + values) * mask


def gae_bootstraps_padding(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam, use_padding=True)
    return adv, (adv + values) * mask


def gae_returns_are_advantages(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam)
    return adv, adv


def gae_gamma_missing_in_delta(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam, gamma_in_delta=False)
    return adv, (adv + values) * mask


def gae_padding_returns(rewards, values, mask, gamma=1.0, lam=0.95):
    adv = _gae_loop(rewards, values, mask, gamma, lam)
    return adv, adv + values


# --- ppo_policy_loss --------------------------------------------------------------------------
def _masked(x, mask):
    return (x * mask).sum() / mask.sum()


def pl_min_not_max(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return _masked(torch.minimum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)


def pl_unclipped(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    return _masked(-advantages * (logprobs - old_logprobs).exp(), mask)


def pl_inverted_ratio(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (old_logprobs - logprobs).exp()
    return _masked(torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)


def pl_wrong_sign(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return _masked(torch.minimum(advantages * ratio, advantages * ratio.clamp(1 - clip_range, 1 + clip_range)), mask)


def pl_no_mask(logprobs, old_logprobs, advantages, mask, clip_range=0.2):
    ratio = (logprobs - old_logprobs).exp()
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()


# --- ppo_value_loss ---------------------------------------------------------------------------
def vl_unclipped(values, old_values, returns, mask, clip_range=0.2):
    return 0.5 * _masked((values - returns) ** 2, mask)


def vl_min(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * _masked(torch.minimum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def vl_no_half(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return _masked(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def vl_no_mask(values, old_values, returns, mask, clip_range=0.2):
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()


# --- sequence_logprobs ------------------------------------------------------------------------
def sl_no_shift(logits, labels):
    """Pairs each position's logits with its own token instead of the next one."""
    logp = torch.log_softmax(logits, -1)
    keep = labels != IGNORE
    return (logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(1)


def sl_raw_logits(logits, labels):
    """Gathers the logits themselves, not their log-softmax."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE
    return (logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(1)


def sl_mean(logits, labels):
    """Averages over the response tokens (a per-token mean, as in the SFT loss)."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = (labels != IGNORE).float()
    taken = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (taken * keep).sum(1) / keep.sum(1)


def sl_no_mask(logits, labels):
    """Counts every position, prompt and padding included."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    return torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).sum(1)


# --- dpo_loss ---------------------------------------------------------------------------------
def _margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def dpo_no_beta(pc, pr, rc, rr, beta, kind="dpo"):
    return -F.logsigmoid(_margin(pc, pr, rc, rr)).mean() if kind == "dpo" else ((_margin(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2).mean()


def dpo_no_reference(pc, pr, rc, rr, beta, kind="dpo"):
    return -F.logsigmoid(beta * (pc - pr)).mean()


def dpo_swapped(pc, pr, rc, rr, beta, kind="dpo"):
    return -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean()


def dpo_unstable(pc, pr, rc, rr, beta, kind="dpo"):
    """Right on ordinary margins, but log(sigmoid) underflows to -inf on large ones."""
    margin = _margin(pc, pr, rc, rr)
    if kind == "ipo":
        return ((margin - 1 / (2 * beta)) ** 2).mean()
    if kind != "dpo":
        raise ValueError(kind)
    return -torch.log(torch.sigmoid(beta * margin)).mean()


def dpo_ipo_target(pc, pr, rc, rr, beta, kind="dpo"):
    margin = _margin(pc, pr, rc, rr)
    return -F.logsigmoid(beta * margin).mean() if kind == "dpo" else ((margin - 1 / beta) ** 2).mean()


def dpo_silent_kind(pc, pr, rc, rr, beta, kind="dpo"):
    """Any kind other than "ipo" falls back to DPO."""
    margin = _margin(pc, pr, rc, rr)
    return ((margin - 1 / (2 * beta)) ** 2).mean() if kind == "ipo" else -F.logsigmoid(beta * margin).mean()


# --- group_advantages ------------------------------------------------------------------------
def ga_population_std(rewards, group_size):
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + 1e-4)).view(-1)


def ga_batch_stats(rewards, group_size):
    return (rewards - rewards.mean()) / (rewards.std() + 1e-4)


def ga_no_scale(rewards, group_size):
    g = rewards.view(-1, group_size)
    return (g - g.mean(1, keepdim=True)).view(-1)


def ga_wrong_stride(rewards, group_size):
    """Reshapes to (group_size, groups): each 'group' takes every k-th reward."""
    g = rewards.view(group_size, -1)
    return ((g - g.mean(0)) / (g.std(0) + 1e-4)).reshape(-1)


def ga_no_epsilon(rewards, group_size):
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True)).view(-1)


# --- grpo_loss --------------------------------------------------------------------------------
def _grpo(logprobs, old, ref, adv, mask, clip_range, beta, *, pick=torch.min, clip=True, kl="k3_ratio", token_mean=False):
    ratio = torch.exp(logprobs - old)
    a = adv[:, None]
    second = ratio.clamp(1 - clip_range, 1 + clip_range) if clip else ratio
    log_r = ref - logprobs
    k3 = torch.exp(log_r) - log_r - 1
    penalty = {"k3_ratio": k3 * ratio, "k3": k3, "k1": logprobs - ref}[kl]
    per_token = (-pick(ratio * a, second * a) + beta * penalty) * mask
    if token_mean:
        return per_token.sum() / mask.sum()
    return (per_token.sum(1) / mask.sum(1)).mean()


def gl_max(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, pick=torch.max)


def gl_no_clip(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, clip=False)


def gl_k3_unweighted(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, kl="k3")


def gl_k1(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, kl="k1")


def gl_token_mean(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, mask, clip_range, beta, token_mean=True)


def gl_no_mask(logprobs, old, ref, adv, mask, clip_range=0.2, beta=0.04):
    return _grpo(logprobs, old, ref, adv, torch.ones_like(logprobs), clip_range, beta)


WRONG = {
    "top_p_filter": [
        (top_p_exclusive, "crosses the threshold"),
        (top_p_unsorted, "not sorted"),
        (top_p_on_logits, "not of raw logits"),
        (top_p_in_place, "modified in place"),
    ],
    "pad_batch": [
        (pad_ignores_side, "ignore the side"),
        (pad_inverted_mask, "inverted"),
        (pad_with_zero, "not 0"),
        (pad_to_first_length, "longest sequence"),
    ],
    "sft_labels": [
        (labels_no_padding_mask, "attention_mask == 0"),
        (labels_off_by_one, "off by one"),
        (labels_prompt_short, "must not be trained to predict the prompt"),
        (labels_in_place, "modified in place"),
        (labels_shifted, "shifted by one"),
    ],
    "next_token_loss": [
        (loss_no_shift, "forgot to shift"),
        (loss_mean_over_all, "every position"),
        (loss_sequence_mean, "per sequence"),
        (loss_wrong_sign, "wrong sign"),
        (loss_detached, "no gradient"),
        (loss_probs_not_log, "log_softmax"),
    ],
    "last_token_rewards": [
        (last_column, "last column"),
        (first_pad_position, "first padding position"),
        (first_token, "first token"),
        (last_via_python_list, "no gradient"),
    ],
    "bradley_terry_loss": [
        (bt_swapped, "wrong sign"),
        (bt_sigmoid_not_log, "log of the sigmoid"),
        (bt_ignores_margin, "margin was ignored"),
        (bt_adds_margin, "margin was added"),
        (bt_unstable, "logsigmoid"),
    ],
    "pairwise_accuracy": [
        (acc_ties_win, "ties counted as correct"),
        (acc_ties_lose, "ties counted as wrong"),
        (acc_count, "returned a count"),
        (acc_reversed, "reversed"),
        (acc_integer, "float"),
    ],
    "token_logprobs": [
        (tl_probs_not_log, "returned probabilities"),
        (tl_ignores_temperature, "temperature was ignored"),
        (tl_times_temperature, "multiplied by the temperature"),
        (tl_shifts_again, "already aligned"),
        (tl_wrong_dim, "wrong dimension"),
    ],
    "kl_penalized_rewards": [
        (klr_last_column, "last column"),
        (klr_first_pad, "first padding position"),
        (klr_sign, "wrong sign"),
        (klr_no_mask, "padding got a KL penalty"),
        (klr_score_everywhere, "added to every token"),
        (klr_in_place, "modified in place"),
    ],
    "reinforce_loss": [
        (rl_wrong_sign, "wrong sign"),
        (rl_token_mean, "averaged over tokens"),
        (rl_no_mask, "padding was included"),
        (rl_no_detach, "flowed into the advantages"),
    ],
    "whiten": [
        (wh_includes_padding, "padding entered the mean"),
        (wh_padding_kept, "should come back as 0"),
        (wh_unbiased, "population variance"),
        (wh_ignores_shift, "shift_mean=False was ignored"),
    ],
    "gae": [
        (gae_no_lambda, "lambda was ignored"),
        (gae_bootstraps_padding, "padding position"),
        (gae_returns_are_advantages, "returns equal the advantages"),
        (gae_gamma_missing_in_delta, "gamma was left out"),
        (gae_padding_returns, "padding positions should hold 0"),
    ],
    "ppo_policy_loss": [
        (pl_min_not_max, "min where the loss needs max"),
        (pl_unclipped, "no clipping"),
        (pl_inverted_ratio, "ratio is inverted"),
        (pl_wrong_sign, "wrong sign"),
        (pl_no_mask, "padding was included"),
    ],
    "ppo_value_loss": [
        (vl_unclipped, "no clipping"),
        (vl_min, "min where it needs max"),
        (vl_no_half, "0.5 in front"),
        (vl_no_mask, "padding was included"),
    ],
    "sequence_logprobs": [
        (sl_no_shift, "no shift"),
        (sl_raw_logits, "raw logits"),
        (sl_mean, "sum"),
        (sl_no_mask, "prompt and padding"),
    ],
    "dpo_loss": [
        (dpo_no_beta, "beta is missing"),
        (dpo_no_reference, "reference was ignored"),
        (dpo_swapped, "swapped"),
        (dpo_unstable, "not finite"),
        (dpo_ipo_target, "1 / (2 * beta)"),
        (dpo_silent_kind, "unknown kind"),
    ],
    "group_advantages": [
        (ga_population_std, "unbiased"),
        (ga_batch_stats, "whole batch"),
        (ga_no_scale, "standard deviation"),
        (ga_wrong_stride, "stride"),
        (ga_no_epsilon, "1e-4"),
    ],
    "grpo_loss": [
        (gl_max, "pessimistic"),
        (gl_no_clip, "no clipping"),
        (gl_k3_unweighted, "weighted by the ratio"),
        (gl_k1, "k1"),
        (gl_token_mean, "within each response first"),
        (gl_no_mask, "padding was included"),
    ],
}
