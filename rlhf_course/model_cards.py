"""Model cards (Mitchell et al. 2019): a ``README.md`` beside each model a pipeline run trained.

A card tells whoever picks the model up what they need before using it: what it is, what it is for and
not for, what it learned from and from whom, how it was measured (on held-out prompts, each figure with its
standard error where the run measured one) and where it fails. Every figure is read from the run's
``metrics.json``; the sentences around them are the same for every run. ``README.md`` is where the Hugging
Face Hub looks for a model's card, so a model directory with its card is ready to share.

Kept apart from ``pipeline``, like ``report``, so that the lesson cache survives a change to a card's wording.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from safetensors import safe_open

# stage -> (its model directory in a run, what the model is)
STAGES = {
    "sft": ("sft_model", "The instruction-tuned (SFT) policy"),
    "reward": ("reward_model", "The reward model"),
    "pg": ("pg_model", "The policy trained by REINFORCE against the reward model"),
    "ppo": ("ppo_model", "The policy trained by PPO against the reward model"),
    "dpo": ("dpo_model", "The policy trained by DPO on the labelers' comparisons"),
    "grpo": ("grpo_model", "The policy trained by GRPO against a verifier of the answers"),
}
TRAINING_SIGNAL = {
    "pg": "the reward model's score of each sampled reply, minus a KL penalty to the SFT model",
    "ppo": "the reward model's score of each sampled reply, minus a KL penalty to the SFT model",
    "dpo": "the labelers' comparisons directly, with no reward model (beta sets how far it may move from SFT)",
    "grpo": "a verifier that checks each sampled reply's answer, with no reward model, and a KL penalty",
}
WEAK = 0.75  # a family measured below this accuracy is listed as a weakness
NAMES = {"gpt2": "GPT-2", "llama": "Llama"}  # config.json's model_type, as people write it


def architecture(model_dir: Path) -> str:
    """One line from the model's config and weights: layers, width, parameters, context."""
    config = json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        parameters = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return (
        f"a {NAMES.get(config['model_type'], config['model_type'])} decoder of {config['n_layer']} layers, width {config['n_embd']}, "
        f"{parameters:,} parameters, a vocabulary of {config['vocab_size']:,} and a context of "
        f"{config['n_positions']} tokens"
    )


def _with_se(value: float, se: float | None) -> str:
    return f"{value:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def _binomial(value: float, n: int) -> str:
    return _with_se(value, (value * (1 - value) / n) ** 0.5)


def _weak(by_family: dict[str, float], what: str) -> list[str]:
    weak = sorted((a, f) for f, a in by_family.items() if a < WEAK)
    if not weak:
        return [f"- No task family measured below {WEAK} {what}."]
    listed = ", ".join(f"{f} ({a:.3f})" for a, f in weak)
    return [f"- Weakest where {what} is below {WEAK}: {listed}."]


def _sft(m: dict) -> list[str]:
    return [
        "## Training data",
        "",
        "Demonstrations of the world's tasks written by simulated contractors in several styles, some of them "
        f"with wrong answers; {m['train_steps']} optimizer steps, final loss {m['final_loss']:.2f} on the reply tokens.",
        "",
        f"## Evaluation: {m['test_prompts']} held-out test prompts, greedy replies",
        "",
        "| measure | base model | this model |",
        "|---|---|---|",
        f"| exact match | {_with_se(m['base_accuracy'], m.get('base_accuracy_se'))} | "
        f"{_with_se(m['accuracy'], m.get('accuracy_se'))} |",
        f"| mean gold score | {_with_se(m['base_gold'], m.get('base_gold_se'))} | {_with_se(m['gold'], m.get('gold_se'))} |",
        "",
        "| task family | exact match, base | exact match, this model |",
        "|---|---|---|",
        *[f"| {f} | {m['base_by_family'].get(f, 0):.2f} | {a:.2f} |" for f, a in sorted(m["by_family"].items())],
        "",
        "## Known limitations",
        "",
        *_weak(m["by_family"], "exact match"),
        "- It imitates its demonstrations, wrong answers and verbose styles included: it is the starting point "
        "that the reward model and the policies below improve on.",
    ]


def _reward(m: dict) -> list[str]:
    n = m["test_comparisons"]
    labelers = sorted(m["labeler_gold_agreement"])
    return [
        "## Training data",
        "",
        f"{m['automatic_comparisons']:,} automatic comparisons (a verified answer against the same reply with a wrong "
        f"one), then {m['train_comparisons']:,} comparisons of the SFT model's samples judged by a team of simulated "
        "labelers. Their reliability, as agreement with the gold ordering (known only to the simulator) and as "
        "estimated from their agreement with each other on pairs judged twice:",
        "",
        "| labeler | agrees with gold | estimated from agreement |",
        "|---|---|---|",
        *[
            f"| {name} | {m['labeler_gold_agreement'][name]:.2f} | {m['labeler_reliability_estimate'][name]:.2f} |"
            for name in labelers
        ],
        "",
        f"## Evaluation: {n:,} held-out comparisons (± binomial standard error)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| accuracy against the labels | {_binomial(m['accuracy'], n)} |",
        f"| noise ceiling: the labels against the gold ordering | {_binomial(m['noise_ceiling'], n)} |",
        f"| accuracy against the gold ordering | {_binomial(m['gold_accuracy'], n)} |",
        f"| on pairs that differ only in correctness | {m['correctness_accuracy']:.3f} |",
        f"| Spearman correlation with the gold score, within each prompt | {m['gold_spearman_within_prompt']:.3f} |",
        "",
        "The run did not record how many pairs the last two rows rest on, so they have no standard error here.",
        "",
        "| task family | accuracy on pairs that differ only in correctness |",
        "|---|---|",
        *[f"| {f} | {a:.2f} |" for f, a in sorted(m["correctness_by_family"].items())],
        "",
        "## Known limitations",
        "",
        *_weak(m["correctness_by_family"], "its accuracy on right-against-wrong pairs"),
        "- It is a proxy for what the labelers want, learned from the SFT model's samples. A policy optimised "
        "against it finds its blind spots, and it is less accurate on a new policy's samples than on the SFT "
        "model's (lessons 05 and 07 measure both).",
        "- Its rewards are normalised to mean 0 and standard deviation 1 on the SFT model's samples; only "
        "differences between replies to the same prompt were trained.",
    ]


def _policy(stage: str, m: dict) -> list[str]:
    rows = (
        ("gold", "mean gold score (sampled)"),
        ("accuracy", "exact match (sampled)"),
        ("proxy_reward", "reward-model score (the proxy)"),
        ("greedy_gold", "mean gold score (greedy)"),
        ("greedy_accuracy", "exact match (greedy)"),
    )
    after = m.get("by_family_after", {})
    lines = [
        "## Training signal",
        "",
        f"Started from the SFT model and trained on {TRAINING_SIGNAL[stage]}.",
        "",
        f"## Evaluation: {m['test_samples']:,} sampled replies to held-out prompts, and one greedy reply per prompt",
        "",
        "± is a standard error over prompts; the reward-model score was recorded without one.",
        "",
        "| measure | SFT model | this model |",
        "|---|---|---|",
        *[
            f"| {label} | {_with_se(m[key + '_before'], m.get(key + '_se_before'))} | "
            f"{_with_se(m[key + '_after'], m.get(key + '_se_after'))} |"
            for key, label in rows
            if key + "_after" in m
        ],
        "",
        f"KL to the SFT model: {_with_se(m['kl'], m.get('kl_se'))} nats per reply.",
        "",
    ]
    if after:
        before = m.get("by_family_before", {})
        lines += [
            "| task family | exact match, SFT model | exact match, this model |",
            "|---|---|---|",
            *[f"| {f} | {before.get(f, 0):.2f} | {a:.2f} |" for f, a in sorted(after.items())],
            "",
        ]
    gold_gain = m["gold_after"] - m["gold_before"]
    proxy_gain = m["proxy_reward_after"] - m["proxy_reward_before"]
    lines += [
        "## Known limitations",
        "",
        *(_weak(after, "exact match of sampled replies") if after else []),
        f"- Over training the gold score moved by {gold_gain:+.3f} (on its 0-1 scale) and the reward model's score "
        f"by {proxy_gain:+.3f} (in standard deviations of its score on the SFT model's samples). A proxy that keeps "
        "rising while gold stalls or falls is the first sign of over-optimisation.",
    ]
    if "refusal" in after:
        lines.append(
            f"- {after['refusal']:.2f} of its sampled replies to the world's held-out unsafe requests were exactly "
            "the refusal. Requests phrased in ways the world never phrases them were not tested by the pipeline "
            "(lesson 07 rewords them)."
        )
    return lines


NOT_MEASURED = [
    "## Not measured",
    "",
    "- Anything outside the course's simulated world: the model knows only its eight task families and "
    "its own small vocabulary, and it is **not for any real use**.",
    "- Bias between groups of people: not measured for this run. Lesson 07 (section 8) shows how a labeling team's "
    "norms carry over to users who do not share them.",
]


def card(out: Path, stage: str, metrics: dict) -> str:
    """The model card of one stage of the run in ``out``, as Markdown."""
    if stage not in STAGES:
        raise ValueError(f"no model card for stage {stage!r}; stages with a model: {sorted(STAGES)}")
    if stage not in metrics:
        raise ValueError(f"the run in {out} has no metrics for stage {stage!r}; it ran {sorted(metrics)}")
    directory, what = STAGES[stage]
    m = metrics[stage]
    body = _sft(m) if stage == "sft" else _reward(m) if stage == "reward" else _policy(stage, m)
    lines = [
        "---",
        "library_name: transformers",
        "tags: [rlhf-course, simulated-world, teaching]",
        "---",
        "",
        f"# {what}: model card",
        "",
        f"{what}, {architecture(out / directory)}, trained by the `{stage}` stage of `rlhf-course pipeline`.",
        "**Intended use**: teaching and experiments in the course's simulated world. Every figure below was "
        "measured by the same run.",
        "",
        *body,
        "",
        *NOT_MEASURED,
    ]
    return "\n".join(lines) + "\n"


def write(out: Path, metrics: dict) -> list[Path]:
    """``README.md`` in the directory of every model the run in ``out`` trained; returns their paths."""
    written = []
    for stage, (directory, _) in STAGES.items():
        if stage in metrics and (out / directory / "config.json").is_file():
            path = out / directory / "README.md"
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text(card(out, stage, metrics))
            tmp.replace(path)
            written.append(path)
    return written
