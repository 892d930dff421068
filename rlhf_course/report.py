"""What a pipeline run measured, for people: its figures and ``DIR/report.md``, drawn from its metrics.

Kept apart from ``pipeline`` so that the lesson cache, keyed by the code the pipeline runs, survives a
change to a figure or a sentence of the report.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_course.teaching import plots

POLICY_STAGES = (
    ("pg", "Policy gradient (REINFORCE)"),
    ("ppo", "PPO"),
    ("dpo", "DPO (no reward model)"),
    ("grpo", "GRPO (verifiable reward, no reward model)"),
)


def draw_plots(out: Path, metrics: dict) -> None:
    """The PNG files ``report.md`` shows, for the stages in ``metrics``."""
    if "sft" in metrics:
        m = metrics["sft"]
        plots.save(plots.loss_curve(m["losses"], "SFT loss (response tokens)"), out / "sft_loss.png")
        plots.save(plots.accuracy_by_family(m["base_by_family"], m["by_family"]), out / "sft_accuracy.png")
    if "reward" in metrics:
        m = metrics["reward"]
        plots.save(plots.validation_curve(m["validation_curve"], m["noise_ceiling"]), out / "reward_validation.png")
        plots.save(plots.calibration(m["calibration"]), out / "reward_calibration.png")
    for name, _ in POLICY_STAGES:
        if name in metrics:
            plots.save(plots.training_curves(metrics[name]["history"], title=name.upper()), out / f"{name}_curves.png")
    if any(name in metrics for name in ("best_of_n", "dpo", "grpo")):
        plots.save(plots.frontier(metrics), out / "frontier.png")


def write(out: Path, metrics: dict) -> Path:
    """``out/report.md`` and its figures: every stage's numbers with their standard errors."""
    draw_plots(out, metrics)
    lines = ["# rlhf-course pipeline report", ""]
    if "sft" in metrics:
        m = metrics["sft"]
        lines += [
            "## Instruction tuning (SFT)",
            "",
            f"Exact match on {m['test_prompts']} held-out test prompts: base model **{m['base_accuracy']:.3f}**, "
            f"after SFT **{m['accuracy']:.3f}** ({m['seconds']:.0f} s, {m['train_steps']} steps).",
            "",
            "| family | base | SFT |",
            "|---|---|---|",
        ]
        lines += [f"| {f} | {m['base_by_family'].get(f, 0):.2f} | {a:.2f} |" for f, a in m["by_family"].items()]
        lines += [
            "",
            f"Translation BLEU: {m['base_bleu']:.1f} -> {m['bleu']:.1f}. "
            f"Mean gold score: {m['base_gold']:.3f} -> {m['gold']:.3f}.",
            "",
            "![SFT loss](sft_loss.png)",
            "",
            "![accuracy by family](sft_accuracy.png)",
            "",
        ]
    if "reward" in metrics:
        m = metrics["reward"]
        lines += [
            "## Reward model",
            "",
            f"{m['train_comparisons']} labeled comparisons (after {m['automatic_comparisons']} automatic ones), "
            f"{m['seconds']:.0f} s. On {m['test_comparisons']} held-out comparisons:",
            "",
            "| measure | value |",
            "|---|---|",
            f"| accuracy against the labels | {m['accuracy']:.3f} |",
            f"| noise ceiling (labels against gold) | {m['noise_ceiling']:.3f} |",
            f"| accuracy against the gold ordering | {m['gold_accuracy']:.3f} |",
            f"| accuracy on pairs differing only in correctness | {m['correctness_accuracy']:.3f} |",
            f"| Spearman correlation with the gold score (pooled) | {m['gold_spearman']:.3f} |",
            f"| the same within each prompt's samples | {m['gold_spearman_within_prompt']:.3f} |",
            "",
            "![validation accuracy](reward_validation.png)",
            "",
            "![calibration](reward_calibration.png)",
            "",
        ]
    for name, title in POLICY_STAGES:
        if name in metrics:
            m = metrics[name]
            lines += [
                f"## {title}",
                "",
                f"{m['test_samples']} sampled replies to held-out prompts, before and after ({m['seconds']:.0f} s):",
                "",
                "| measure | SFT | after |",
                "|---|---|---|",
            ]

            def cell(key):  # a value with its standard error over prompts, where the stage measured one
                se = m.get(key + "_se")
                return f"{m[key]:.3f}" + (f" ± {se:.3f}" if se is not None else "")

            lines += [
                f"| {label} | {cell(key + '_before')} | {cell(key + '_after')} |"
                for key, label in (
                    ("gold", "mean gold score (sampled)"),
                    ("accuracy", "exact match (sampled)"),
                    ("proxy_reward", "reward-model score (the proxy)"),
                    ("greedy_gold", "mean gold score (greedy)"),
                    ("greedy_accuracy", "exact match (greedy)"),
                )
            ]
            kl_se = f" ± {m['kl_se']:.2f}" if "kl_se" in m else ""
            lines += [
                "",
                f"KL to the SFT model: {m['kl']:.2f}{kl_se} nats per reply (± one standard error over prompts).",
                "",
                f"![{name} curves]({name}_curves.png)",
                "",
            ]
    if "best_of_n" in metrics:
        m = metrics["best_of_n"]
        lines += [
            "## Best-of-n",
            "",
            f"Held-out prompts, n samples from the SFT model, the reward model's favourite kept "
            f"({m['seconds']:.0f} s):",
            "",
            "| n | KL estimate (nats) | KL bound | gold | exact match | proxy |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['n']} | {r['kl']:.2f} | {r.get('kl_bound', float('nan')):.2f} | {r['gold']:.3f} | {r['accuracy']:.3f} | "
            f"{r['proxy_reward']:.3f} |"
            for r in m["curve"]
        ]
        lines += [""]
    if any(name in metrics for name in ("best_of_n", "dpo", "grpo")):
        lines += ["## Gold score against KL", "", "![frontier](frontier.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
