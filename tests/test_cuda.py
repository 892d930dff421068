"""The same code on a GPU: bf16 autocast training and KV-cache generation agree with the CPU.

CI has no GPU, so these are skipped there; they run on a CUDA machine (see the closing notes).
"""

import pytest
import torch

from rlhf_course.algorithms.sft import SFTConfig, train_sft
from rlhf_course.core import chat, models, runtime
from rlhf_course.core.language_model import decode_responses, generate
from rlhf_course.simulation import data, world

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_runtime_picks_cuda_with_bf16(monkeypatch):
    monkeypatch.delenv("RLHF_COURSE_DEVICE", raising=False)
    dev = runtime.device()
    assert dev.type == "cuda" and runtime.autocast_dtype(dev) == torch.bfloat16


def test_sft_losses_on_cuda_bf16_track_the_cpu():
    tok = models.load_tokenizer()
    ds = data.sft_dataset("train", data.DataConfig(train_per_family=40))
    config = SFTConfig(epochs=1, max_examples=128, batch_size=16)
    cpu = train_sft(models.load_model(dev=torch.device("cpu")), tok, ds, config).losses
    gpu = train_sft(models.load_model(dev=torch.device("cuda")), tok, ds, config).losses
    assert gpu == pytest.approx(cpu, rel=0.05)


def test_greedy_generation_on_cuda_in_fp32_reproduces_the_cpu(monkeypatch):
    """Same cache, positions and masks on both devices: outputs identical without bf16 rounding."""
    monkeypatch.setenv("RLHF_COURSE_AUTOCAST", "fp32")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    tok = models.load_tokenizer()
    tasks = world.generate_tasks("test", 8)
    cpu = chat.respond(models.load_model(dev=torch.device("cpu")), tok, tasks, max_new_tokens=12)
    gpu = chat.respond(models.load_model(dev=torch.device("cuda")), tok, tasks, max_new_tokens=12)
    same = sum(a == b for a, b in zip(cpu, gpu)) / len(tasks)
    assert same > 0.95, same


def test_bf16_first_tokens_agree_with_the_cpu():
    """bf16 rounding may flip near-ties, so long greedy texts drift apart; the first token rarely flips."""
    tok = models.load_tokenizer()
    tasks = world.generate_tasks("test", 8)
    prompts = [tok.apply_chat_template(t.prompt, add_generation_prompt=True, return_dict=False) for t in tasks]
    firsts = []
    for dev in ("cpu", "cuda"):
        model = models.load_model(dev=torch.device(dev))
        seqs, mask = generate(model, prompts, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, max_new_tokens=1)
        firsts.append(seqs[:, -1].cpu())
    assert (firsts[0] == firsts[1]).float().mean() > 0.95


def test_static_and_compiled_decoders_on_cuda_give_the_dynamic_decoders_tokens(monkeypatch):
    """The compiled step replays a CUDA graph; in fp32 it must sample what the growing cache samples."""
    monkeypatch.setenv("RLHF_COURSE_AUTOCAST", "fp32")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    tok = models.load_tokenizer()
    model = models.load_model(dev=torch.device("cuda"))
    prompts = [
        tok.apply_chat_template(t.prompt, add_generation_prompt=True, return_dict=False)
        for t in world.generate_tasks("test", 4)
    ][:32]
    for temperature in (0.0, 1.0):
        replies = {}
        for decoder in ("dynamic", "static", "compiled", "compiled"):  # compiled twice: record the graph, then replay
            sequences, mask = generate(
                model,
                prompts,
                pad_id=tok.pad_token_id,
                eos_id=tok.eos_token_id,
                max_new_tokens=24,
                temperature=temperature,
                seed=1,
                decoder=decoder,
            )
            replies[decoder] = decode_responses(tok, sequences, mask)
        for decoder in ("static", "compiled"):
            same = sum(a == b for a, b in zip(replies[decoder], replies["dynamic"])) / len(prompts)
            assert same > 0.95, (decoder, temperature, same)
