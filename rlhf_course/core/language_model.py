"""Language-model basics: padding a batch, the next-token loss, and sampling with the KV cache.

Three of these are exercises (``pad_batch``, ``next_token_loss``, ``top_p_filter``): training and
generation call them through the registry, so a learner's version runs inside the real loops.
"""

from __future__ import annotations

import functools
import inspect
import weakref

import torch
from transformers import DynamicCache, StaticCache

from rlhf_course.core import runtime
from rlhf_course.core.registry import replaceable

IGNORE_INDEX = -100  # label value that the loss skips (PyTorch's and Hugging Face's convention)


@replaceable("pad_batch")
def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists of different lengths into ``(input_ids, attention_mask)``, both (batch, max_len) long.

    Training pads on the right; generation pads on the left so that every prompt ends at the same
    column and the next token is appended right after it.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        input_ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, cols] = 1
    return input_ids, attention_mask


@replaceable("next_token_loss")
def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of each next token, over the positions whose label is not -100.

    logits: (batch, seq, vocab); labels: (batch, seq). The logits at position t predict token t+1,
    so they are shifted against the labels. The mean is over *tokens* (not per sequence first), as
    in Hugging Face and TRL's SFTTrainer: every response token counts the same.
    """
    pred = logits[:, :-1, :].float()  # (batch, seq-1, vocab)
    target = labels[:, 1:]  # (batch, seq-1)
    mask = target != IGNORE_INDEX  # (batch, seq-1)
    log_probs = torch.log_softmax(pred, dim=-1)
    picked = log_probs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (batch, seq-1)
    return -(picked * mask).sum() / mask.sum().clamp(min=1)


@replaceable("top_p_filter")
def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches ``top_p``.

    logits: (batch, vocab). Returns logits of the same shape with the dropped tokens set to -inf.
    The most likely token is always kept, and so is the token that crosses the threshold.
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (batch, vocab)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of all strictly more likely tokens
    drop_sorted = mass_before >= top_p  # (batch, vocab)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sampling_logits(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """The logits that sampling draws from: divided by the temperature, then top-k, then top-p filtered.

    logits: (..., vocab), any number of leading dimensions; ``top_k`` 0 and ``top_p`` 1 switch a filter off.
    """
    shape = logits.shape
    scaled = (logits / temperature).reshape(-1, shape[-1])  # (rows, vocab)
    if 0 < top_k < shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (rows, 1): the k-th largest logit of each row
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        scaled = top_p_filter(scaled, top_p)
    return scaled.reshape(shape)


def next_token(logits: torch.Tensor, temperature: float, top_p: float, noise: torch.Tensor | None, top_k: int = 0):
    """One token per row from logits (batch, vocab): greedy at temperature 0, else sampled.

    ``noise`` (batch, vocab) holds Exp(1) draws. The sampled token is ``argmax(p / noise)``: the
    exponential race, a form of the Gumbel-max trick, which picks token i with probability p_i. It is what
    ``torch.multinomial`` does for one sample, with the noise made explicit, so that a row's token depends
    on its own noise only and not on which other rows share its batch (or its process).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(sampling_logits(logits, temperature, top_p, top_k).float(), dim=-1)
    return (probs / noise).argmax(dim=-1)


def _decode_step(model, input_ids, attention_mask, position_ids, cache: dict):
    """One forward pass with the KV cache; ``cache`` is ``{name: cache}`` under the name the model's forward takes."""
    return model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **cache
    ).logits


def _cache_argument(model, cache) -> dict:
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` (the old name warns, which a compiled
    step cannot do); older versions take the old name. A peft wrapper's forward takes ``**kwargs`` and hands
    them to the model it wraps, so that model's forward decides."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values": cache}


@functools.cache
def _compiled_decode_step():
    """``_decode_step`` compiled, on first use. The model is an argument, so models of one shape share the graph;
    "reduce-overhead" records it as a CUDA graph on a GPU: one launch per token instead of hundreds."""
    return torch.compile(_decode_step, mode="reduce-overhead", dynamic=False, fullgraph=True)


_static_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _static_cache(model, batch: int, length: int):
    """A static KV cache for ``model``, allocated once per (batch, length) and reset between calls: its tensors
    keep their addresses, which is what lets a compiled step replay its CUDA graph instead of recording again."""
    caches = _static_caches.setdefault(model, {})
    if (batch, length) in caches:
        caches[batch, length].reset()
    else:
        caches[batch, length] = StaticCache(config=model.config, max_cache_len=length)
    return caches[batch, length]


@torch.no_grad()
def generate(
    model,
    prompt_ids: list[list[int]],
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    rows: range | None = None,
    decoder: str | None = None,
):
    """Continue left-padded prompts with the KV cache until each row emits EOS.

    Returns ``(sequences, response_mask)``: sequences (batch, prompt_len + new) hold the prompts and the
    responses (EOS included, then padding); response_mask (batch, prompt_len + new) is 1 on response tokens.
    Position ids come from the attention mask, so a left-padded prompt starts at position 0.
    ``rows`` says which rows of a larger batch these prompts are (``rollouts.collect`` gives each process a range of them): each step
    draws the whole batch's sampling noise and keeps these rows', so a batch split over processes samples
    what the whole batch would have sampled in one.

    ``decoder`` (default: ``runtime.decoder()``) picks the KV cache. "dynamic" grows it by one column a step.
    "static" allocates it once for the whole response, so every step has the same shapes; "compiled" also runs
    each step through ``torch.compile`` (a CUDA graph on a GPU). All three give the same tokens.
    """
    decoder = decoder or runtime.decoder()
    if decoder not in runtime.DECODERS:
        raise ValueError(f"decoder must be one of {runtime.DECODERS}, got {decoder!r}")
    dev = next(model.parameters()).device
    input_ids, attention_mask = pad_batch(prompt_ids, pad_id, side="left")
    input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (batch, prompt_len)
    batch, width = input_ids.shape
    rows = range(batch) if rows is None else rows
    if len(rows) != batch:
        raise ValueError(f"rows={rows} names {len(rows)} rows of the batch, but {batch} prompts were given")
    cache, decode_step = DynamicCache(config=model.config), _decode_step
    if decoder != "dynamic":
        # Lengths rounded up to 128 columns, so calls with similar prompts share one cache (and one compiled graph).
        # Every column after the prompt is unmasked: a row that has finished only attends to its own padding,
        # and its later tokens are thrown away, so the mask never changes during decoding.
        length = -(-(width + max_new_tokens) // 128) * 128
        cache = _static_cache(model, batch, length)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, length - width)], dim=1)
        if decoder == "compiled":
            decode_step = _compiled_decode_step()
    # Asking the GPU whether every row has finished waits for its queue to drain: do it every few steps there
    check_every = 1 if dev.type == "cpu" else 8
    past = _cache_argument(model, cache)
    finished = torch.zeros(batch, dtype=torch.bool, device=dev)
    new_tokens, new_mask = [], []
    step_ids, step_pos = input_ids, position_ids
    for step in range(max_new_tokens):
        forward = _decode_step if step == 0 else decode_step  # the prompt's pass runs eagerly: its width varies
        if forward is not _decode_step:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are used up: the graph may reuse them
        with runtime.autocast(dev):  # outside the compiled step: the step is traced under it
            logits = forward(model, step_ids, attention_mask, step_pos, past)[:, -1, :].float()  # (batch, vocab)
        noise = (
            None
            if temperature == 0
            else torch.empty((rows.stop, logits.shape[-1]), device=dev).exponential_(generator=generator)[
                rows.start :: rows.step
            ]
        )
        token = next_token(logits, temperature, top_p, noise, top_k)  # (batch,)
        alive = ~finished
        token = torch.where(alive, token, torch.full_like(token, pad_id))
        new_tokens.append(token)
        new_mask.append(alive.long())
        finished = finished | (token == eos_id)
        if (step + 1) % check_every == 0 and bool(finished.all()):
            break
        if decoder == "dynamic":
            attention_mask = torch.cat([attention_mask, alive.long().unsqueeze(1)], dim=1)
        step_ids = token.unsqueeze(1)  # (batch, 1)
        step_pos = step_pos[:, -1:] + 1
    responses = torch.stack(new_tokens, dim=1)  # (batch, new)
    response_mask = torch.stack(new_mask, dim=1)  # (batch, new)
    # steps taken after every row had finished (between two checks) hold only padding: drop them
    keep = int(response_mask.any(dim=0).sum())  # rows only ever stop, so the columns with a live row come first
    responses, response_mask = responses[:, :keep], response_mask[:, :keep]
    sequences = torch.cat([input_ids, responses], dim=1)
    return sequences, torch.cat([torch.zeros_like(input_ids), response_mask], dim=1)


def decode_responses(tokenizer, sequences: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """The text of each row's response, without its EOS and padding."""
    texts = []
    for seq, mask in zip(sequences.tolist(), response_mask.tolist()):
        ids = [t for t, m in zip(seq, mask) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return texts
