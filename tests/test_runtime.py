"""runtime and optimization: the settings every trainer shares."""

import os
import subprocess
import sys

import pytest
import torch

from rlhf_course.core import optimization, runtime


def test_importing_the_course_takes_cudnn_out_of_attention_unless_asked():
    """cuDNN plans a kernel per attention shape on Hopper: the course's varying lengths would pay it every step."""
    probe = "import torch, rlhf_course.core.runtime; print(torch.backends.cuda.cudnn_sdp_enabled())"
    for setting, expected in (("0", "False"), ("1", "True")):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "RLHF_COURSE_CUDNN_ATTENTION": setting},
        ).stdout.strip()
        assert out == expected, (setting, out)


def test_to_host_reads_every_tensor_once_and_leaves_the_rest():
    rows = [
        {"step": 0, "loss": torch.tensor(0.5), "gold": 0.25},
        {"step": 1, "loss": torch.tensor(0.125, dtype=torch.float64), "accuracy": torch.tensor([1.0])},
    ]
    got = runtime.to_host(rows)
    assert got == [{"step": 0, "loss": 0.5, "gold": 0.25}, {"step": 1, "loss": 0.125, "accuracy": 1.0}]
    assert all(type(v) in (int, float) for row in got for v in row.values())
    assert isinstance(rows[0]["loss"], torch.Tensor)  # the caller's rows are not changed
    assert runtime.to_host([{"step": 3}]) == [{"step": 3}]


def test_adam_is_adamw_or_adam_with_the_given_settings_and_fused_only_on_a_gpu():
    weight = torch.nn.Parameter(torch.ones(3))
    decoupled = optimization.adam([weight], 1e-3, weight_decay=0.1)
    plain = optimization.adam([weight], 1e-3, eps=1e-5, decoupled=False)
    assert type(decoupled) is torch.optim.AdamW and decoupled.defaults["weight_decay"] == 0.1
    assert type(plain) is torch.optim.Adam and plain.defaults["eps"] == 1e-5 and plain.defaults["weight_decay"] == 0
    assert not decoupled.defaults["fused"]  # CPU parameters: PyTorch's own choice


def test_the_schedule_warms_up_then_decays_and_takes_no_warmup():
    def rates(warmup, total):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
        scheduler = optimization.warmup_then_decay(optimizer, warmup, total)
        seen = []
        for _ in range(total):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    assert rates(2, 4) == pytest.approx([0.5, 0.75, 0.5, 0.25])  # min(1, (s+1)/2) * (1 - s/4)
    assert rates(0, 4) == pytest.approx([1.0, 0.75, 0.5, 0.25])  # no warm-up: the full rate at once
    assert rates(1, 4) == rates(0, 4)
    with pytest.raises(ValueError, match="warmup_steps >= 0"):
        rates(-1, 4)
