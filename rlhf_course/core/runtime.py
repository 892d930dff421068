"""Where and how code runs: the one place that decides device, dtype, seeds and progress bars.

CPU runs in float32. CUDA runs with bfloat16 autocast (weights and optimizer state stay float32, the
matrix multiplies run in bf16), which is what the mixed-precision recipes of TRL and accelerate do.
Set ``RLHF_COURSE_DEVICE=cpu`` to force the CPU, ``RLHF_COURSE_AUTOCAST=fp32`` to run CUDA in plain
float32, ``RLHF_COURSE_DECODER`` to pick how generation keeps its KV cache (``language_model.generate``), and
``RLHF_COURSE_PROGRESS=0`` to hide progress bars. Under a multi-process launcher (see
``distributed``) each process takes the GPU of its ``LOCAL_RANK``, and only the first shows progress.

Importing this module takes cuDNN out of PyTorch's attention backends (``RLHF_COURSE_CUDNN_ATTENTION=1`` keeps
it). On the H200 the bench ran on (PyTorch 2.11), masked attention went to cuDNN's kernels, which build an
execution plan for every new shape, a tenth of a second or more each; the course's batches change length
from step to step and its KV cache grows by a column a step, so nearly every step is a new shape (bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
from tqdm.auto import tqdm

if os.environ.get("RLHF_COURSE_CUDNN_ATTENTION", "0") != "1":
    torch.backends.cuda.enable_cudnn_sdp(False)  # flash and memory-efficient attention need no per-shape plan


def device() -> torch.device:
    wanted = os.environ.get("RLHF_COURSE_DEVICE")
    if wanted:
        try:
            chosen = torch.device(wanted)
        except RuntimeError:
            raise ValueError(f"RLHF_COURSE_DEVICE={wanted!r} is not a device: expected cpu, cuda or cuda:N") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"RLHF_COURSE_DEVICE={wanted!r} asks for a GPU, but torch sees none here: unset it or set it to cpu"
            )
        return chosen
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"process LOCAL_RANK={local_rank} has no GPU of its own ({torch.cuda.device_count()} "
            "visible): launch at most one process per GPU, or set RLHF_COURSE_DEVICE=cpu"
        )
    return torch.device("cuda", local_rank)


def autocast_dtype(dev: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it; None (plain float32) elsewhere or when asked."""
    if os.environ.get("RLHF_COURSE_AUTOCAST", "bf16") == "fp32":
        return None
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(dev: torch.device):
    dtype = autocast_dtype(dev)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=dtype)


DECODERS = ("dynamic", "static", "compiled")


def decoder() -> str:
    """How ``generate`` decodes unless told: RLHF_COURSE_DECODER, else "dynamic" (a cache that grows a column
    a step). It starts at once; "compiled" decodes faster once compiled, but compiling takes tens of seconds,
    more than a lesson's few batches of decoding gain back (bench/RESULTS.md)."""
    wanted = os.environ.get("RLHF_COURSE_DECODER", "dynamic")
    if wanted not in DECODERS:
        raise ValueError(f"RLHF_COURSE_DECODER={wanted!r}: expected one of {', '.join(DECODERS)}")
    return wanted


def to_host(rows: list[dict]) -> list[dict]:
    """``rows`` with every 0-d tensor value read back as a Python float, in one transfer.

    Reading a GPU value waits for everything queued before it, so a loop that read its statistics every step
    would stall the GPU every step: trainers keep them as tensors and read them once, here.
    """
    cells = [(i, k) for i, row in enumerate(rows) for k, v in row.items() if isinstance(v, torch.Tensor)]
    if not cells:
        return rows
    where = rows[cells[0][0]][cells[0][1]].device  # they all live there, but a stray one is moved rather than refused
    values = torch.stack([rows[i][k].detach().to(where, torch.float64).reshape(()) for i, k in cells]).tolist()
    out = [dict(row) for row in rows]
    for (i, k), v in zip(cells, values):
        out[i][k] = v
    return out


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for sampling and shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress(iterable=None, **kwargs):
    """``tqdm.auto`` that honours RLHF_COURSE_PROGRESS (TQDM_DISABLE does not hide widget bars)."""
    show = (
        os.environ.get("RLHF_COURSE_PROGRESS", "1") not in ("0", "false", "no") and os.environ.get("RANK", "0") == "0"
    )
    return tqdm(iterable, disable=not show, **kwargs)
