"""Models: the tiny GPT-2 the course ships, and loading any local causal LM in its place.

The shipped base model lives in ``rlhf_course/artifacts/base_model`` as a normal Hugging Face model
directory (``config.json``, ``model.safetensors``, tokenizer files), so every function that takes a
model path accepts any other local ``AutoModelForCausalLM`` directory too. Nothing is downloaded:
loading is local-only, from safetensors, and never runs remote code.

Models larger than the course's can be loaded for training with memory savers (``MemoryConfig``): gradient
checkpointing, and LoRA adapters through peft, merged back into the weights when the model is saved, so
every saved model is an ordinary model directory that the next stage loads as usual.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from rlhf_course.core import runtime

# Loading or saving a few-MB model takes milliseconds; its progress bars would only add noise (and
# changing timings) to every lesson's output. The course's own bars show what is slow.
hf_logging.disable_progress_bar()

ARTIFACTS = Path(__file__).parent.parent / "artifacts"  # rlhf_course/artifacts
BASE_MODEL_DIR = ARTIFACTS / "base_model"


@dataclass
class ModelConfig:
    """Shape of the course's GPT-2: 0.94M parameters, about 10k training tokens/s on 2 CPU cores."""

    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128

    def build(self, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=self.n_positions,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            # Dropout off: RL fine-tuning compares log-probabilities of two forward passes, and
            # dropout would make them differ for no reason (Huang et al.'s detail). Tiny data, tiny model.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config)


def check_model_dir(path: Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"No model at {path}: expected a Hugging Face model directory with config.json and "
            "model.safetensors. Run `rlhf-course pretrain` to rebuild the base model, or pass the "
            "directory of a model saved with save_pretrained()."
        )
    return path


def load_tokenizer(path: str | Path = BASE_MODEL_DIR) -> PreTrainedTokenizerFast:
    path = check_model_dir(path)
    if not any(
        (path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    ):
        raise FileNotFoundError(
            f"{path} has no tokenizer files (tokenizer.json or tokenizer_config.json): save the "
            "model's tokenizer into it with tokenizer.save_pretrained()"
        )
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        raise ValueError(
            f"The tokenizer at {path} needs a pad token distinct from its EOS token; otherwise masking "
            "padding also masks the end of each response."
        )
    return tok


@dataclass
class MemoryConfig:
    """Memory savers for training models larger than the course's; both off by default, as the course's
    model needs neither. LoRA trains rank-``lora_rank`` adapters on every linear layer of the transformer
    (not the output layer) and freezes the rest; a reward model's new score head is trained in full."""

    gradient_checkpointing: bool = False  # recompute activations in the backward pass instead of keeping them
    lora_rank: int = 0  # 0: train every weight
    lora_alpha: float = 16.0


def for_training(model, memory: MemoryConfig | None, task_type: str = "CAUSAL_LM"):
    """``model`` with ``memory``'s savers applied: under LoRA a peft model wrapping it (``task_type``
    ``"SEQ_CLS"`` for a reward model), otherwise the model itself."""
    if memory is None:
        return model
    if memory.gradient_checkpointing:
        # non-reentrant checkpointing also works when the inputs need no gradient (frozen embeddings under LoRA);
        # transformers 5.2x renamed the method, and the old name warns
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if memory.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=memory.lora_rank, lora_alpha=memory.lora_alpha, target_modules="all-linear", task_type=task_type
            ),
        )
    return model


def backbone(model):
    """The transformer body that returns hidden states, of a causal LM or a classifier, under peft or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper's model
    return inner.base_model


def load_model(path: str | Path = BASE_MODEL_DIR, dev: torch.device | None = None, memory: MemoryConfig | None = None):
    """Any local causal LM directory, loaded from safetensors onto ``dev`` (default: runtime.device()),
    with ``memory``'s savers applied when it is to be trained."""
    path = check_model_dir(path)
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} has no .safetensors weights; the course loads safetensors only.")
    for weights in path.glob("*.safetensors"):
        try:
            safe_open(weights, framework="pt").keys()
        except Exception as err:  # safetensors raises its own error type, which names neither file nor fix
            raise ValueError(
                f"{weights} is not a readable safetensors file ({err}): it was cut short or "
                "overwritten; save the model again or rebuild it"
            ) from None
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
    )
    return for_training(model.to(dev or runtime.device()), memory)


def save(model, tokenizer, path: str | Path) -> Path:
    """Save as an ordinary model directory (and the tokenizer, if given). LoRA adapters are merged into a
    copy of the weights, so the model saved can go on training."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def context_length(model) -> int | None:
    """How many tokens the model can attend to (GPT-2 calls it n_positions, most others
    max_position_embeddings); None for a model with relative positions only, such as T5."""
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
