"""The same code on a GPU: bf16 autocast training and KV-cache generation agree with the CPU.

CI has no GPU, so these are skipped there; they run on a CUDA machine (see the closing notes).
"""
import pytest
import torch

from rlhf_course import data, evaluation, models, runtime, world
from rlhf_course.sft import SFTConfig, train_sft

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


def test_greedy_generation_on_cuda_agrees_with_the_cpu():
    tok = models.load_tokenizer()
    tasks = world.generate_tasks("test", 8)
    cpu = evaluation.respond(models.load_model(dev=torch.device("cpu")), tok, tasks)
    gpu = evaluation.respond(models.load_model(dev=torch.device("cuda")), tok, tasks)
    same = sum(a == b for a, b in zip(cpu, gpu)) / len(tasks)
    assert same > 0.9, same
