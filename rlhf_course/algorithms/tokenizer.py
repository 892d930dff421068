"""A byte-level BPE tokenizer trained on the world's text, with a chat template.

Byte-level BPE (as in GPT-2) can encode any string, so learners may type anything; trained on the
world's text, almost every word of the world becomes a single token, which keeps sequences short
and training fast on a CPU. Digits are split one by one so that numbers are spelled consistently.

The pad token is distinct from the end-of-turn token: if they were the same, masking the padding
would also mask the end of every response and the model would never learn to stop.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from rlhf_course.simulation import world

PAD, EOS, USER, ASSISTANT, SYSTEM = "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = [PAD, EOS, USER, ASSISTANT, SYSTEM]

# Each turn is `<|role|>content<|end|>`; a generation prompt ends with `<|assistant|>`, so the model's
# reply is everything it writes up to and including `<|end|>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def training_text(seed: int = 0) -> list[str]:
    """Text the BPE merges are learned from: plain paragraphs plus every family's wording."""
    texts = world.pretraining_corpus(4000, seed)
    for split in world.SPLITS:
        for task in world.generate_tasks(split, 150, seed):
            texts.extend(m["content"] for m in task.messages)
            texts.extend(world.render(task, style) for style in world.STYLES)
    return texts


def train_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(training_text(seed), trainer=trainer)
    return wrap(bpe)


def wrap(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok
