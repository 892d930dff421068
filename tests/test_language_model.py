import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from rlhf_course.core import language_model as lm
from rlhf_course.core.language_model import generate, next_token_loss, pad_batch, top_p_filter

PAD, EOS = 0, 1


def tiny(kind="gpt2"):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=23, n_positions=64, n_embd=32, n_layer=2, n_head=2, pad_token_id=PAD, eos_token_id=EOS
            )
        ).eval()
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=23,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    ).eval()


def greedy_without_cache(model, prompt, steps):
    """The definition: re-run the whole sequence for every new token."""
    ids = list(prompt)
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] == EOS:
            break
    return ids[len(prompt) :]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cached_left_padded_generation_matches_the_definition(kind):
    model = tiny(kind)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    sequences, mask = generate(model, prompts, pad_id=PAD, eos_id=EOS, max_new_tokens=8)
    for row, prompt in enumerate(prompts):
        got = [t for t, m in zip(sequences[row].tolist(), mask[row].tolist()) if m]
        assert got == greedy_without_cache(model, prompt, 8)


# one compiled architecture: compiling takes seconds on a CPU
@pytest.mark.parametrize("kind, decoder", [("gpt2", "static"), ("llama", "static"), ("gpt2", "compiled")])
def test_static_cache_decoders_give_the_dynamic_decoders_tokens(kind, decoder):
    """Greedy and sampled, rows of different lengths that stop at different steps: the same tokens and masks."""
    model = tiny(kind)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [2] * 9]
    for temperature, seed in ((0.0, 0), (1.0, 0), (1.0, 7)):
        expected = generate(
            model,
            prompts,
            pad_id=PAD,
            eos_id=EOS,
            max_new_tokens=20,
            temperature=temperature,
            seed=seed,
            decoder="dynamic",
        )
        assert expected[1][:, -1].sum() < len(prompts) or temperature == 0  # some sampled rows stop early
        for _ in range(2):  # the second call reuses the cache (and the compiled step)
            got = generate(
                model,
                prompts,
                pad_id=PAD,
                eos_id=EOS,
                max_new_tokens=20,
                temperature=temperature,
                seed=seed,
                decoder=decoder,
            )
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_unknown_decoder_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="decoder must be one of"):
        generate(tiny(), [[5, 6]], pad_id=PAD, eos_id=EOS, max_new_tokens=2, decoder="fast")
    monkeypatch.setenv("RLHF_COURSE_DECODER", "fast")
    with pytest.raises(ValueError, match="RLHF_COURSE_DECODER='fast'"):
        generate(tiny(), [[5, 6]], pad_id=PAD, eos_id=EOS, max_new_tokens=2)


def test_sampling_is_seeded_and_top_p_restricts_choices():
    model = tiny()
    prompts = [[5, 6, 7]] * 16
    a, _ = generate(model, prompts, pad_id=PAD, eos_id=EOS, max_new_tokens=6, temperature=1.0, seed=3)
    b, _ = generate(model, prompts, pad_id=PAD, eos_id=EOS, max_new_tokens=6, temperature=1.0, seed=3)
    assert torch.equal(a, b)
    assert len({tuple(r) for r in a.tolist()}) > 1  # real sampling: rows differ
    tight, _ = generate(model, prompts, pad_id=PAD, eos_id=EOS, max_new_tokens=6, temperature=1.0, top_p=1e-6)
    greedy, _ = generate(model, prompts, pad_id=PAD, eos_id=EOS, max_new_tokens=6)
    assert torch.equal(tight, greedy)


def test_response_mask_stops_after_eos():
    model = tiny()
    sequences, mask = generate(model, [[5, 6]] * 4, pad_id=PAD, eos_id=EOS, max_new_tokens=10, temperature=2.0)
    for seq, m in zip(sequences.tolist(), mask.tolist()):
        response = [t for t, k in zip(seq, m) if k]
        if EOS in response:
            assert response.index(EOS) == len(response) - 1


def test_pad_batch_sides():
    ids, mask = pad_batch([[3, 4], [5]], pad_id=9, side="left")
    assert ids.tolist() == [[3, 4], [9, 5]] and mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")


def test_next_token_loss_matches_hugging_face():
    model = tiny()
    ids = torch.randint(2, 23, (3, 9))
    labels = ids.clone()
    labels[:, :3] = lm.IGNORE_INDEX
    out = model(input_ids=ids, labels=labels)
    assert torch.allclose(next_token_loss(out.logits, labels), out.loss, atol=1e-6)


def test_top_p_keeps_nucleus():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
