"""Graduating to TRL: the course's data and models handed unchanged to TRL's trainers, and each of the
course's losses next to TRL's on the very same batch.

Nothing needs converting. The course writes its data in TRL's formats (conversational prompt/completion
rows for SFT, prompt/chosen/rejected rows for preferences) and its models as ordinary Hugging Face
directories. What TRL adds is the machinery around the loss: its trainers are transformers' ``Trainer``
(accelerate, DeepSpeed and FSDP, mixed precision, logging, checkpoints). TRL 1.16 has no PPO trainer; the
course's PPO (``rlhf_course.algorithms.ppo``) fills that gap.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
from datasets import Dataset
from transformers import PrinterCallback

from rlhf_course.algorithms import dpo, reward_model, rollouts, sft
from rlhf_course.algorithms.sft import collate
from rlhf_course.core import models, runtime
from rlhf_course.core.chat import encode
from rlhf_course.simulation import world

# Tokenizing a few thousand rows takes a moment; its progress bars would only add noise to a lesson's output.
datasets.disable_progress_bars()


def _common(out: str | Path, batch_size: int) -> dict:
    """Settings every trainer shares: the course's device and precision (bf16 autocast on CUDA, float32 on
    the CPU, where TRL's default bf16 would run several times slower), and no logging integrations."""
    dev = runtime.device()
    return {
        "output_dir": str(out),
        "per_device_train_batch_size": batch_size,
        "report_to": [],
        "use_cpu": dev.type == "cpu",
        "bf16": runtime.autocast_dtype(dev) == torch.bfloat16,
        "fp16": False,
        "save_strategy": "no",
        "disable_tqdm": True,
    }


def _quiet(trainer):
    """Without a progress bar the Trainer prints every log row; they stay in ``trainer.state.log_history``."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def sft_trainer(model, tokenizer, rows: list[dict], out: str | Path, batch_size: int = 32, **settings):
    """TRL's SFTTrainer on the course's demonstrations (``data.sft_dataset`` rows), loss on the replies only."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**_common(out, batch_size), max_length=None, **settings)
    columns = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    return _quiet(
        SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(columns), processing_class=tokenizer)
    )


def reward_trainer(model, tokenizer, rows: list[dict], out: str | Path, batch_size: int = 32, **settings):
    """TRL's RewardTrainer on the course's comparisons (prompt/chosen/rejected rows), for a reward model made
    by ``reward_model.build``."""
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**_common(out, batch_size), max_length=None, **settings)
    columns = [{k: r[k] for k in ("prompt", "chosen", "rejected", "margin") if k in r} for r in rows]
    return _quiet(
        RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(columns), processing_class=tokenizer)
    )


def dpo_trainer(
    model, reference, tokenizer, rows: list[dict], out: str | Path, batch_size: int = 32, beta: float = 0.1, **settings
):
    """TRL's DPOTrainer on the course's comparisons, against ``reference`` (the frozen SFT model)."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(**_common(out, batch_size), beta=beta, max_length=None, precompute_ref_log_probs=False, **settings)
    columns = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    return _quiet(
        DPOTrainer(
            model=model,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(columns),
            processing_class=tokenizer,
        )
    )


def grpo_trainer(
    model,
    tokenizer,
    tasks: list[world.Task],
    out: str | Path,
    scorer=rollouts.correctness_scorer,
    group_size: int = 8,
    batch_size: int = 32,
    **settings,
):
    """TRL's GRPOTrainer on the course's prompts, rewarded by a course scorer ``scorer(tasks, replies)`` (by
    default the task world's verifier). ``batch_size`` counts completions: batch_size / group_size prompts."""
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions, task_index, **_):  # TRL passes the data set's other columns by name
        return scorer([tasks[i] for i in task_index], [c[0]["content"] for c in completions])

    args = GRPOConfig(**_common(out, batch_size), num_generations=group_size, **settings)
    columns = [{"prompt": t.prompt, "task_index": i} for i, t in enumerate(tasks)]
    return _quiet(
        GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=args,
            train_dataset=Dataset.from_list(columns),
            processing_class=tokenizer,
        )
    )


@torch.no_grad()
def trl_first_batch_loss(trainer) -> float:
    """The loss TRL's trainer computes on the first batch its data loader yields (the whole data set, when it
    fits in one batch: then the course's loss on all the rows is the same number)."""
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer.compute_loss(trainer.model, batch).item()


@torch.no_grad()
def course_sft_loss(model, tokenizer, rows: list[dict]) -> float:
    return sft.batch_loss(
        model, collate([encode(tokenizer, r["prompt"], r["completion"]) for r in rows], tokenizer.pad_token_id)
    )[0].item()


@torch.no_grad()
def course_reward_loss(model, tokenizer, rows: list[dict]) -> float:
    return reward_model.comparison_loss(model, tokenizer, rows, None, models.context_length(model)).item()


@torch.no_grad()
def course_dpo_loss(policy, reference, tokenizer, rows: list[dict], beta: float = 0.1) -> float:
    encoded = dpo.encode_pairs(tokenizer, rows)
    logps = dpo.batch_logprobs(policy, encoded, tokenizer.pad_token_id)  # (2 * pairs,): chosen, then rejected
    ref = dpo.batch_logprobs(reference, encoded, tokenizer.pad_token_id)
    n = len(rows)
    return dpo.dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta).item()
