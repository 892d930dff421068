"""Every stage on other causal-LM architectures (random tiny GPT-2, Llama and Qwen2 models, built here since
nothing can be downloaded), and the memory savers for larger models: gradient checkpointing and LoRA."""

import dataclasses

import pytest
import torch
from transformers import (
    AutoConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlhf_course import pipeline
from rlhf_course.algorithms import dpo, grpo, ppo
from rlhf_course.algorithms import reward_model as rm
from rlhf_course.algorithms.sft import SFTConfig, collate
from rlhf_course.core import models
from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import next_token_loss
from rlhf_course.simulation import data, world

STAGES = ["sft", "reward", "ppo", "dpo", "grpo"]
TINY = pipeline.PipelineConfig(
    data=data.DataConfig(train_per_family=10, eval_per_family=2),
    rl_prompts_per_family=4,
    eval_samples_per_prompt=2,
    sft=SFTConfig(epochs=1, batch_size=16),
    feedback=pipeline.FeedbackConfig(
        prompts_per_family=3,
        samples_per_prompt=3,
        test_samples_per_prompt=3,
        automatic_per_family=4,
        replay_per_family=2,
    ),
    reward=rm.RewardConfig(epochs=1, batch_size=8, eval_every=2),
    ppo=ppo.PPOConfig(updates=2, batch_size=8, minibatch_size=4, max_new_tokens=8),
    dpo=dpo.DPOConfig(batch_size=4),
    grpo=grpo.GRPOConfig(updates=2, prompts_per_update=2, group_size=4, minibatch_size=4, max_new_tokens=8),
)
LORA = models.MemoryConfig(gradient_checkpointing=True, lora_rank=4)


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer()


def random_model(kind, tok):
    torch.manual_seed(0)
    ids = dict(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id
    )
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=2, **ids))
    model_class, config_class = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[
        kind
    ]
    return model_class(
        config_class(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **ids,
        )
    )


@pytest.mark.parametrize(
    "kind, memory",
    [("gpt2", None), ("llama", None), ("qwen2", None), ("qwen2", LORA)],
    ids=["gpt2", "llama", "qwen2", "qwen2-lora-checkpointing"],
)
def test_every_stage_runs_on_a_local_model_directory(tmp_path, tok, kind, memory):
    base = models.save(random_model(kind, tok), tok, tmp_path / "base")
    config = dataclasses.replace(TINY, base_model=base, memory=memory or models.MemoryConfig())
    metrics = pipeline.run(tmp_path / "run", STAGES, config)
    assert set(STAGES) <= set(metrics)
    for name in ("sft_model", "reward_model", "ppo_model", "dpo_model", "grpo_model"):
        saved = tmp_path / "run" / name
        assert AutoConfig.from_pretrained(saved).model_type == kind, name  # an ordinary directory, adapters merged
        assert not (saved / "adapter_config.json").exists()
    # (GRPO is left out: a random model answers nothing right, so its verifier gives it nothing to learn from)
    for start, trained in (("base", "sft_model"), ("run/sft_model", "ppo_model"), ("run/sft_model", "dpo_model")):
        before = models.load_model(tmp_path / start, dev=torch.device("cpu"))
        after = models.load_model(tmp_path / "run" / trained, dev=torch.device("cpu"))
        assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters())), trained
        # LoRA adapts the linear layers only: the embeddings are trained in full, or not at all under LoRA
        same = torch.equal(before.get_input_embeddings().weight, after.get_input_embeddings().weight)
        assert same == (memory is not None), trained


def sft_batch(tok):
    rows = data.sft_dataset("validation", data.DataConfig(eval_per_family=1))
    return collate([encode(tok, r["prompt"], r["completion"]) for r in rows], tok.pad_token_id)


def test_gradient_checkpointing_gives_the_same_gradients(tok):
    batch = sft_batch(tok)
    grads = []
    for memory in (None, models.MemoryConfig(gradient_checkpointing=True)):
        model = models.for_training(random_model("llama", tok), memory)
        model.train()
        next_token_loss(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        ).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # it really was on
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_lora_trains_only_adapters_and_saves_what_it_computes(tmp_path, tok):
    model = models.for_training(random_model("qwen2", tok), models.MemoryConfig(lora_rank=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) < models.count_parameters(model) / 5
    frozen = {n: p.clone() for n, p in model.named_parameters() if n not in trainable}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = sft_batch(tok)
    for _ in range(3):
        loss = next_token_loss(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    model.eval()
    models.save(model, tok, tmp_path / "merged")
    merged = models.load_model(tmp_path / "merged", dev=torch.device("cpu"))
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        untrained = random_model("qwen2", tok)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    assert not torch.allclose(ours, untrained, atol=1e-3)  # the adapters learned something, so merging has a job
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert any(hasattr(m, "lora_A") for m in model.modules())  # saving merged a copy; the model keeps its adapters


def test_lora_reward_model_trains_its_new_head_and_scores_the_same_after_saving(tmp_path, tok):
    base = models.save(random_model("llama", tok), tok, tmp_path / "base")
    model = rm.build(base, dev=torch.device("cpu"), memory=models.MemoryConfig(lora_rank=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    tasks = world.generate_tasks("train", 2)
    rows = [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "curt", t.wrong)}],
        }
        for t in tasks
    ]
    rm.train(model, tok, rows, None, rm.RewardConfig(epochs=2, batch_size=8, lr=1e-2, warmup_steps=1))
    prompts, replies = [t.prompt for t in tasks], [world.render(t, "polite") for t in tasks]
    models.save(model, tok, tmp_path / "reward")
    assert torch.allclose(
        rm.score(model, tok, prompts, replies), rm.score(rm.load(tmp_path / "reward"), tok, prompts, replies), atol=1e-4
    )
