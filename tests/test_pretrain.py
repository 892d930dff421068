import torch

from rlhf_course.algorithms import pretrain, tokenizer
from rlhf_course.core import models


def test_shipped_tokenizer_is_rebuilt_exactly_from_its_seed():
    assert tokenizer.train_tokenizer().get_vocab() == models.load_tokenizer().get_vocab()


def test_pretraining_is_deterministic_from_its_seed():
    tok = models.load_tokenizer()
    config = pretrain.PretrainConfig(
        steps=4, batch_size=4, warmup_steps=2, model=models.ModelConfig(n_layer=1, n_embd=32, n_head=2)
    )
    first, _, losses_a = pretrain.pretrain(config, tok=tok)
    second, _, losses_b = pretrain.pretrain(config, tok=tok)
    assert losses_a == losses_b and losses_a[-1] < losses_a[0]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_lr_schedule_warms_up_and_decays_to_a_tenth():
    lrs = [pretrain.cosine_lr(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0 and abs(lrs[-1] - 0.1) < 0.01
