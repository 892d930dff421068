"""Data parallelism: every trainer under `accelerate launch` with 2 CPU processes trains as 1 process does.

Both runs use the command a learner would type (`rlhf-course parallel-check`): from the shipped base model,
17 SFT steps on global batches of 16 (the last batch has one row, so one process gets none and takes a row
that does not count), then a few
steps of the reward model, DPO, REINFORCE, GRPO and PPO, 4 steps of TRL's SFTTrainer through the bridge and
7 of SFT with LoRA adapters; and SFT and PPO once more, interrupted and resumed from their checkpoints.
"""

import ast
import json
import os
from pathlib import Path

import pytest
import torch

from rlhf_course.algorithms import sft
from rlhf_course.core import chat, distributed, language_model, models
from rlhf_course.scale import data_parallel_by_hand
from rlhf_course.simulation import world

CPU_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_COURSE_DEVICE": "cpu"}  # one thread per process


def parallel_check(out, processes: int) -> dict:
    distributed.launch(processes, ["-m", "rlhf_course.cli", "parallel-check", "--out", str(out)], CPU_ENV, timeout=600)
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    return {n: (parallel_check(root / f"{n}", n), root / f"{n}" / "ppo_policy") for n in (1, 2)}


def assert_same_numbers(two, one, where=""):
    """Equal structure and texts; numbers equal to float rounding (sums taken in another order)."""
    if isinstance(one, dict):
        assert two.keys() == one.keys(), where
        for key in one:
            assert_same_numbers(two[key], one[key], f"{where}.{key}")
    elif isinstance(one, list):
        assert len(two) == len(one), where
        for i, (b, a) in enumerate(zip(two, one)):
            assert_same_numbers(b, a, f"{where}[{i}]")
    elif isinstance(one, float):
        # DPO's log-ratios are differences of sums of about 50 nats: 2e-5 is their rounding, not a tolerance
        assert two == pytest.approx(one, rel=1e-4, abs=2e-5), where
    else:
        assert two == one, where


def test_two_processes_train_every_trainer_as_one(runs):
    (one, one_dir), (two, two_dir) = runs[1], runs[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    # DDP averages gradients of shares weighted by their token counts: the same steps, to rounding
    for key in ("sft", "sft_lora"):  # full fine-tuning; LoRA adapters with gradient checkpointing
        torch.testing.assert_close(torch.tensor(two[key]), torch.tensor(one[key]), rtol=1e-5, atol=0)
    # sampling noise is drawn for the whole batch, so each process samples its rows' tokens exactly
    texts = [[[(prompt, reply) for prompt, reply, *_ in update] for update in run["ppo_samples"]] for run in (one, two)]
    assert texts[1] == texts[0]
    # an interrupted run resumed from its checkpoint takes exactly the uninterrupted run's steps, in either
    for run in (one, two):
        assert (run["sft_resumed_at"], run["ppo_resumed_at"]) == (4, 1)  # where they stopped, not from the start
        assert run["sft_resumed"] == run["sft"] and run["ppo_resumed"] == run["ppo"]
    assert_same_numbers(
        {k: v for k, v in two.items() if k not in ("processes", "trl_sft")},
        {k: v for k, v in one.items() if k not in ("processes", "trl_sft")},
    )
    assert_same_numbers(two["trl_sft"]["losses"], one["trl_sft"]["losses"], "trl_sft")
    # and the steps did something to compare: losses fell, the policies moved
    assert one["sft"][-1] < one["sft"][0] - 3 and one["sft_lora"][-1] < one["sft_lora"][0] - 3
    assert one["reward"][-1] != one["reward"][0] and one["dpo"][-1]["reward_margin"] != 0
    assert one["pg"][-1]["kl"] > 0 and one["grpo"][-1]["kl"] > 0 and one["ppo"][-1]["kl"] > 0
    assert all(row["clipfrac"] > 0 for row in one["ppo"] + one["grpo"])
    # TRL's trainer really ran in two processes (on a CPU that takes the bridge's use_cpu; without it each
    # process trains alone on half the batch), and its losses match one process's
    assert (one["trl_sft"]["processes"], two["trl_sft"]["processes"]) == (1, 2)
    assert len(one["trl_sft"]["losses"]) == 4 and one["trl_sft"]["losses"][-1] < one["trl_sft"]["losses"][0] - 3
    # Compared by what they compute, not weight by weight: the attention's key biases have an exact gradient of
    # zero (softmax ignores a shift shared by every key), so Adam turns their rounding noise into steps of
    # about the learning rate, differently in each run, without changing any output.
    tok = models.load_tokenizer(one_dir)
    prompts = [chat.encode(tok, t.prompt)[0] for t in world.generate_tasks("test", 3)]
    ids, mask = language_model.pad_batch(prompts, tok.pad_token_id, side="right")
    logits = [models.load_model(d)(input_ids=ids, attention_mask=mask).logits for d in (one_dir, two_dir)]
    base = models.load_model()(input_ids=ids, attention_mask=mask).logits
    moved = (logits[0] - base).abs().max().item()
    assert moved > 1.0
    assert (logits[1] - logits[0]).abs().max().item() < 1e-4 * moved


def test_noise_for_the_whole_batch_makes_a_split_batch_sample_what_the_whole_batch_samples():
    model, tok = models.load_model(), models.load_tokenizer()
    prompts = [chat.encode(tok, t.prompt)[0] for t in world.generate_tasks("test", 2)][:7]
    kwargs = dict(pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=12, temperature=1.0, seed=3)
    whole, whole_mask = language_model.generate(model, prompts, **kwargs)
    responses = [seq[m == 1].tolist() for seq, m in zip(whole, whole_mask)]  # without the batch's padding
    assert len(set(map(tuple, responses))) == len(prompts)
    for start in (0, 1, 2):
        rows = range(start, len(prompts), 3)
        part, part_mask = language_model.generate(model, [prompts[i] for i in rows], rows=rows, **kwargs)
        assert [seq[m == 1].tolist() for seq, m in zip(part, part_mask)] == [responses[i] for i in rows]
    with pytest.raises(ValueError, match="names 3 rows"):
        language_model.generate(model, prompts[:2], rows=range(0, 7, 3), **kwargs)


def test_one_process_is_left_alone():
    """In one process the data-parallel pieces change nothing, so one-process runs stay bit-identical."""
    accelerator = distributed.accelerator()
    assert accelerator.num_processes == 1
    assert distributed.share_weight(accelerator, torch.tensor(37.0)).item() == 1.0
    assert distributed.my_rows(accelerator, list("abcde")) == (list("abcde"), True)
    model = torch.nn.Linear(2, 1)
    call, optimizer = accelerator.prepare(
        distributed.Call(lambda m, x: m(x) * 2, model), torch.optim.SGD(model.parameters())
    )
    x = torch.ones(3, 2)
    assert torch.equal(call(x), model(x) * 2)


def test_precision_left_by_a_trl_trainer_does_not_reach_the_course_trainers():
    """TRL's configs default to bf16, and accelerate keeps one state per process: the course's Accelerator
    must not inherit it (the DPO stage's first step, policy equal to reference, stopped tying)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # what transformers' Trainer does before making its own
    Accelerator(cpu=True, mixed_precision="bf16")  # and what a TRL trainer leaves behind
    accelerator = distributed.accelerator()
    model = torch.nn.Linear(4, 4)
    prepared = accelerator.prepare(model)
    x = torch.randn(2, 4)
    assert accelerator.mixed_precision == "no" and torch.equal(prepared(x), model(x))


def test_a_process_without_rows_takes_one_that_does_not_count():
    class TwoProcesses:
        process_index, num_processes = 1, 2

    assert distributed.my_rows(TwoProcesses, [7, 8, 9]) == ([8], True)
    assert distributed.my_rows(TwoProcesses, [7]) == ([7], False)


def test_a_failed_launch_says_what_the_processes_printed():
    program = ["-c", "import sys; print('the cause is here', file=sys.stderr); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)failed in 1 process.*exit status 3.*the cause is here"):
        distributed.launch(1, program)


def test_the_written_out_data_parallelism_of_lesson_08_takes_accelerates_steps(tmp_path):
    """The exhibit's all-reduce by hand and accelerate's DDP give one process's weights, in 1 and 2 processes."""
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"{n}"
        distributed.launch(n, ["-m", "rlhf_course.scale.data_parallel_by_hand", str(out)], CPU_ENV, timeout=300)
        runs[n] = json.loads((out / "summary.json").read_text())
    assert (runs[1]["processes"], runs[2]["processes"]) == (1, 2)
    assert runs[1]["by_hand"] == runs[1]["accelerate"]  # one process: the same operations
    for n in (1, 2):
        for version in ("by_hand", "accelerate"):
            for a, b in zip(runs[n][version], runs[1]["by_hand"]):
                torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-6, atol=1e-7)
    start = [p.detach().flatten().tolist() for p in data_parallel_by_hand.fresh_model().parameters()]
    assert all(abs(a - b) > 1e-3 for a, b in zip(runs[1]["by_hand"][0], start[0]))  # training moved the weights


def test_no_algorithm_calls_a_communication_function_of_its_own():
    """The trainers scale out through accelerate: no torch.distributed, and no collective written by hand."""
    calls = []
    for path in sorted((Path(distributed.__file__).parent.parent / "algorithms").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                calls += [f"{path.name} imports {n}" for n in names if n.startswith("torch.distributed")]
            if isinstance(node, ast.Attribute) and node.attr in ("all_reduce", "all_gather", "broadcast", "barrier"):
                calls.append(f"{path.name}:{node.lineno} calls {node.attr}")
    assert not calls, calls


CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "accelerate"
SFT_STEPS = """
import json, sys
from rlhf_course.algorithms import sft
from rlhf_course.core import distributed, models
from rlhf_course.simulation import data

tok, model = models.load_tokenizer(models.BASE_MODEL_DIR), models.load_model(models.BASE_MODEL_DIR)
config = sft.SFTConfig(epochs=1, batch_size=16, max_examples=16 * 3 + 1, warmup_steps=1)
losses = sft.train_sft(model, tok, data.sft_dataset("train"), config).losses
engine = distributed.accelerator().distributed_type.value
if distributed.processes().is_main_process:
    json.dump({"losses": losses, "engine": engine}, open(sys.argv[1], "w"))
"""


def test_the_shipped_accelerate_configs_load_as_the_engines_they_name():
    from accelerate.commands.config.config_args import load_config_from_file

    engines = {
        name: load_config_from_file(str(CONFIGS / f"{name}.yaml")) for name in ("ddp", "fsdp", "deepspeed_zero2")
    }
    assert [c.distributed_type.value for c in engines.values()] == ["MULTI_GPU", "FSDP", "DEEPSPEED"]
    assert all(c.mixed_precision == "no" for c in engines.values())  # precision is the course's own
    assert engines["fsdp"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # DeepSpeed clips by itself: at the trainers' max_grad_norm
    assert engines["deepspeed_zero2"].deepspeed_config["gradient_clipping"] == sft.SFTConfig().max_grad_norm
    assert "fsdp.yaml" in (CONFIGS / "README.md").read_text()


def test_sft_launched_with_the_fsdp_config_on_cpus_runs_as_ddp_and_matches_one_process(tmp_path):
    """On a CPU accelerate runs an FSDP launch as plain DDP (FSDP needs GPUs): the part of the config a CPU runs."""
    script = tmp_path / "sft_steps.py"
    script.write_text(SFT_STEPS)
    runs = {}
    for n in (1, 2):
        distributed.launch(
            n, [str(script), str(tmp_path / f"{n}.json")], CPU_ENV, timeout=300, config_file=CONFIGS / "fsdp.yaml"
        )
        runs[n] = json.loads((tmp_path / f"{n}.json").read_text())
    assert (runs[1]["engine"], runs[2]["engine"]) == ("NO", "MULTI_CPU")
    assert len(runs[1]["losses"]) == 4 and runs[1]["losses"][-1] < runs[1]["losses"][0]
    torch.testing.assert_close(torch.tensor(runs[2]["losses"]), torch.tensor(runs[1]["losses"]), rtol=1e-5, atol=0)
