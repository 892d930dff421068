import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_course.core import models


def test_shipped_model_loads_with_a_distinct_pad_token():
    tok = models.load_tokenizer()
    model = models.load_model(dev=torch.device("cpu"))
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.vocab_size == len(tok)
    assert (models.BASE_MODEL_DIR / "model.safetensors").stat().st_size < 8 * 2**20
    assert 0.5e6 < models.count_parameters(model) < 3e6


def test_chat_template_puts_the_reply_after_the_generation_prompt():
    tok = models.load_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], tokenize=False
    )
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>Hi<|end|><|assistant|>Hello<|end|>" and text.startswith(prompt)


def test_missing_model_directory_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="rlhf-course pretrain"):
        models.load_model(tmp_path / "nowhere")


def test_weights_other_than_safetensors_are_refused(tmp_path):
    model = GPT2LMHeadModel(GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=1))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle: never loaded
    with pytest.raises(FileNotFoundError, match="safetensors"):
        models.load_model(tmp_path)


def test_any_saved_causal_lm_directory_round_trips(tmp_path):
    tok = models.load_tokenizer()
    model = models.ModelConfig(n_layer=1, n_embd=16, n_head=2).build(tok)
    models.save(model, tok, tmp_path / "m")
    again = models.load_model(tmp_path / "m", dev=torch.device("cpu"))
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_a_model_directory_with_its_own_code_never_runs_it(tmp_path, monkeypatch):
    """A directory that names its own tokenizer class in Python: loading refuses it, even if asked "run it?" and
    a user would answer yes."""
    marker = tmp_path / "code_ran"
    (tmp_path / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "auto_map": {
                    "AutoConfig": "evil.EvilConfig",
                    "AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"],
                },
            }
        )
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "EvilTokenizer",
                "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]},
            }
        )
    )
    monkeypatch.setattr("builtins.input", lambda *args: "y")
    with pytest.raises(ValueError, match="trust_remote_code"):
        models.load_tokenizer(tmp_path)
    assert not marker.exists()
