"""Where a PPO update's time goes: decoding, the rollout's other work, the minibatch steps; and how busy the GPU is.

    .venv/bin/python bench/profile_ppo.py --config gpu   # the bench's gpu configuration (bench/run.py)

Runs ``config.ppo_updates`` updates of the course's PPO after one warm-up update. Each phase is timed with the
device's queue drained at its start and end (which costs a little overlap), then one more update runs under
``torch.profiler`` for the busiest kernels and the share of wall time the GPU spent computing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RLHF_COURSE_PROGRESS", "0")

import accelerate  # noqa: E402
import torch  # noqa: E402
from run import CONFIGS, gpt2_dir  # noqa: E402

from rlhf_course.algorithms import ppo, rollouts
from rlhf_course.core import models, runtime
from rlhf_course.simulation import world

spent: dict[str, float] = defaultdict(float)


def timing(name, fn):
    """``fn``, with the seconds of each call added to ``spent[name]``."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def wrapped(*args, **kwargs):
        sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        spent[name] += time.perf_counter() - start
        return out

    return wrapped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--decoder", choices=runtime.DECODERS, help="the decoder inside PPO (default: the config's)")
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    if args.decoder:
        config = dataclasses.replace(config, decoder=args.decoder)
    os.environ["RLHF_COURSE_DECODER"] = config.decoder
    tok = models.load_tokenizer()
    tasks = world.generate_tasks("train", 20)
    with tempfile.TemporaryDirectory() as scratch:
        path = models.BASE_MODEL_DIR if config.model is None else gpt2_dir(config.model, tok, Path(scratch))

        def load():
            return ppo.PolicyWithValue(models.load_model(path)), models.load_model(path)

        def train(updates, loaded=None):
            policy, reference = loaded or timing("loading the policy and the reference", load)()
            return ppo.train_ppo(
                policy,
                reference,
                rollouts.correctness_scorer,
                tok,
                tasks,
                ppo.PPOConfig(
                    updates=updates,
                    batch_size=config.ppo_batch,
                    minibatch_size=max(1, config.ppo_batch // 4),
                    max_new_tokens=config.new_tokens,
                ),
            )

        train(1)  # warm-up: compiling, kernel selection
        rollouts.generate = timing("decoding (generate)", rollouts.generate)
        ppo.collect = timing("rollout (generate, log-probs, scores)", ppo.collect)
        ppo.ppo_update = timing("update (epochs of minibatch steps)", ppo.ppo_update)
        accelerate.optimizer.AcceleratedOptimizer.step = timing(
            "optimizer steps (clipping excluded)", accelerate.optimizer.AcceleratedOptimizer.step
        )
        accelerate.Accelerator.backward = timing(
            "backward passes (accelerator.backward)", accelerate.Accelerator.backward
        )
        spent.clear()  # the warm-up's loading was timed too
        start = time.perf_counter()
        train(config.ppo_updates)
        wall = time.perf_counter() - start
        print(
            f"PPO, {config.ppo_updates} updates of {config.ppo_batch} episodes, {config.new_tokens} new tokens, "
            f"decoder {config.decoder}, on {runtime.device()}: {wall:.2f} s in all, "
            f"{config.ppo_updates * config.ppo_batch / wall:.1f} episodes/s"
        )
        for name, seconds in spent.items():
            print(f"  {name:<42}{seconds:>8.2f} s  {100 * seconds / wall:>5.1f}%")
        print(
            "  (decoding is part of the rollout, the backward passes and optimizer steps part of the update; the rest"
            " of the wall time is advantages, statistics and building the trainer)"
        )
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        loaded = load()  # outside the profile: copying the weights to the GPU is not part of an update
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            train(1, loaded)
            wall = time.perf_counter() - start
        key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
        if torch.cuda.is_available():
            busy = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
            print(f"GPU busy {busy:.2f} s of {wall:.2f} s wall ({100 * busy / wall:.0f}%) in one profiled update")


if __name__ == "__main__":
    main()
