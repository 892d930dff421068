"""The main job: `rlhf-course pipeline` runs the course's stages in order and writes what they measured.

Each stage reads what earlier stages left in the output directory, writes its own artifacts there,
and returns a dict of metrics that lands in ``DIR/metrics.json`` under the stage's name. Metrics of
stages run earlier are kept, so stages can be run one at a time. ``DIR/report.md`` shows the numbers
and the plots.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

from rlhf_course import data, evaluation, models, plots, runtime, world
from rlhf_course.sft import SFTConfig, train_sft


@dataclass
class PipelineConfig:
    """``seed`` seeds every stage's training (the task world keeps ``data.seed``, so runs share test prompts)."""

    base_model: Path = models.BASE_MODEL_DIR
    seed: int = 0
    data: data.DataConfig = field(default_factory=data.DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)


def held_out_tasks(config: PipelineConfig, split: str = "test") -> list[world.Task]:
    return world.generate_tasks(split, config.data.eval_per_family, config.data.seed)


def stage_sft(out: Path, config: PipelineConfig) -> dict:
    """Evaluate the base model, fine-tune it on demonstrations, evaluate again."""
    start = time.time()
    runtime.seed_everything(config.seed)
    tok = models.load_tokenizer(config.base_model)
    model = models.load_model(config.base_model)
    tasks = held_out_tasks(config)
    before = evaluation.evaluate(model, tok, tasks)
    result = train_sft(model, tok, data.sft_dataset("train", config.data), dataclasses.replace(config.sft, seed=config.seed))
    after = evaluation.evaluate(model, tok, tasks)
    models.save(model, tok, out / "sft_model")
    plots.loss_curve(result.losses, "SFT loss (response tokens)").savefig(out / "sft_loss.png", dpi=100)
    plots.accuracy_by_family(before.by_family, after.by_family).savefig(out / "sft_accuracy.png", dpi=100)
    return {
        "base_accuracy": before.accuracy,
        "accuracy": after.accuracy,
        "base_by_family": before.by_family,
        "by_family": after.by_family,
        "base_bleu": before.bleu,
        "bleu": after.bleu,
        "base_gold": before.gold,
        "gold": after.gold,
        "test_prompts": len(tasks),
        "train_steps": result.steps,
        "final_loss": sum(result.losses[-20:]) / len(result.losses[-20:]),
        "seconds": time.time() - start,
    }


STAGES = {"sft": stage_sft}


def write_report(out: Path, metrics: dict) -> Path:
    lines = ["# rlhf-course pipeline report", ""]
    if "sft" in metrics:
        m = metrics["sft"]
        lines += ["## Instruction tuning (SFT)", "",
                  f"Exact match on {m['test_prompts']} held-out test prompts: base model **{m['base_accuracy']:.3f}**, "
                  f"after SFT **{m['accuracy']:.3f}** ({m['seconds']:.0f} s, {m['train_steps']} steps).", "",
                  "| family | base | SFT |", "|---|---|---|"]
        lines += [f"| {f} | {m['base_by_family'].get(f, 0):.2f} | {a:.2f} |" for f, a in m["by_family"].items()]
        lines += ["", f"Translation BLEU: {m['base_bleu']:.1f} -> {m['bleu']:.1f}. "
                      f"Mean gold score: {m['base_gold']:.3f} -> {m['gold']:.3f}.", "",
                  "![SFT loss](sft_loss.png)", "", "![accuracy by family](sft_accuracy.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run(out: Path, stages: list[str], config: PipelineConfig = PipelineConfig()) -> dict:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for stage in STAGES:  # always in course order, whatever order they were asked in
        if stage in stages:
            print(f"== stage {stage} ==")
            metrics[stage] = STAGES[stage](out, config)
            tmp = metrics_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
            tmp.replace(metrics_path)
    write_report(out, metrics)
    return metrics
