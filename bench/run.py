"""Throughput of the course's trainers next to TRL's, on the same model, data and settings, in one process.

    .venv/bin/python bench/run.py --config cpu    # the course's 0.94M-parameter GPT-2 on this machine's CPU
    .venv/bin/python bench/run.py --config gpu    # GPT-2 12 x 768 (random init) in bf16 autocast, on a GPU
    .venv/bin/python bench/run.py --config tiny   # a few steps of each, to check the harness (CI runs it)

For each of SFT, reward, DPO and GRPO the course's trainer and TRL's run the same rows with the same batch
size; PPO (which TRL 1.16 lacks) runs for the course alone, on the bench's model and on a model of at least
350M parameters (``big``); decoding is timed for the course's three decoders next to plain ``model.generate``.

Steady state and setup apart: every measurement runs a short and a long version of the same job (fewer and
more rows, updates or new tokens), after one untimed warm-up of the long one. The difference between the
two runs is pure training (or decoding), so ``steady = (amount_long - amount_short) / (t_long - t_short)`` is
the throughput after the first steps, and ``setup = t_short - amount_short / steady`` is what a run pays once
(building the trainer and its dataset, tokenizing, compiling). Results go to the terminal and, with ``--out``,
to a JSON file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RLHF_COURSE_PROGRESS", "0")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from rlhf_course.algorithms import dpo, grpo, ppo, reward_model, rollouts, sft
from rlhf_course.core import chat, models, runtime
from rlhf_course.core.language_model import generate, pad_batch
from rlhf_course.scale import trl_bridge
from rlhf_course.simulation import data, world


@dataclass
class BenchConfig:
    model: tuple[int, int, int] | None = (
        None  # (layers, width, heads) of a GPT-2 from a random init; None: the course's
    )
    big: tuple[int, int, int] = (2, 64, 2)  # the model of the "PPO big" row (the GPU's has 350M+ parameters)
    sft_rows: int = 512  # the long runs; the short ones take a quarter of the rows, or one update
    pairs: int = 256
    batch_size: int = 32
    grpo_steps: int = 3
    grpo_prompts: int = 4  # per step
    group_size: int = 8
    ppo_updates: int = 3
    ppo_batch: int = 32
    new_tokens: int = 32
    decode_batch: int = 64
    decoder: str = "dynamic"  # the course's decoder inside GRPO and PPO (runtime.DECODERS)


CONFIGS = {
    "tiny": BenchConfig(
        sft_rows=64,
        pairs=64,
        batch_size=16,
        grpo_steps=2,
        grpo_prompts=2,
        group_size=4,
        ppo_updates=2,
        ppo_batch=8,
        new_tokens=16,
        decode_batch=8,
    ),
    "cpu": BenchConfig(),
    "gpu": BenchConfig(
        model=(12, 768, 12),
        big=(28, 1024, 16),
        sft_rows=64 * 40,
        pairs=32 * 40,
        batch_size=64,
        grpo_steps=24,  # a GRPO update takes a tenth of a second here: 4 were lost in the setup's noise
        grpo_prompts=8,
        ppo_updates=4,
        ppo_batch=64,
        decoder="compiled",
    ),
}


def gpt2_dir(shape: tuple[int, int, int], tok, scratch: Path) -> Path:
    layers, width, heads = shape
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=128,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    return models.save(model, tok, scratch / f"gpt2-{layers}x{width}")


def timed(fn) -> float:
    """Seconds ``fn()`` takes, with the GPU's queue drained before and after."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def steady_state(job, short, long, amount) -> dict:
    """Throughput after the first steps, and the one-off setup, of ``job(size)`` from a short and a long run.

    ``amount(size)`` is the work a run of that size does (tokens, pairs, episodes). The long run is run once
    untimed first: it pays for allocator warm-up, compiling, lazy imports and kernel selection for every shape
    the timed runs will meet (cuDNN's attention plans a kernel for each new sequence length, for instance).
    """
    job(long)
    t_short, t_long = timed(lambda: job(short)), timed(lambda: job(long))
    extra_work, extra_time = amount(long) - amount(short), t_long - t_short
    # a long run no slower than the short one means the difference is lost in noise: no steady rate to report
    steady = extra_work / extra_time if extra_time > 0.05 * t_short else None
    return {
        "steady": steady,
        "setup_s": None if steady is None else max(0.0, t_short - amount(short) / steady),
        "whole": amount(long) / t_long,
        "seconds_short": t_short,
        "seconds_long": t_long,
    }


def guarded(job, short, long, amount) -> dict:
    """``steady_state``, or, when the job raises, a record of the error: one failing row must not cost the rest
    of a GPU run, whose minutes are few."""
    try:
        return steady_state(job, short, long, amount)
    except Exception as error:  # noqa: BLE001 - reported in the row and on stderr, then the next row runs
        traceback.print_exc()
        return {"steady": None, "setup_s": None, "error": f"{type(error).__name__}: {error}"[:2000]}


def preference_rows(n: int) -> list[dict]:
    tasks = world.generate_tasks("train", n // len(world.FAMILIES) + 1)[:n]
    return [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "curt", t.wrong)}],
        }
        for t in tasks
    ]


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def run(config: BenchConfig, scratch: Path, report=lambda rows: None) -> list[dict]:
    """Every row of the bench; ``report(rows)`` is called after each, so a run cut short keeps what it measured."""
    tok = models.load_tokenizer()
    path = models.BASE_MODEL_DIR if config.model is None else gpt2_dir(config.model, tok, scratch)
    load = lambda p=path: models.load_model(p)  # noqa: E731
    demos = data.sft_dataset("train").to_list()[: config.sft_rows]
    tokens = [len(chat.encode(tok, r["prompt"], r["completion"])[0]) for r in demos]
    pairs = preference_rows(config.pairs)
    tasks = world.generate_tasks("train", 20)
    b = config.batch_size
    rows = []

    def row(name, unit, course, baseline=None, baseline_name="TRL", **extra):
        ratio = course["steady"] / baseline["steady"] if baseline and course["steady"] and baseline["steady"] else None
        rows.append(
            {
                "step": name,
                "unit": unit,
                "course": course,
                "baseline_name": baseline and baseline_name,
                "baseline": baseline,
                "ratio": ratio,
                **extra,
            }
        )
        for side, measured in (("course", course), (baseline_name, baseline)):
            if measured and "error" in measured:
                print(f"{name}: the {side} run failed: {measured['error']}", flush=True)
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"{name:<18}{fmt(course['steady'], ',.1f'):>12}{fmt(course['setup_s'], '.1f'):>8}"
            f"{fmt(baseline and baseline['steady'], ',.1f'):>12}{fmt(baseline and baseline['setup_s'], '.1f'):>8}"
            f"  {unit:<14}{fmt(ratio, '.2f'):>6}" + "".join(f"  {k} {v}" for k, v in extra.items()),
            flush=True,
        )
        report(rows)

    print(
        f"{'step':<18}{'course':>12}{'setup s':>8}{'baseline':>12}{'setup s':>8}  {'unit (steady)':<14}{'ratio':>6}"
        "   (baseline: TRL's trainer; for decoding, plain model.generate)"
    )
    decoder = load()
    prompts = [chat.encode(tok, t.prompt)[0] for t in tasks]
    prompts = (prompts * (config.decode_batch // len(prompts) + 1))[: config.decode_batch]
    ids, mask = (t.to(runtime.device()) for t in pad_batch(prompts, tok.pad_token_id, side="left"))
    short = max(2, config.new_tokens // 4)
    # no EOS id for ours, min_new_tokens for generate: every row decodes every step in both
    plain = guarded(
        lambda n: decoder.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=tok.pad_token_id,
        ),
        short,
        config.new_tokens,
        lambda n: n,
    )
    for name in runtime.DECODERS:
        ours = guarded(
            lambda n: generate(
                decoder, prompts, pad_id=tok.pad_token_id, eos_id=-1, max_new_tokens=n, temperature=1.0, decoder=name
            ),
            short,
            config.new_tokens,
            lambda n: n,
        )
        row(
            f"decode {name}",
            "steps/s",
            ours,
            plain,
            "model.generate",
            ms_per_step=None if ours["steady"] is None else round(1000 / ours["steady"], 3),
            generate_ms_per_step=None if plain["steady"] is None else round(1000 / plain["steady"], 3),
        )
    if "error" in rows[-1]["course"] and os.environ.get("RLHF_COURSE_DECODER") == "compiled":
        # GRPO and PPO still get measured, with the uncompiled static cache, and the rows say so
        print("the compiled decoder failed: GRPO and PPO decode with 'static' instead", flush=True)
        os.environ["RLHF_COURSE_DECODER"] = "static"
    per_update = config.grpo_prompts * config.group_size
    grpo_config = lambda n: grpo.GRPOConfig(  # noqa: E731
        updates=n,
        prompts_per_update=config.grpo_prompts,
        group_size=config.group_size,
        iterations=1,
        minibatch_size=per_update,
        max_new_tokens=config.new_tokens,
    )
    row(
        "GRPO",
        "completions/s",
        guarded(
            lambda n: grpo.train_grpo(load(), load(), rollouts.correctness_scorer, tok, tasks, grpo_config(n)),
            1,
            config.grpo_steps,
            lambda n: n * per_update,
        ),
        guarded(
            lambda n: trl_bridge.grpo_trainer(
                load(),
                tok,
                tasks,
                scratch / "trl",
                group_size=config.group_size,
                batch_size=per_update,
                max_steps=n,
                max_completion_length=config.new_tokens,
                beta=0.04,
            ).train(),
            1,
            config.grpo_steps,
            lambda n: n * per_update,
        ),
        decoder=os.environ.get("RLHF_COURSE_DECODER"),
    )

    def ppo_job(model_path):
        ppo_config = lambda n: ppo.PPOConfig(  # noqa: E731
            updates=n,
            batch_size=config.ppo_batch,
            minibatch_size=max(1, config.ppo_batch // 4),
            max_new_tokens=config.new_tokens,
        )
        return lambda n: ppo.train_ppo(
            ppo.PolicyWithValue(load(model_path)),
            load(model_path),
            rollouts.correctness_scorer,
            tok,
            tasks,
            ppo_config(n),
        )

    episodes = lambda n: n * config.ppo_batch  # noqa: E731
    decoding = os.environ.get("RLHF_COURSE_DECODER")
    row("PPO", "episodes/s", guarded(ppo_job(path), 1, config.ppo_updates, episodes), decoder=decoding)
    big = gpt2_dir(config.big, tok, scratch)
    parameters = models.count_parameters(load(big))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    row(
        f"PPO {parameters / 1e6:.3g}M",
        "episodes/s",
        guarded(ppo_job(big), 1, config.ppo_updates, episodes),
        parameters=parameters,
        peak_gib=peak_memory_gib(),
        decoder=decoding,
    )

    quarter = lambda n: max(b, n // 4)  # noqa: E731
    sft_tokens = lambda n: sum(tokens[:n])  # noqa: E731
    row(
        "SFT",
        "tokens/s",
        guarded(
            lambda n: sft.train_sft(load(), tok, demos[:n], sft.SFTConfig(epochs=1, batch_size=b, warmup_steps=1)),
            quarter(len(demos)),
            len(demos),
            sft_tokens,
        ),
        guarded(
            lambda n: trl_bridge.sft_trainer(load(), tok, demos[:n], scratch / "trl", b).train(),
            quarter(len(demos)),
            len(demos),
            sft_tokens,
        ),
    )
    same = lambda n: n  # noqa: E731
    row(
        "reward",
        "pairs/s",
        guarded(
            lambda n: reward_model.train(
                reward_model.build(path), tok, pairs[:n], None, reward_model.RewardConfig(batch_size=b, warmup_steps=1)
            ),
            quarter(len(pairs)),
            len(pairs),
            same,
        ),
        guarded(
            lambda n: trl_bridge.reward_trainer(reward_model.build(path), tok, pairs[:n], scratch / "trl", b).train(),
            quarter(len(pairs)),
            len(pairs),
            same,
        ),
    )
    dpo_batch = max(1, b // 2)  # each pair is two sequences
    row(
        "DPO",
        "pairs/s",
        guarded(
            lambda n: dpo.train_dpo(
                load(), load(), tok, pairs[:n], dpo.DPOConfig(batch_size=dpo_batch, beta=0.1, warmup_steps=1)
            ),
            quarter(len(pairs)),
            len(pairs),
            same,
        ),
        guarded(
            lambda n: trl_bridge.dpo_trainer(load(), load(), tok, pairs[:n], scratch / "trl", dpo_batch).train(),
            quarter(len(pairs)),
            len(pairs),
            same,
        ),
    )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--decoder", choices=runtime.DECODERS, help="the decoder inside GRPO and PPO (default: the config's)"
    )
    args = parser.parse_args(argv)
    config = CONFIGS[args.config]
    if args.decoder:
        config = dataclasses.replace(config, decoder=args.decoder)
    os.environ["RLHF_COURSE_DECODER"] = config.decoder  # generate's default inside the course's GRPO and PPO
    dev = runtime.device()
    device = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"config {args.config}: {config}\ndevice {device} | torch {torch.__version__} | transformers "
        f"{transformers.__version__} | trl {trl.__version__} | autocast {runtime.autocast_dtype(dev)}",
        flush=True,
    )
    start = time.time()

    def report(rows):
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps(
                    {
                        "config": args.config,
                        "settings": dataclasses.asdict(config),
                        "device": device,
                        "torch": torch.__version__,
                        "transformers": transformers.__version__,
                        "trl": trl.__version__,
                        "seconds": time.time() - start,
                        "results": rows,
                    },
                    indent=1,
                )
                + "\n"
            )

    with tempfile.TemporaryDirectory() as scratch:
        run(config, Path(scratch), report)
    print(f"bench took {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
