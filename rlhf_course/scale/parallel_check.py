"""One process or several, the same training run: a check that data parallelism changes nothing.

A few steps of every trainer from the shipped base model (SFT, the reward model, DPO, REINFORCE, GRPO, PPO),
of TRL's SFTTrainer through the bridge and of SFT with LoRA adapters, plus SFT and PPO runs interrupted and
resumed from their checkpoints. Run it in one process and under a launcher with several
(``rlhf-course parallel-check``, then ``accelerate launch --multi_gpu --num_processes 2 -m rlhf_course.cli
parallel-check``): the numbers agree to float rounding, because the processes split each global batch and
DDP averages their weighted gradients (``distributed``). The odd numbers of SFT demonstrations and of comparisons leave a last batch of one row,
so some processes get none. ``tests/test_distributed.py`` and lesson 08 compare the two.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

from rlhf_course.algorithms import dpo, grpo, policy_gradient, ppo, reward_model, rollouts, sft
from rlhf_course.core import distributed, models
from rlhf_course.scale import trl_bridge
from rlhf_course.simulation import data, feedback, human, world


def run(out: str | Path, steps: int = 16, updates: int = 2, batch: int = 16, seed: int = 0) -> dict:
    """Every process runs it; the main process writes ``out/summary.json`` (the dict returned) and
    ``out/ppo_policy``. ``steps`` SFT steps (a quarter as many for reward and DPO), ``updates`` of PPO, GRPO
    and REINFORCE, on global batches of ``batch`` rows."""
    out = Path(out)
    tok, model = models.load_tokenizer(models.BASE_MODEL_DIR), models.load_model(models.BASE_MODEL_DIR)
    processes = distributed.processes()
    summary = {"processes": processes.num_processes}
    if processes.is_main_process:  # checkpoints of an earlier check would be resumed instead of interrupted
        for stage in ("sft", "ppo"):
            shutil.rmtree(out / f"{stage}_checkpoint", ignore_errors=True)
    processes.wait_for_everyone()
    sft_config = sft.SFTConfig(
        epochs=1, batch_size=batch, max_examples=batch * steps + 1, warmup_steps=1, seed=seed, checkpoint_every=2
    )
    summary["sft"] = sft.train_sft(model, tok, data.sft_dataset("train"), sft_config).losses

    class Interrupted(Exception):
        pass

    def interrupt(row):  # every process stops at the same step, after the checkpoint of the step before
        if row["step"] == 4:
            raise Interrupted

    try:
        sft.train_sft(
            models.load_model(models.BASE_MODEL_DIR),
            tok,
            data.sft_dataset("train"),
            sft_config,
            interrupt,
            out / "sft_checkpoint",
        )
    except Interrupted:
        taken = []  # the steps the resumed run takes itself
        summary["sft_resumed"] = sft.train_sft(
            models.load_model(models.BASE_MODEL_DIR),
            tok,
            data.sft_dataset("train"),
            sft_config,
            taken.append,
            out / "sft_checkpoint",
        ).losses
        summary["sft_resumed_at"] = taken[0]["step"]
    comparisons = feedback.automatic_comparisons(world.generate_tasks("train", 6, seed=seed + 1), seed=seed)
    comparisons = comparisons[: batch * (steps // 4) + 1]
    reward = reward_model.build(models.BASE_MODEL_DIR, seed=seed)
    weights = [1.0 + i % 3 for i in range(len(comparisons))]
    summary["reward"] = reward_model.train(
        reward,
        tok,
        comparisons,
        None,
        reward_model.RewardConfig(epochs=1, batch_size=batch, seed=seed),
        weights=weights,
    ).losses
    model.eval()

    def fresh():  # the SFT model again, for each trainer's policy and its frozen reference
        return copy.deepcopy(model)

    summary["dpo"] = dpo.train_dpo(
        fresh(), fresh(), tok, comparisons, dpo.DPOConfig(epochs=1, batch_size=batch, seed=seed)
    ).history
    tasks = world.generate_tasks("train", 10, seed=seed)

    def scorer(tasks, responses):
        # A fixed, graded reward (the hidden gold score): a reward model trained here would differ between the
        # runs by the rounding that Adam turns into steps on weights whose gradient is almost zero.
        return [human.gold_score(t, r) for t, r in zip(tasks, responses)]

    summary["pg"] = policy_gradient.train_pg(
        fresh(),
        fresh(),
        scorer,
        tok,
        tasks,
        policy_gradient.PGConfig(updates=updates, batch_size=batch, max_new_tokens=16, lr=1e-4, seed=seed),
    ).history
    summary["grpo"] = grpo.train_grpo(
        fresh(),
        fresh(),
        scorer,
        tok,
        tasks,
        grpo.GRPOConfig(
            updates=updates,
            prompts_per_update=batch // 4,
            group_size=4,
            minibatch_size=batch // 2,
            max_new_tokens=16,
            lr=1e-4,
            seed=seed,
        ),
    ).history
    ppo_config = ppo.PPOConfig(
        updates=updates,
        batch_size=batch,
        minibatch_size=batch // 2,
        ppo_epochs=2,
        max_new_tokens=16,
        lr=1e-4,
        early_stop_kl=None,
        seed=seed,
        checkpoint_every=1,
    )
    policy = ppo.PolicyWithValue(fresh())
    result = ppo.train_ppo(policy, fresh(), scorer, tok, tasks, ppo_config)
    summary["ppo"], summary["ppo_samples"] = result.history, result.samples
    lone = rollouts.collect(policy.lm, fresh(), scorer, tok, tasks[:1], seed=seed)  # fewer tasks than processes
    summary["one_task"] = [lone.responses, lone.scores.tolist()]
    # stopped after one update, then resumed from its checkpoint
    ppo.train_ppo(
        ppo.PolicyWithValue(fresh()),
        fresh(),
        scorer,
        tok,
        tasks,
        dataclasses.replace(ppo_config, updates=1),
        checkpoint_dir=out / "ppo_checkpoint",
    )
    taken = []
    summary["ppo_resumed"] = ppo.train_ppo(
        ppo.PolicyWithValue(fresh()), fresh(), scorer, tok, tasks, ppo_config, taken.append, out / "ppo_checkpoint"
    ).history
    summary["ppo_resumed_at"] = taken[0]["update"]
    # and TRL's SFTTrainer through the bridge: accelerate splits its global batch in the same way
    demos = data.sft_dataset("train").to_list()[:64]
    trainer = trl_bridge.sft_trainer(
        models.load_model(models.BASE_MODEL_DIR),
        tok,
        demos,
        out / "trl",
        batch // processes.num_processes,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-3,
    )
    trainer.train()
    summary["trl_sft"] = {
        "processes": trainer.accelerator.num_processes,
        "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
    }
    # and SFT of LoRA adapters with gradient checkpointing: only the adapters have gradients to sum
    memory = models.MemoryConfig(gradient_checkpointing=True, lora_rank=4)
    lora = models.load_model(models.BASE_MODEL_DIR, memory=memory)
    summary["sft_lora"] = sft.train_sft(
        lora, tok, data.sft_dataset("train"), dataclasses.replace(sft_config, max_examples=batch * 6 + 1)
    ).losses
    if processes.is_main_process:
        policy.save(tok, out / "ppo_policy")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    processes.wait_for_everyone()
    return summary
