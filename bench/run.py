"""Throughput of the course's trainers next to TRL's, on the same model, data and settings, in one process.

    .venv/bin/python bench/run.py --config cpu    # the course's 0.94M-parameter GPT-2 on this machine's CPU
    .venv/bin/python bench/run.py --config gpu    # GPT-2 12 x 768 (random init) in bf16 autocast, on a GPU
    .venv/bin/python bench/run.py --config tiny   # a few steps of each, to check the harness (CI runs it)

For each of SFT, reward, DPO and GRPO the course's trainer and TRL's run the same rows with the same batch
size, after one untimed warm-up run of each; PPO (which TRL 1.16 lacks) and decoding are timed for the
course alone, decoding next to plain ``model.generate``. Every run is timed whole (tokenizing included),
so the numbers are what a user waits for. Results go to the terminal and, with ``--out``, to a JSON file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RLHF_COURSE_PROGRESS", "0")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from rlhf_course import data, dpo, grpo, models, ppo, reward_model, rollouts, runtime, sft, trl_bridge, world  # noqa: E402
from rlhf_course.language_model import generate, pad_batch  # noqa: E402


@dataclass
class BenchConfig:
    model: str = "course"  # "course": the shipped 4 x 128 GPT-2; "gpt2-12x768": that shape from a random init
    sft_rows: int = 512
    pairs: int = 256
    batch_size: int = 32
    grpo_steps: int = 2
    grpo_prompts: int = 4  # per step
    group_size: int = 8
    ppo_updates: int = 2
    ppo_batch: int = 32
    new_tokens: int = 32
    decode_batch: int = 64


CONFIGS = {
    "tiny": BenchConfig(sft_rows=32, pairs=32, batch_size=16, grpo_steps=1, grpo_prompts=2, group_size=4,
                        ppo_updates=1, ppo_batch=8, new_tokens=8, decode_batch=8),
    "cpu": BenchConfig(),
    "gpu": BenchConfig(model="gpt2-12x768", sft_rows=64 * 40, pairs=32 * 40, batch_size=64, grpo_steps=5, grpo_prompts=8,
                       ppo_updates=5, ppo_batch=64),
}


def model_dir(config: BenchConfig, tok, scratch: Path) -> Path:
    if config.model == "course":
        return models.BASE_MODEL_DIR
    torch.manual_seed(0)
    big = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=768, n_layer=12, n_head=12,
                                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id))
    return models.save(big, tok, scratch / "gpt2-12x768")


def timed(fn) -> float:
    """Seconds ``fn()`` takes, with the GPU's queue drained before and after."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def twice(fn) -> float:
    """The second of two runs: the first pays for allocator warm-up, kernel selection and lazy imports."""
    fn()
    return timed(fn)


def preference_rows(n: int) -> list[dict]:
    tasks = world.generate_tasks("train", n // len(world.FAMILIES) + 1)[:n]
    return [{"prompt": t.prompt, "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
             "rejected": [{"role": "assistant", "content": world.render(t, "curt", t.wrong)}]} for t in tasks]


def run(config: BenchConfig, scratch: Path) -> list[dict]:
    tok = models.load_tokenizer()
    path = model_dir(config, tok, scratch)
    load = lambda: models.load_model(path)  # noqa: E731
    demos = data.sft_dataset("train").to_list()[:config.sft_rows]
    tokens = sum(len(sft.encode(tok, r["prompt"], r["completion"])[0]) for r in demos)
    pairs = preference_rows(config.pairs)
    tasks = world.generate_tasks("train", 20)
    b = config.batch_size
    rows = []

    def row(name, unit, amount, course_seconds, trl_seconds=None):
        course = amount / course_seconds
        theirs = amount / trl_seconds if trl_seconds else None
        rows.append({"step": name, "unit": unit, "course": course, "trl": theirs,
                     "course/trl": course / theirs if theirs else None})
        print(f"{name:<8}{course:>12.1f}{theirs or float('nan'):>12.1f}  {unit:<14}"
              f"{'' if theirs is None else f'{course / theirs:.2f}':>6}", flush=True)

    print(f"{'step':<8}{'course':>12}{'TRL':>12}  {'unit':<14}{'ratio':>6}")
    row("SFT", "tokens/s", tokens,
        twice(lambda: sft.train_sft(load(), tok, demos, sft.SFTConfig(epochs=1, batch_size=b, warmup_steps=1))),
        twice(lambda: trl_bridge.sft_trainer(load(), tok, demos, scratch / "trl", b).train()))
    row("reward", "pairs/s", len(pairs),
        twice(lambda: reward_model.train(reward_model.build(path), tok, pairs, None,
                                         reward_model.RewardConfig(batch_size=b, warmup_steps=1))),
        twice(lambda: trl_bridge.reward_trainer(reward_model.build(path), tok, pairs, scratch / "trl", b).train()))
    dpo_batch = max(1, b // 2)  # each pair is two sequences
    row("DPO", "pairs/s", len(pairs),
        twice(lambda: dpo.train_dpo(load(), load(), tok, pairs, dpo.DPOConfig(batch_size=dpo_batch, beta=0.1,
                                                                               warmup_steps=1))),
        twice(lambda: trl_bridge.dpo_trainer(load(), load(), tok, pairs, scratch / "trl", dpo_batch).train()))
    completions = config.grpo_steps * config.grpo_prompts * config.group_size
    grpo_config = grpo.GRPOConfig(updates=config.grpo_steps, prompts_per_update=config.grpo_prompts,
                                  group_size=config.group_size, iterations=1, minibatch_size=config.grpo_prompts * config.group_size,
                                  max_new_tokens=config.new_tokens)
    row("GRPO", "completions/s", completions,
        twice(lambda: grpo.train_grpo(load(), load(), rollouts.correctness_scorer, tok, tasks, grpo_config)),
        twice(lambda: trl_bridge.grpo_trainer(load(), tok, tasks, scratch / "trl", group_size=config.group_size,
                                              batch_size=config.grpo_prompts * config.group_size,
                                              max_steps=config.grpo_steps, max_completion_length=config.new_tokens,
                                              beta=0.04).train()))
    ppo_config = ppo.PPOConfig(updates=config.ppo_updates, batch_size=config.ppo_batch,
                               minibatch_size=max(1, config.ppo_batch // 4), max_new_tokens=config.new_tokens)
    row("PPO", "episodes/s", config.ppo_updates * config.ppo_batch,
        twice(lambda: ppo.train_ppo(ppo.PolicyWithValue(load()), load(), rollouts.correctness_scorer, tok, tasks,
                                    ppo_config)))
    decoder = load()
    prompts = [sft.encode(tok, t.prompt)[0] for t in tasks[:config.decode_batch]]
    prompts = (prompts * (config.decode_batch // len(prompts) + 1))[:config.decode_batch]
    new = config.decode_batch * config.new_tokens
    # no EOS id, so every row decodes all new_tokens in both
    course = twice(lambda: generate(decoder, prompts, pad_id=tok.pad_token_id, eos_id=-1,
                                    max_new_tokens=config.new_tokens, temperature=1.0))
    ids, mask = (t.to(runtime.device()) for t in pad_batch(prompts, tok.pad_token_id, side="left"))
    plain = twice(lambda: decoder.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                           max_new_tokens=config.new_tokens, min_new_tokens=config.new_tokens,
                                           pad_token_id=tok.pad_token_id))
    rows.append({"step": "decode", "unit": "tokens/s", "course": new / course, "trl": None,
                 "plain generate": new / plain, "course/plain": plain / course})
    print(f"{'decode':<8}{new / course:>12.1f}{new / plain:>12.1f}  {'tokens/s':<14}{plain / course:>6.2f}"
          "   (second column: plain model.generate)")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    dev = runtime.device()
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"config {args.config}: {config}\ndevice {device} | torch {torch.__version__} | transformers "
          f"{transformers.__version__} | trl {trl.__version__} | autocast {runtime.autocast_dtype(dev)}")
    with tempfile.TemporaryDirectory() as scratch:
        rows = run(config, Path(scratch))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": args.config, "settings": dataclasses.asdict(config), "device": device,
                                        "torch": torch.__version__, "transformers": transformers.__version__,
                                        "trl": trl.__version__, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
