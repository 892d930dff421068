"""The `rlhf-course` command."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib


def _pretrain(args) -> int:
    from rlhf_course import pretrain

    config = pretrain.PretrainConfig(seed=args.seed)
    if args.steps is not None:
        config.steps = args.steps
    pretrain.main(Path(args.out), config)
    return 0


def _pipeline(args) -> int:
    from rlhf_course import models, pipeline

    config = pipeline.PipelineConfig(base_model=Path(args.base_model or models.BASE_MODEL_DIR), seed=args.seed)
    stages = list(pipeline.STAGES) if args.stages is None else [s.strip() for s in args.stages.split(",") if s.strip()]
    metrics = pipeline.run(Path(args.out), stages, config)
    summary = {stage: {k: v for k, v in m.items() if not isinstance(v, (dict, list))} for stage, m in metrics.items()}
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.md'}")
    return 0


def _parallel_check(args) -> int:
    """A few steps of every trainer from the shipped base model (and of TRL's SFTTrainer, and of SFT with
    LoRA adapters), and SFT and PPO runs interrupted and resumed: what each step measured, and the final PPO
    policy, written by the main process. Run it with one process and under a launcher with several; the runs
    should agree, because the processes split each global batch and sum their gradients. The odd numbers of
    SFT demonstrations and of comparisons leave a last batch of one row, so some processes get none."""
    import copy
    import dataclasses
    import shutil

    from rlhf_course import data, distributed, dpo, feedback, grpo, human, models, policy_gradient, ppo, reward_model
    from rlhf_course import rollouts, sft, trl_bridge, world

    batch, seed, out = args.batch_size, args.seed, Path(args.out)
    tok, model = models.load_tokenizer(models.BASE_MODEL_DIR), models.load_model(models.BASE_MODEL_DIR)
    summary = {"processes": distributed.world_size()}
    if distributed.is_main():  # checkpoints of an earlier check would be resumed instead of interrupted
        for stage in ("sft", "ppo"):
            shutil.rmtree(out / f"{stage}_checkpoint", ignore_errors=True)
    distributed.barrier()
    sft_config = sft.SFTConfig(epochs=1, batch_size=batch, max_examples=batch * args.steps + 1, warmup_steps=1,
                               seed=seed, checkpoint_every=2)
    summary["sft"] = sft.train_sft(model, tok, data.sft_dataset("train"), sft_config).losses

    class Interrupted(Exception):
        pass

    def interrupt(row):  # every process stops at the same step, after the checkpoint of the step before
        if row["step"] == 4:
            raise Interrupted
    try:
        sft.train_sft(models.load_model(models.BASE_MODEL_DIR), tok, data.sft_dataset("train"), sft_config, interrupt,
                      out / "sft_checkpoint")
    except Interrupted:
        taken = []  # the steps the resumed run takes itself
        summary["sft_resumed"] = sft.train_sft(models.load_model(models.BASE_MODEL_DIR), tok, data.sft_dataset("train"),
                                               sft_config, taken.append, out / "sft_checkpoint").losses
        summary["sft_resumed_at"] = taken[0]["step"]
    comparisons = feedback.automatic_comparisons(world.generate_tasks("train", 6, seed=seed + 1), seed=seed)
    comparisons = comparisons[:batch * (args.steps // 4) + 1]
    reward = reward_model.build(models.BASE_MODEL_DIR, seed=seed)
    weights = [1.0 + i % 3 for i in range(len(comparisons))]
    summary["reward"] = reward_model.train(reward, tok, comparisons, None, reward_model.RewardConfig(
        epochs=1, batch_size=batch, seed=seed), weights=weights).losses
    model.eval()

    def fresh():  # the SFT model again, for each trainer's policy and its frozen reference
        return copy.deepcopy(model)

    summary["dpo"] = dpo.train_dpo(fresh(), fresh(), tok, comparisons, dpo.DPOConfig(
        epochs=1, batch_size=batch, seed=seed)).history
    tasks = world.generate_tasks("train", 10, seed=seed)

    def scorer(tasks, responses):
        # A fixed, graded reward (the hidden gold score): a reward model trained here would differ between the
        # runs by the rounding that Adam turns into steps on weights whose gradient is almost zero.
        return [human.gold_score(t, r) for t, r in zip(tasks, responses)]

    summary["pg"] = policy_gradient.train_pg(fresh(), fresh(), scorer, tok, tasks,
                                             policy_gradient.PGConfig(updates=args.updates, batch_size=batch,
                                                                      max_new_tokens=16, lr=1e-4, seed=seed)).history
    summary["grpo"] = grpo.train_grpo(fresh(), fresh(), scorer, tok, tasks,
                                      grpo.GRPOConfig(updates=args.updates, prompts_per_update=batch // 4, group_size=4,
                                                      minibatch_size=batch // 2, max_new_tokens=16, lr=1e-4,
                                                      seed=seed)).history
    ppo_config = ppo.PPOConfig(updates=args.updates, batch_size=batch, minibatch_size=batch // 2, ppo_epochs=2,
                               max_new_tokens=16, lr=1e-4, early_stop_kl=None, seed=seed, checkpoint_every=1)
    policy = ppo.PolicyWithValue(fresh())
    result = ppo.train_ppo(policy, fresh(), scorer, tok, tasks, ppo_config)
    summary["ppo"], summary["ppo_samples"] = result.history, result.samples
    lone = rollouts.collect(policy.lm, fresh(), scorer, tok, tasks[:1], seed=seed)  # fewer tasks than processes
    summary["one_task"] = [lone.responses, lone.scores.tolist()]
    # stopped after one update, then resumed from its checkpoint
    ppo.train_ppo(ppo.PolicyWithValue(fresh()), fresh(), scorer, tok, tasks,
                  dataclasses.replace(ppo_config, updates=1), checkpoint_dir=out / "ppo_checkpoint")
    taken = []
    summary["ppo_resumed"] = ppo.train_ppo(ppo.PolicyWithValue(fresh()), fresh(), scorer, tok, tasks, ppo_config,
                                           taken.append, out / "ppo_checkpoint").history
    summary["ppo_resumed_at"] = taken[0]["update"]
    # and TRL's SFTTrainer through the bridge: accelerate splits its global batch in the same way
    demos = data.sft_dataset("train").to_list()[:64]
    trainer = trl_bridge.sft_trainer(models.load_model(models.BASE_MODEL_DIR), tok, demos, out / "trl",
                                     batch // distributed.world_size(), max_steps=4, logging_steps=1, learning_rate=1e-3)
    trainer.train()
    summary["trl_sft"] = {"processes": trainer.accelerator.num_processes,
                          "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row]}
    # and SFT of LoRA adapters with gradient checkpointing: only the adapters have gradients to sum
    memory = models.MemoryConfig(gradient_checkpointing=True, lora_rank=4)
    lora = models.load_model(models.BASE_MODEL_DIR, memory=memory)
    summary["sft_lora"] = sft.train_sft(lora, tok, data.sft_dataset("train"),
                                        dataclasses.replace(sft_config, max_examples=batch * 6 + 1)).losses
    if distributed.is_main():
        policy.save(tok, out / "ppo_policy")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps({"processes": summary["processes"], "sft_losses": summary["sft"],
                          "ppo_scores": [row["score"] for row in result.history]}))
    distributed.barrier()
    return 0


def _check(args) -> int:
    from rlhf_course import exercises

    ids = list(exercises.CATALOG) if args.id == "all" else [args.id]
    if args.id != "all" and args.id not in exercises.CATALOG:
        print(f"unknown exercise {args.id!r}; run `rlhf-course exercises` for the list", file=sys.stderr)
        return 2
    results = [exercises.check(i, args.impl) for i in ids]
    return 0 if all(r.passed for r in results) else 1


def _exercises(args) -> int:
    from rlhf_course import exercises

    print(f"{'id':<16} {'lesson':<7} {'difficulty':<11} {'file':<22} status")
    for ex in exercises.CATALOG.values():
        result = exercises.check(ex.id, args.impl, verbose=False)
        status = ("passes" if result.passed else
                  "not started" if all("not implemented" in msg for _, ok, msg in result.lines if not ok)
                  else f"{sum(ok for _, ok, _ in result.lines)}/{len(result.lines)} checks pass")
        print(f"{ex.id:<16} {ex.lesson:<7} {ex.difficulty:<11} {ex.file:<22} {status}")
    return 0


def _make_exercises(args) -> int:
    from rlhf_course import exercises

    for path in exercises.make_exercises():
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pretrain the base model on the world's plain text")
    p.add_argument("--out", default="runs/base_model", help="model directory to write")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped model's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_pretrain)

    p = sub.add_parser("pipeline", help="run the course's stages and write metrics.json and report.md")
    p.add_argument("--out", default="runs/pipeline")
    p.add_argument("--stages", help="comma-separated stages, e.g. sft,reward (default: every stage)")
    p.add_argument("--base-model", default=None, help="a local causal-LM directory (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_pipeline)

    p = sub.add_parser("parallel-check", help="a few steps of every trainer, to compare one process with several "
                       "(accelerate launch --multi_gpu --num_processes 2 -m rlhf_course.cli parallel-check)")
    p.add_argument("--out", default="runs/parallel_check")
    p.add_argument("--steps", type=int, default=16, help="SFT steps (a quarter as many for reward and DPO)")
    p.add_argument("--updates", type=int, default=2, help="PPO, GRPO and policy-gradient updates")
    p.add_argument("--batch-size", type=int, default=16, help="the global batch, split over the processes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_parallel_check)

    p = sub.add_parser("check", help="check an exercise against your code")
    p.add_argument("id", help="exercise id, or 'all'")
    p.add_argument("--impl", default=None, help="directory, .py file or module with your code (default: exercises/)")
    p.set_defaults(fn=_check)

    p = sub.add_parser("exercises", help="list the exercises and their status")
    p.add_argument("--impl", default=None)
    p.set_defaults(fn=_exercises)

    p = sub.add_parser("make-exercises", help="regenerate exercises/ from solutions/")
    p.set_defaults(fn=_make_exercises)

    args = parser.parse_args(argv)
    # the command line draws only into files; a lesson that runs a stage keeps its own (inline) backend
    matplotlib.use("Agg")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
