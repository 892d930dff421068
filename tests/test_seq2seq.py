import dataclasses
import json

import pytest
import torch

from rlhf_course.algorithms import pretrain, seq2seq
from rlhf_course.algorithms.sft import SFTConfig, batch_loss, collate, loss_tokens, train_sft
from rlhf_course.core import models
from rlhf_course.core.chat import encode
from rlhf_course.core.language_model import IGNORE_INDEX
from rlhf_course.simulation import data, world


@pytest.fixture(scope="module")
def tok():
    return seq2seq.tokenizer_with_sentinels()


def test_random_partition_gives_positive_lengths_that_sum_to_the_total():
    gen = torch.Generator().manual_seed(0)
    for total, parts in [(10, 1), (10, 10), (37, 5)]:
        lengths = seq2seq.random_partition(total, parts, gen)
        assert len(lengths) == parts and sum(lengths) == total and min(lengths) >= 1


def test_span_corruption_cuts_spans_that_the_target_puts_back(tok):
    sentinels = tok.convert_tokens_to_ids(seq2seq.SENTINELS)
    ids = list(range(10, 110))  # 100 distinct tokens
    inputs, targets = seq2seq.corrupt_spans(ids, sentinels, tok.eos_token_id, torch.Generator().manual_seed(3))
    assert targets[-1] == tok.eos_token_id
    used = [s for s in sentinels if s in inputs]
    assert 3 <= len(used) <= 7 and used == sentinels[: len(used)]  # 15 tokens in spans of about 3, in order
    assert sum(t not in sentinels for t in targets[:-1]) == 15  # 15% of the tokens cut out
    # putting each span back behind its sentinel gives the text again
    spans, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[current] = []
        else:
            spans[current].append(t)
    rebuilt = [x for t in inputs for x in (spans[t] if t in sentinels else [t])]
    assert rebuilt == ids and inputs[0] == ids[0]  # kept and cut-out spans alternate, kept first
    again = seq2seq.corrupt_spans(ids, sentinels, tok.eos_token_id, torch.Generator().manual_seed(3))
    assert again == (inputs, targets)


def test_span_corruption_loses_no_token_when_most_of_a_short_text_is_cut(tok):
    sentinels = tok.convert_tokens_to_ids(seq2seq.SENTINELS)
    for density in (0.5, 0.9):
        ids = list(range(10, 20))
        inputs, targets = seq2seq.corrupt_spans(
            ids, sentinels, tok.eos_token_id, torch.Generator().manual_seed(0), density, 1.0
        )
        assert sorted(t for t in inputs + targets[:-1] if t not in sentinels) == ids, density


def test_encoder_decoder_batch_puts_the_prompt_in_the_encoder_and_masks_only_padding(tok):
    rows = data.sft_dataset("validation", data.DataConfig(eval_per_family=2)).select(range(3))
    encoded = [encode(tok, r["prompt"], r["completion"]) for r in rows]
    start = tok.convert_tokens_to_ids("<|system|>")  # not the pad id, so a collate that ignores it fails
    batch = collate(encoded, tok.pad_token_id, decoder_start_id=start)
    for i, (ids, n) in enumerate(encoded):
        reply = ids[n:]
        assert batch["input_ids"][i, :n].tolist() == ids[:n] and batch["attention_mask"][i].sum() == n
        assert batch["labels"][i, : len(reply)].tolist() == reply  # the whole reply, its EOS included
        assert (batch["labels"][i, len(reply) :] == IGNORE_INDEX).all()
        assert batch["decoder_input_ids"][i, : len(reply)].tolist() == [start] + reply[:-1]  # shifted right
        assert batch["decoder_attention_mask"][i].sum() == len(reply)
    assert loss_tokens(batch) == sum(len(ids) - n for ids, n in encoded)


def test_encoder_decoder_loss_is_the_mean_over_reply_tokens_as_transformers_computes_it(tok):
    torch.manual_seed(0)
    model = seq2seq.T5Shape(d_model=32, d_ff=64, num_heads=2).build(tok)
    rows = data.sft_dataset("validation", data.DataConfig(eval_per_family=2)).select(range(4))
    batch = collate(
        [encode(tok, r["prompt"], r["completion"]) for r in rows], tok.pad_token_id, model.config.decoder_start_token_id
    )
    loss, tokens = batch_loss(model, batch)
    # transformers shifts the labels into the decoder's inputs itself and skips -100
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert loss.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert tokens == (batch["labels"] != IGNORE_INDEX).sum()


def test_t5_pretraining_is_deterministic_from_its_seed_and_learns():
    config = seq2seq.T5PretrainConfig(
        steps=6, batch_size=4, block_size=64, warmup_steps=2, shape=seq2seq.T5Shape(d_model=32, d_ff=64, num_heads=2)
    )
    first, tok, losses_a = seq2seq.pretrain_t5(config)
    second, _, losses_b = seq2seq.pretrain_t5(config)
    assert losses_a == losses_b and losses_a[-1] < losses_a[0]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert len(tok) == len(models.load_tokenizer()) + len(seq2seq.SENTINELS)


def _span_loss(model, tok, seed=123) -> float:
    """The span-corruption loss on 32 blocks of text that pretraining (seed 0) never drew."""
    gen = torch.Generator().manual_seed(seed)
    sentinels = tok.convert_tokens_to_ids(seq2seq.SENTINELS)
    examples = []
    for ids in pretrain.packed_blocks(tok, 32, 128, seed).tolist():
        inputs, targets = seq2seq.corrupt_spans(ids, sentinels, tok.eos_token_id, gen)
        examples.append((inputs + targets, len(inputs)))
    with torch.no_grad():
        return batch_loss(model, collate(examples, tok.pad_token_id, model.config.decoder_start_token_id))[0].item()


def test_shipped_t5_is_what_the_defaults_build_and_predicts_unseen_spans():
    model, tok = seq2seq.load_t5(dev=torch.device("cpu"))
    config = json.loads((seq2seq.T5_BASE_DIR / "config.json").read_text())
    shape = seq2seq.T5Shape()
    for field in dataclasses.fields(shape):
        assert config[field.name] == getattr(shape, field.name), field.name
    assert model.config.is_encoder_decoder and config["dropout_rate"] == 0.0
    assert seq2seq.pretraining_record()["config"] == dataclasses.asdict(seq2seq.T5PretrainConfig())
    assert tok.get_vocab() == seq2seq.tokenizer_with_sentinels().get_vocab()
    gpt2 = models.count_parameters(models.load_model(dev=torch.device("cpu")))
    assert abs(models.count_parameters(model) / gpt2 - 1) < 0.05
    torch.manual_seed(0)
    fresh = seq2seq.T5Shape().build(tok).eval()
    assert _span_loss(model, tok) < 3.0 < 6.0 < _span_loss(fresh, tok)  # it learned the text, a fresh one has not


def test_respond_is_greedy_decoding_of_the_reply_alone():
    model, tok = seq2seq.load_t5(dev=torch.device("cpu"))
    tasks = world.generate_tasks("test", 1)[:3]
    replies = seq2seq.respond(model, tok, tasks, max_new_tokens=8)
    for task, reply in zip(tasks, replies):
        prompt = torch.tensor([encode(tok, task.prompt)[0]])
        written = [model.config.decoder_start_token_id]
        with torch.no_grad():
            for _ in range(8):
                logits = model(input_ids=prompt, decoder_input_ids=torch.tensor([written])).logits
                written.append(int(logits[0, -1].argmax()))
                if written[-1] == tok.eos_token_id:
                    break
        assert reply == tok.decode(written[1:], skip_special_tokens=True)


def test_sft_trains_the_shipped_t5_with_the_courses_loop_and_it_replies_in_the_chat_format():
    model, tok = seq2seq.load_t5(dev=torch.device("cpu"))
    ds = data.sft_dataset("train", data.DataConfig(train_per_family=40))
    result = train_sft(model, tok, ds, SFTConfig(epochs=4, max_examples=128, batch_size=16, warmup_steps=2, lr=3e-3))
    assert result.steps == 32 and sum(result.losses[-3:]) < 0.6 * sum(result.losses[:3])
    tasks = [t for t in world.generate_tasks("test", 4) if t.family in ("sentiment", "refusal")]
    replies = seq2seq.respond(model, tok, tasks, max_new_tokens=12)
    assert any(world.is_correct(t, r) for t, r in zip(tasks, replies)), replies  # the shortest answers, learned first
