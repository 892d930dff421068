"""The benchmark harness (bench/run.py) in its tiny configuration: every row measured, in one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402


def test_tiny_benchmark_measures_every_step_against_trl(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--config", "tiny", "--out", str(out)],
        check=True,
        env={**os.environ, "RLHF_COURSE_DEVICE": "cpu"},
        timeout=600,
    )
    report = json.loads(out.read_text())
    rows = {r["step"]: r for r in report["results"]}
    big = [step for step in rows if step.startswith("PPO ")]
    assert (
        list(rows)
        == ["decode dynamic", "decode static", "decode compiled", "GRPO", "PPO", *big, "SFT", "reward", "DPO"]
        and len(big) == 1
    )
    for step, row in rows.items():
        for side in ("course", "baseline"):
            measured = row[side]
            if measured is None:
                continue
            assert "error" not in measured, f"{step}, {side}: {measured.get('error')}"
            assert measured["whole"] > 0 and measured["seconds_long"] > 0 and measured["seconds_short"] > 0
            if measured["steady"] is not None:  # None only when the long run was no slower than the short one
                assert measured["steady"] > 0 and measured["setup_s"] >= 0
    for step in ("SFT", "reward", "DPO", "GRPO"):  # TRL has these four
        assert rows[step]["baseline_name"] == "TRL" and rows[step]["baseline"]["whole"] > 0
    assert rows["PPO"]["baseline"] is None  # TRL 1.16 has no PPO
    assert rows[big[0]]["parameters"] > 0
    assert all(rows[f"decode {d}"]["baseline_name"] == "model.generate" for d in ("dynamic", "static", "compiled"))
    assert report["trl"] and report["device"].startswith("CPU")


def test_steady_state_separates_the_setup_from_the_rate(monkeypatch):
    """A job that costs 2 s once and 0.5 s per unit of work: 2 units/s in steady state, 2 s of setup."""
    clock = {"now": 0.0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)

    def job(n):
        clock["now"] += 2.0 + 0.5 * n

    measured = bench.steady_state(job, 4, 20, lambda n: n)
    assert measured["steady"] == 2.0 and measured["setup_s"] == 2.0
    assert measured["whole"] == 20 / 12.0  # the long run's average, setup included
