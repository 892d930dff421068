"""Talking to a model in the chat format: conversations to token ids, and prompts to replies.

Every stage speaks to its model through these: SFT and the reward model encode conversations, the
trainers and the labelers encode prompts, and ``respond`` samples the replies that evaluation and
feedback collection read.
"""

from __future__ import annotations

from rlhf_course.core.language_model import decode_responses, generate


def encode(tokenizer, prompt: list[dict], completion: list[dict] | None = None) -> tuple[list[int], int]:
    """Token ids of the chat-formatted conversation and the length of its prompt part.

    With no completion, the ids end with the generation prompt ``<|assistant|>``.
    """
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    if completion is None:
        return list(prompt_ids), len(prompt_ids)
    reply = "".join(m["content"] for m in completion)
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return list(prompt_ids) + reply_ids, len(prompt_ids)


def encode_many(tokenizer, prompts: list[list[dict]], replies: list[str]) -> list[list[int]]:
    """``encode(prompt, reply)`` ids for many conversations: each distinct prompt is templated once and
    the replies are tokenized in one batched call (pairs and groups of samples share their prompt)."""
    templated = {}
    for prompt in prompts:
        key = tuple((m["role"], m["content"]) for m in prompt)
        if key not in templated:
            templated[key] = list(
                tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
            )
    reply_ids = tokenizer(list(replies), add_special_tokens=False)["input_ids"] if replies else []
    return [
        templated[tuple((m["role"], m["content"]) for m in prompt)] + ids + [tokenizer.eos_token_id]
        for prompt, ids in zip(prompts, reply_ids)
    ]


def respond(
    model,
    tokenizer,
    tasks: list,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """The model's reply to each task (anything with a ``.prompt``: chat messages), greedy by default,
    batched with the KV cache."""
    model.eval()
    replies = []
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start : start + batch_size]
        prompts = [encode(tokenizer, task.prompt)[0] for task in chunk]
        sequences, mask = generate(
            model,
            prompts,
            pad_id=tokenizer.pad_token_id,
            eos_id=tokenizer.eos_token_id,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed + start,
        )
        replies.extend(decode_responses(tokenizer, sequences, mask))
    return replies
