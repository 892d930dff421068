"""What the checks of the loop exercises share: a tiny seeded model, runs of an update function, and hints.

A loop exercise (``sft_step``, ``reward_step``, ``reinforce_step``, ``ppo_update``, ``dpo_step``,
``grpo_update``) changes a model. Its check runs the learner's function and the reference from the same
seeded model, optimizer and inputs, and compares the parameters afterwards. When they differ, it runs the plausible mistakes the same way (written as variants
of a step in the lesson's checks module) and names the one whose parameters match; when none does, it says
which parameter differs most and where. The optimizer is plain SGD: Adam divides a gradient by its own size,
which hides a forgotten weight or clip, and SGD shows every change to the gradient in the parameters.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import AutoModelForSequenceClassification

from rlhf_course.algorithms.rollouts import Rollout
from rlhf_course.checks.base import Fail, largest_difference
from rlhf_course.core import distributed, models, registry
from rlhf_course.simulation import world


def tokenizer():
    return models.load_tokenizer()


def tiny_lm(seed: int = 0):
    """A one-layer GPT-2 of width 16 on the course's tokenizer, the same for every call with the same seed."""
    torch.manual_seed(seed)
    return models.ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=128).build(tokenizer())


def tasks(n_per_family: int = 1) -> list[world.Task]:
    return world.generate_tasks("train", n_per_family, seed=0)


def demonstrations(n_per_family: int = 1) -> list[dict]:
    """Prompt/completion rows (TRL's format) of the world's tasks, each answered with its own answer."""
    rng = random.Random(0)
    return [
        {"prompt": t.prompt, "completion": [{"role": "assistant", "content": world.demonstration(t, rng)}]}
        for t in tasks(n_per_family)
    ]


def tiny_reward_model(seed: int = 0):
    """``tiny_lm``'s shape with a scalar head on the last hidden state, as the course's reward model."""
    config = tiny_lm(seed).config
    config.num_labels = 1
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def preference_rows() -> list[dict]:
    """Preference rows (TRL's format): each demonstration's reply chosen over the next one's, some with a margin."""
    rows = demonstrations()
    return [
        {
            "prompt": r["prompt"],
            "chosen": r["completion"],
            "rejected": rows[(i + 1) % len(rows)]["completion"],
            "margin": 0.5 * (i % 3),
        }
        for i, r in enumerate(rows)
    ]


ROWS, PROMPT, RESPONSE = 6, 4, 5


def random_rollout(vocab: int, gen: torch.Generator) -> Rollout:
    """A rollout of random tokens: ``ROWS`` rows of ``PROMPT`` prompt tokens and responses of different lengths
    (up to ``RESPONSE``). Its log-probabilities are zeros: a check fills in the ones it needs."""
    sequences = torch.randint(3, vocab, (ROWS, PROMPT + RESPONSE), generator=gen)
    lengths = torch.tensor([5, 3, 4, 1, 5, 2])  # response tokens per row
    response_mask = (torch.arange(RESPONSE).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (rows, resp)
    return Rollout(
        tasks=[None] * ROWS,
        sequences=sequences,
        attention_mask=torch.cat([torch.ones(ROWS, PROMPT, dtype=torch.long), response_mask], dim=1),
        response_mask=response_mask,
        prompt_width=PROMPT,
        responses=[""] * ROWS,
        logprobs=torch.zeros(ROWS, RESPONSE),
        ref_logprobs=torch.zeros(ROWS, RESPONSE),
        scores=torch.zeros(ROWS),
        ended=torch.ones(ROWS, dtype=torch.bool),
    )


@dataclass
class Run:
    """What one run of an update function left: the parameters, and what each call returned."""

    parameters: dict[str, torch.Tensor]
    outputs: list


def run(fn: Callable, setup: Callable) -> Run:
    """``setup()`` -> (model, [(args, kwargs) of each call]); ``fn`` is called with each in turn."""
    model, calls = setup()
    outputs = [fn(*args, **kwargs) for args, kwargs in calls]
    return Run({n: p.detach().clone() for n, p in model.named_parameters()}, outputs)


def same_parameters(a: dict, b: dict, tol: float = 1e-5) -> bool:
    return all(torch.allclose(a[n].double(), b[n].double(), atol=tol, rtol=tol, equal_nan=True) for n in a)


def where_parameters_differ(got: dict, want: dict) -> str:
    """The parameter that differs most from the reference's, and where in it."""
    name = max(want, key=lambda n: (got[n].double() - want[n].double()).abs().max().item())
    return f"{name}, {largest_difference(got[name], want[name])}"


def compare_parameters(learner: Run, reference: Run, mistakes: dict[str, Callable], setup: Callable, what: str):
    """Fail unless the learner's run left the reference's parameters; the hint names the matching mistake."""
    if same_parameters(learner.parameters, reference.parameters):
        return
    if same_parameters(learner.parameters, run(lambda *args, **kwargs: None, setup).parameters, tol=0.0):
        raise Fail(
            f"after {what} the parameters had not changed at all: call optimizer.step() after the backward pass "
            "(and do not clear the gradients between the two)"
        )
    matching = [
        hint
        for hint, mistake in mistakes.items()
        if same_parameters(learner.parameters, run(mistake, setup).parameters)
    ]
    if len(matching) == 1:
        raise Fail(f"after {what} the parameters are those of this mistake: {matching[0]}")
    if matching:  # mistakes that leave the same parameters on these inputs: the other checks may tell them apart
        raise Fail(f"after {what} the parameters are those of each of these mistakes: {'; or '.join(matching)}")
    raise Fail(
        f"after {what} the parameters differ from the reference's; no mistake we know of gives them. They differ "
        f"most in {where_parameters_differ(learner.parameters, reference.parameters)}. Check the pieces this "
        "function calls first (their own checks), then the order of the step"
    )


def loss_returned(got, want: torch.Tensor, weight: float) -> None:
    """The returned loss: the unweighted loss, a 0-dim tensor without gradient."""
    if not isinstance(got, torch.Tensor) or got.dim() != 0:
        raise Fail(f"return the loss as a 0-dim tensor, got {type(got).__name__} {getattr(got, 'shape', '')}")
    if got.requires_grad:
        raise Fail(
            "the returned loss still carries its graph: return loss.detach() (the caller only logs it, and a kept "
            "graph holds the activations of the whole step in memory)"
        )
    if torch.allclose(got.double(), want.double() * weight, atol=1e-6) and weight != 1:
        raise Fail("the returned loss is the weighted one: return the loss itself (the caller weights what it logs)")
    if not torch.allclose(got.double(), want.double(), atol=1e-5):
        raise Fail(f"the returned loss is {got.item():.6g}, expected {want.item():.6g} (the loss before the step)")


@contextlib.contextmanager
def no_progress_bars():
    """Trainers run inside without progress bars: the check's report shows only its verdicts."""
    shown = os.environ.get("RLHF_COURSE_PROGRESS")
    os.environ["RLHF_COURSE_PROGRESS"] = "0"
    try:
        yield
    finally:
        if shown is None:
            del os.environ["RLHF_COURSE_PROGRESS"]
        else:
            os.environ["RLHF_COURSE_PROGRESS"] = shown


def trained_with(exercise_id: str, fn: Callable, validate: Callable, train: Callable):
    """``(train() with the reference, train() with fn plugged in)``, each on a fresh tiny model, quietly."""
    with no_progress_bars():
        want = train()
        registry.plug_in(exercise_id, fn, validate)
        try:
            got = train()
        finally:
            registry.reset(exercise_id)
    return got, want


def sgd(model, lr: float = 0.5):
    return torch.optim.SGD(model.parameters(), lr=lr)


def accelerator():
    return distributed.accelerator()


# --- the common mistakes of an optimizer step, as variants of one ------------------------------------
def step_variant(loss_of: Callable, *, clear: bool = True, clip: bool = True, weighted: bool = True) -> Callable:
    """An update ``fn(model, optimizer, accelerator, *inputs, weight, max_grad_norm, **options)`` that computes
    ``loss_of(model, *inputs, **options)`` and steps with the common mistakes switched on that the flags say."""

    def update(model, optimizer, accel, *inputs, weight=1.0, max_grad_norm=1.0, **options):
        loss = loss_of(model, *inputs, **options)
        if clear:
            optimizer.zero_grad()
        accel.backward(loss * weight if weighted else loss)
        if clip:
            accel.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        return loss.detach()

    return update


STEP_MISTAKES = {
    "the gradients of the earlier steps were still in the parameters: clear them (optimizer.zero_grad()) before "
    "each backward pass": {"clear": False},
    "the gradient was not clipped before the step: call accelerator.clip_grad_norm_(parameters, max_grad_norm) "
    "after the backward pass and before optimizer.step()": {"clip": False},
    "the loss was not scaled by weight before the backward pass: back-propagate loss * weight": {"weighted": False},
}
