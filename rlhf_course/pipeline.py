"""The main job: `rlhf-course pipeline` runs the course's stages in order and writes what they measured.

Each stage reads what earlier stages left in the output directory, writes its own artifacts there,
and returns a dict of metrics that lands in ``DIR/metrics.json`` under the stage's name. Metrics of
stages run earlier are kept, so stages can be run one at a time. The stages draw nothing: ``report``
turns the metrics into figures and ``DIR/report.md``, so the lesson cache (keyed by the code the pipeline
imports) survives a change to a figure.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_course.algorithms import best_of_n, reward_model, rollouts
from rlhf_course.algorithms.dpo import DPOConfig, train_dpo
from rlhf_course.algorithms.grpo import GRPOConfig, train_grpo
from rlhf_course.algorithms.policy_gradient import PGConfig, train_pg
from rlhf_course.algorithms.ppo import PolicyWithValue, PPOConfig, train_ppo
from rlhf_course.algorithms.reward_model import RewardConfig
from rlhf_course.algorithms.sft import SFTConfig, train_sft
from rlhf_course.analysis import evaluation, reward_evaluation
from rlhf_course.core import distributed, models, resume, runtime
from rlhf_course.simulation import data, feedback, world


@dataclass
class FeedbackConfig:
    """What the reward stage collects: K samples per prompt, all K(K-1)/2 pairs judged by the team."""

    prompts_per_family: int = 100
    samples_per_prompt: int = 8
    temperature: float = 1.0
    test_samples_per_prompt: int = 4
    automatic_per_family: int = 1000  # automatic comparisons for preference-model pretraining; 0 skips it
    replay_per_family: int = (
        300  # fresh automatic comparisons mixed into the human ones, so correctness is not forgotten
    )


@dataclass
class PipelineConfig:
    """``seed`` seeds every stage's training (the task world keeps ``data.seed``, so runs share test prompts)."""

    base_model: Path = models.BASE_MODEL_DIR
    seed: int = 0
    data: data.DataConfig = field(default_factory=data.DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rl_prompts_per_family: int = 200  # training prompts the policy-gradient stages draw from
    eval_samples_per_prompt: int = 4  # samples per held-out prompt when a policy is evaluated
    pg: PGConfig = field(default_factory=PGConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    best_of_n: int = 16  # samples per held-out prompt for best-of-n; the curve covers n = 1, 2, 4, ... up to it
    memory: models.MemoryConfig = field(default_factory=models.MemoryConfig)  # for every model a stage trains


def held_out_tasks(config: PipelineConfig, split: str = "test") -> list[world.Task]:
    return world.generate_tasks(split, config.data.eval_per_family, config.data.seed)


def stage_sft(out: Path, config: PipelineConfig, on_step=None) -> dict:
    """Evaluate the base model, fine-tune it on demonstrations, evaluate again. With ``sft.checkpoint_every``
    set, an interrupted run resumes where it stopped when the stage runs again."""
    start = time.time()
    runtime.seed_everything(config.seed)
    tok = models.load_tokenizer(config.base_model)
    model = models.load_model(config.base_model, memory=config.memory)
    tasks = held_out_tasks(config)
    before = evaluation.evaluate(model, tok, tasks)
    with resume.stage_checkpoint(out, "sft", config.sft.checkpoint_every) as checkpoint:
        result = train_sft(
            model,
            tok,
            data.sft_dataset("train", config.data),
            dataclasses.replace(config.sft, seed=config.seed),
            on_step,
            checkpoint,
        )
        after = evaluation.evaluate(model, tok, tasks)
        models.save(model, tok, out / "sft_model")
    return {
        "base_accuracy": before.accuracy,
        "base_accuracy_se": before.accuracy_se,
        "accuracy": after.accuracy,
        "accuracy_se": after.accuracy_se,
        "base_by_family": before.by_family,
        "by_family": after.by_family,
        "base_bleu": before.bleu,
        "bleu": after.bleu,
        "base_gold": before.gold,
        "base_gold_se": before.gold_se,
        "gold": after.gold,
        "gold_se": after.gold_se,
        "test_prompts": len(tasks),
        "train_steps": result.steps,
        "final_loss": sum(result.losses[-20:]) / len(result.losses[-20:]),
        "losses": result.losses,
        "seconds": time.time() - start,
    }


def require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run the {stage!r} stage first "
            f"(rlhf-course pipeline --out {path.parent} --stages {stage})"
        )
    return path


def stage_reward(out: Path, config: PipelineConfig, on_step=None) -> dict:
    """Collect comparisons of SFT samples, train the reward model on them, evaluate it on held-out prompts."""
    start = time.time()
    sft_dir = require(out / "sft_model", "sft")
    tok, policy = models.load_tokenizer(sft_dir), models.load_model(sft_dir)
    fb = config.feedback
    train_tasks = world.generate_tasks("train", fb.prompts_per_family, config.data.seed)
    test_tasks = held_out_tasks(config)
    samples = feedback.sample_candidates(policy, tok, train_tasks, fb.samples_per_prompt, fb.temperature, config.seed)
    test_samples = feedback.sample_candidates(
        policy, tok, test_tasks, fb.test_samples_per_prompt, fb.temperature, config.seed + 1
    )
    raw = feedback.judge_pairs(train_tasks, samples, seed=config.seed)
    test_raw = feedback.judge_pairs(test_tasks, test_samples, seed=config.seed + 1, double_share=0.0)
    rows = feedback.to_preferences(raw)
    files = out / "feedback"
    data.save_jsonl(raw, files / "comparisons_raw.jsonl")
    data.save_jsonl(rows, files / "preferences.jsonl")
    data.save_jsonl(test_raw, files / "test_comparisons_raw.jsonl")
    for kind in ("rating", "thumbs_up"):
        data.save_jsonl(
            feedback.single_judgments(train_tasks, samples, kind, seed=config.seed), files / f"{kind}s_raw.jsonl"
        )
    feedback_seconds = time.time() - start

    reward_config = dataclasses.replace(config.reward, seed=config.seed)
    model = reward_model.build(sft_dir, seed=config.seed, memory=config.memory)
    automatic = feedback.automatic_comparisons(
        world.generate_tasks("train", fb.automatic_per_family, config.data.seed + 1), seed=config.seed
    )
    if automatic:
        reward_model.train(model, tok, automatic, None, dataclasses.replace(reward_config, epochs=1))
    models.save(model, None, out / "reward_model_pretrained")  # before any human comparison, for experiments
    replay = feedback.automatic_comparisons(
        world.generate_tasks("train", fb.replay_per_family, config.data.seed + 2), seed=config.seed + 1
    )
    val_rows = feedback.to_preferences(test_raw[: len(test_raw) // 4])
    result = reward_model.train(model, tok, rows + replay, val_rows, reward_config, on_step=on_step)
    every = max(1, fb.samples_per_prompt * len(train_tasks) // 2048)  # about 2,000 samples pin mean and std
    reward_model.normalise(
        model,
        tok,
        [t.prompt for t, s in zip(train_tasks, samples) for _ in s][::every],
        [r for s in samples for r in s][::every],
    )
    models.save(model, tok, out / "reward_model")
    training_seconds = time.time() - start - feedback_seconds

    metrics = reward_evaluation.evaluate(model, tok, test_raw, test_tasks, test_samples)
    return {
        **metrics,
        "train_comparisons": len(rows),
        "automatic_comparisons": len(automatic),
        "replayed_automatic_comparisons": len(replay),
        "train_noise_ceiling": feedback.noise_ceiling(rows),
        "labeler_gold_agreement": feedback.agreement_by_labeler(raw),
        "labeler_reliability_estimate": feedback.reliability_from_agreement(raw),
        "sample_correct_share": sum(world.is_correct(t, r) for t, s in zip(train_tasks, samples) for r in s)
        / sum(map(len, samples)),
        "feedback_seconds": feedback_seconds,  # sampling and judging
        "training_seconds": training_seconds,  # both phases and the normalisation
        "final_loss": sum(result.losses[-20:]) / len(result.losses[-20:]),
        "validation_curve": result.val_accuracy,
        "seconds": time.time() - start,
    }


def _policy_stage(out: Path, config: PipelineConfig, name: str, train) -> dict:
    """Shared frame of the stages that train a policy: load, evaluate the SFT policy, train, evaluate again.

    ``train(sft_dir, reference, tokenizer, scorer, stage_config)`` returns the trained model and its result
    (its trainer hands each step's row to the stage's ``on_step``);
    ``scorer`` is the reward model's, which the RL stages also train against.
    Evaluation samples ``eval_samples_per_prompt`` replies per held-out prompt at temperature 1 (the
    policy that RL optimises; the same prompts and seed for every method), and also decodes greedily.
    """
    start = time.time()
    sft_dir = require(out / "sft_model", "sft")
    tok, reference = models.load_tokenizer(sft_dir), models.load_model(sft_dir)
    scorer = rollouts.reward_model_scorer(reward_model.load(require(out / "reward_model", "reward")), tok)
    test = held_out_tasks(config)
    stage_config = dataclasses.replace(getattr(config, name), seed=config.seed)

    def measure(model) -> dict:
        sampled = evaluation.evaluate_policy(
            model,
            reference,
            tok,
            test,
            scorer,
            temperature=1.0,
            samples_per_prompt=config.eval_samples_per_prompt,
            seed=10_007,
        )
        greedy = evaluation.evaluate(model, tok, test)
        return {
            **sampled,
            "greedy_gold": greedy.gold,
            "greedy_gold_se": greedy.gold_se,
            "greedy_accuracy": greedy.accuracy,
            "greedy_accuracy_se": greedy.accuracy_se,
        }

    before = measure(reference)
    runtime.seed_everything(config.seed)
    model, result = train(sft_dir, reference, tok, scorer, stage_config)
    after = measure(model)
    metrics = {
        f"{key}_{when}": m[key]
        for when, m in (("before", before), ("after", after))
        for key in (
            "gold",
            "gold_se",
            "accuracy",
            "accuracy_se",
            "greedy_gold",
            "greedy_gold_se",
            "greedy_accuracy",
            "greedy_accuracy_se",
            "proxy_reward",
            "by_family",
        )
    }
    return {
        **metrics,
        "kl": after["kl"],
        "kl_se": after["kl_se"],
        "test_samples": after["samples"],
        "history": result.history,
        "samples": getattr(result, "samples", [])[-1:],
        "train_seconds": result.seconds,
        "seconds": time.time() - start,
    }


def _rl_tasks(config: PipelineConfig) -> list[world.Task]:
    return world.generate_tasks("train", config.rl_prompts_per_family, config.data.seed)


def stage_pg(out: Path, config: PipelineConfig, on_step=None) -> dict:
    """REINFORCE with a leave-one-out baseline and a KL penalty, against the reward model."""

    def train(sft_dir, reference, tok, scorer, pg_config):
        model = models.load_model(sft_dir, memory=config.memory)
        result = train_pg(model, reference, scorer, tok, _rl_tasks(config), pg_config, on_step)
        models.save(model, tok, out / "pg_model")
        return model, result

    return _policy_stage(out, config, "pg", train)


def stage_ppo(out: Path, config: PipelineConfig, on_step=None) -> dict:
    """PPO with a value head, GAE, clipping and an adaptive KL penalty, against the reward model. With
    ``ppo.checkpoint_every`` set, an interrupted run resumes where it stopped when the stage runs again."""

    def train(sft_dir, reference, tok, scorer, ppo_config):
        policy = PolicyWithValue(models.load_model(sft_dir, memory=config.memory))
        with resume.stage_checkpoint(out, "ppo", ppo_config.checkpoint_every) as checkpoint:
            result = train_ppo(policy, reference, scorer, tok, _rl_tasks(config), ppo_config, on_step, checkpoint)
            policy.save(tok, out / "ppo_model")
        return policy.lm, result

    return _policy_stage(out, config, "ppo", train)


def stage_dpo(out: Path, config: PipelineConfig, on_step=None) -> dict:
    """DPO on the reward stage's comparisons (the same labels the reward model learned from); no reward model."""

    def train(sft_dir, reference, tok, scorer, dpo_config):
        rows = data.load_jsonl(require(out / "feedback" / "preferences.jsonl", "reward"), "preference").to_list()
        model = models.load_model(sft_dir, memory=config.memory)
        result = train_dpo(model, reference, tok, rows, dpo_config, on_step)
        models.save(model, tok, out / "dpo_model")
        return model, result

    return _policy_stage(out, config, "dpo", train)


def stage_grpo(out: Path, config: PipelineConfig, on_step=None) -> dict:
    """GRPO against the task world's verifier (1 for a correct answer, 0 otherwise); no reward model."""

    def train(sft_dir, reference, tok, scorer, grpo_config):
        model = models.load_model(sft_dir, memory=config.memory)
        result = train_grpo(model, reference, rollouts.correctness_scorer, tok, _rl_tasks(config), grpo_config, on_step)
        models.save(model, tok, out / "grpo_model")
        return model, result

    return _policy_stage(out, config, "grpo", train)


def stage_best_of_n(out: Path, config: PipelineConfig) -> dict:
    """Best-of-n against the reward model on the held-out prompts, for n = 1, 2, 4, ... up to ``best_of_n``.

    The scored samples are kept in ``best_of_n_samples.jsonl``: lesson 07 re-scores them with other reward models.
    """
    start = time.time()
    sft_dir = require(out / "sft_model", "sft")
    tok, policy = models.load_tokenizer(sft_dir), models.load_model(sft_dir)
    scorer = rollouts.reward_model_scorer(reward_model.load(require(out / "reward_model", "reward")), tok)
    test = held_out_tasks(config)
    responses, scores = best_of_n.sample_and_score(
        policy, tok, test, config.best_of_n, scorer, seed=config.seed * 7_919 + 20_011
    )
    best_of_n.save_samples(test, responses, scores, out / "best_of_n_samples.jsonl")  # lesson 07 reuses them
    ks = [2**i for i in range(config.best_of_n.bit_length()) if 2**i <= config.best_of_n]
    rows = best_of_n.curve(test, responses, scores, ks)
    return {
        "n": rows[-1]["n"],
        "gold": rows[-1]["gold"],
        "gold_before": rows[0]["gold"],
        "accuracy": rows[-1]["accuracy"],
        "accuracy_before": rows[0]["accuracy"],
        "kl": rows[-1]["kl"],
        "kl_bound": rows[-1]["kl_bound"],
        "proxy_reward": rows[-1]["proxy_reward"],
        "curve": rows,
        "seconds": time.time() - start,
    }


STAGES = {
    "sft": stage_sft,
    "reward": stage_reward,
    "pg": stage_pg,
    "ppo": stage_ppo,
    "dpo": stage_dpo,
    "grpo": stage_grpo,
    "best_of_n": stage_best_of_n,
}
TRAINING_STAGES = {"sft", "reward", "pg", "ppo", "dpo", "grpo"}  # the ones whose training steps ``on_step`` sees


def run(out: Path, stages: list[str], config: PipelineConfig = PipelineConfig(), on_step=None) -> dict:
    """Run ``stages`` into ``out``, merging their metrics into ``out/metrics.json`` as each one ends.

    ``on_step(row)`` sees every training step's metrics (a training dashboard, for one).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {list(STAGES)}")
    if distributed.world_size() > 1:  # every process would write the same files at once
        raise RuntimeError(
            f"the pipeline runs in one process, not {distributed.world_size()}: launch a script that "
            "calls sft.train_sft or ppo.train_ppo instead (see `rlhf-course parallel-check`)"
        )
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for stage in STAGES:  # always in course order, whatever order they were asked in
        if stage in stages:
            print(f"== stage {stage} ==")
            hooks = {"on_step": on_step} if stage in TRAINING_STAGES else {}
            metrics[stage] = STAGES[stage](out, config, **hooks)
            tmp = metrics_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
            tmp.replace(metrics_path)
    return metrics
