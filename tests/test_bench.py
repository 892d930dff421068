"""The benchmark harness (bench/run.py) in its tiny configuration: every row measured, in one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_benchmark_measures_every_step_against_trl(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--config", "tiny", "--out", str(out)], check=True,
                   env={**os.environ, "RLHF_COURSE_DEVICE": "cpu"}, timeout=600)
    report = json.loads(out.read_text())
    rows = {r["step"]: r for r in report["results"]}
    assert list(rows) == ["SFT", "reward", "DPO", "GRPO", "PPO", "decode"]
    for step in ("SFT", "reward", "DPO", "GRPO"):  # TRL has these four
        assert rows[step]["course"] > 0 and rows[step]["trl"] > 0
        assert abs(rows[step]["course/trl"] - rows[step]["course"] / rows[step]["trl"]) < 1e-9
    assert rows["PPO"]["course"] > 0 and rows["PPO"]["trl"] is None  # TRL 1.16 has no PPO
    assert rows["decode"]["course"] > 0 and rows["decode"]["plain generate"] > 0
    assert report["trl"] and report["device"].startswith("CPU")
