"""T5 in miniature: an encoder-decoder pretrained on the world's text by span corruption (lesson 02).

The decoder-only GPT-2 reads prompt and reply as one sequence. T5 splits them: a bidirectional
encoder reads the input, and a decoder writes the output while attending to it. Its pretraining
task (Raffel et al. 2020) uses that split. Random spans of a text, 15% of its tokens in spans of
about 3, are cut out and each replaced by a sentinel token. The encoder reads what is left, and the
decoder writes the missing spans, each behind its sentinel:

    text:    The wise owl lives in the old forest .
    encoder: The wise <|span_0|> in the old <|span_1|> .
    decoder: <|span_0|> owl lives <|span_1|> forest <|end|>

The model here has the course's tokenizer (plus the sentinels) and about the GPT-2's parameter
count. Instruction tuning then runs through ``sft.train_sft`` unchanged, since that loop accepts
encoder-decoders. The shipped model (``artifacts/t5_base``) is what ``rlhf-course pretrain-t5``
writes with its defaults.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from rlhf_course.algorithms import sft
from rlhf_course.algorithms.pretrain import optimize, packed_blocks
from rlhf_course.core import models, runtime
from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import pad_batch

T5_BASE_DIR = models.ARTIFACTS / "t5_base"
SENTINELS = [f"<|span_{k}|>" for k in range(16)]  # more than a block's spans ever need


@dataclass
class T5Shape:
    """The encoder-decoder's shape: 2 + 2 layers of width 128 have about the parameters of the course's
    4-layer GPT-2 (a decoder layer has cross-attention besides its own)."""

    num_layers: int = 2  # encoder layers
    num_decoder_layers: int = 2
    d_model: int = 128
    d_ff: int = 384
    num_heads: int = 4

    def build(self, tokenizer) -> T5ForConditionalGeneration:
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=self.d_model,
            d_kv=self.d_model // self.num_heads,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            dropout_rate=0.0,  # as the GPT-2's: tiny model, tiny data
            feed_forward_proj="relu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,  # T5's convention: the decoder starts from padding
        )
        return T5ForConditionalGeneration(config)


@dataclass
class T5PretrainConfig:
    steps: int = 2000
    batch_size: int = 32
    block_size: int = 128  # tokens of text per example, before corruption
    noise_density: float = 0.15  # the share of tokens cut out
    mean_span: float = 3.0  # their mean span length
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    shape: T5Shape = field(default_factory=T5Shape)


def tokenizer_with_sentinels(path: str | Path = models.BASE_MODEL_DIR):
    """The course's tokenizer (the base model's) with the sentinel tokens added after its vocabulary."""
    tok = models.load_tokenizer(path)
    tok.add_tokens(SENTINELS, special_tokens=True)
    return tok


def random_partition(total: int, parts: int, gen: torch.Generator) -> list[int]:
    """``parts`` positive lengths summing to ``total``, uniformly at random among such splits."""
    cuts = torch.randperm(total - 1, generator=gen)[: parts - 1].sort().values + 1  # distinct cut points
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([total])])
    return bounds.diff().tolist()


def corrupt_spans(
    ids: list[int], sentinel_ids: list[int], eos_id: int, gen: torch.Generator, density: float = 0.15, mean_span=3.0
) -> tuple[list[int], list[int]]:
    """(encoder input, decoder target) of span corruption: kept and cut-out spans alternate, kept first,
    as in T5; every cut-out span becomes a sentinel in the input and follows that sentinel in the target."""
    n_noise = min(len(ids) - 1, max(1, round(len(ids) * density)))
    # every span needs a token of its own, cut out and kept alike, and a sentinel
    n_spans = min(len(sentinel_ids), n_noise, len(ids) - n_noise, max(1, round(n_noise / mean_span)))
    noise_lengths = random_partition(n_noise, n_spans, gen)
    keep_lengths = random_partition(len(ids) - n_noise, n_spans, gen)
    inputs, targets, start = [], [], 0
    for sentinel, keep, noise in zip(sentinel_ids, keep_lengths, noise_lengths):
        inputs += ids[start : start + keep] + [sentinel]
        targets += [sentinel] + ids[start + keep : start + keep + noise]
        start += keep + noise
    return inputs, targets + [eos_id]


def pretrain_t5(config: T5PretrainConfig = T5PretrainConfig(), on_step=None):
    """Train a fresh encoder-decoder by span corruption; returns (model, tokenizer, losses).

    Every example is a fresh block of world text (``pretrain.packed_blocks``), so no text is seen twice,
    and the loss is SFT's encoder-decoder loss (``sft.batch_loss``) on the cut-out spans.
    """
    runtime.seed_everything(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    tok = tokenizer_with_sentinels()
    model = config.shape.build(tok).to(runtime.device())
    sentinel_ids = tok.convert_tokens_to_ids(SENTINELS)
    blocks = packed_blocks(tok, config.steps * config.batch_size, config.block_size, config.seed).tolist()

    def batch_loss(step: int) -> torch.Tensor:
        examples = []
        for ids in blocks[step * config.batch_size : (step + 1) * config.batch_size]:
            inputs, targets = corrupt_spans(
                ids, sentinel_ids, tok.eos_token_id, gen, config.noise_density, config.mean_span
            )
            examples.append((inputs + targets, len(inputs)))  # sft.collate's (ids, prompt length)
        batch = sft.collate(examples, tok.pad_token_id, model.config.decoder_start_token_id)
        return sft.batch_loss(model, batch)[0]

    # the GPT-2's loop, optimizer and settings, so the two differ in architecture and objective only
    return model, tok, optimize(model, config, batch_loss, "pretrain-t5", on_step)


def load_t5(path: str | Path = T5_BASE_DIR, dev: torch.device | None = None):
    """A local encoder-decoder directory, from safetensors, with its tokenizer: (model, tokenizer)."""
    path = models.check_model_dir(path)
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} has no .safetensors weights; the course loads safetensors only.")
    model = AutoModelForSeq2SeqLM.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
    )
    return model.to(dev or runtime.device()).eval(), models.load_tokenizer(path)


@torch.no_grad()
def respond(model, tokenizer, tasks: list, *, batch_size: int = 64, max_new_tokens: int = 40) -> list[str]:
    """The encoder-decoder's greedy reply to each task: the chat-formatted prompt goes to the encoder,
    and the decoder writes until ``<|end|>``."""
    model.eval()
    dev = next(model.parameters()).device
    replies = []
    for start in range(0, len(tasks), batch_size):
        prompts = [encode(tokenizer, task.prompt)[0] for task in tasks[start : start + batch_size]]
        input_ids, attention_mask = pad_batch(prompts, tokenizer.pad_token_id, side="right")
        out = model.generate(
            input_ids=input_ids.to(dev),
            attention_mask=attention_mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )  # (batch, 1 + reply): the start token, then the reply
        replies.extend(tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True))
    return replies


def span_example(tok, text: str, seed: int = 0) -> tuple[str, str]:
    """One sentence corrupted as in pretraining, decoded: (what the encoder reads, what the decoder writes)."""
    gen = torch.Generator().manual_seed(seed)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    inputs, targets = corrupt_spans(ids, tok.convert_tokens_to_ids(SENTINELS), tok.eos_token_id, gen)
    return tok.decode(inputs), tok.decode(targets)


def main(out: Path, config: T5PretrainConfig) -> Path:
    """Pretrain and save the model, with ``pretraining.json`` beside it: the settings, the time, the last losses."""
    start = time.time()
    model, tok, losses = pretrain_t5(config)
    models.save(model, tok, out)
    last = sum(losses[-20:]) / len(losses[-20:])
    record = {"config": dataclasses.asdict(config), "seconds": round(time.time() - start, 1), "final_loss": last}
    (Path(out) / "pretraining.json").write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"pretrained a {models.count_parameters(model):,}-parameter encoder-decoder for {config.steps} steps in "
        f"{record['seconds']:.0f}s; final loss {last:.3f}; saved to {out}"
    )
    return out


def pretraining_record(path: str | Path = T5_BASE_DIR) -> dict:
    """What ``main`` wrote beside the model: ``{"config", "seconds", "final_loss"}``."""
    return json.loads((Path(path) / "pretraining.json").read_text())
