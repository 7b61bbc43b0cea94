"""``scripts/bench_moe.py --quick``: the tiny MoE's RL step and a dense model of the same active
size run side by side, every phase timed, and the ratio printed."""

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_moe_benchmark_runs_both_models_and_prints_the_ratio(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/bench_moe.py", "--quick", "--json", str(tmp_path / "r.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "MoE / dense: step " in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    moe, dense = report["moe"], report["dense"]
    # same active size: the dense MLP is as wide as top-k experts; the MoE adds only its routers
    routers = 4 * 128 * 8  # layers x hidden x experts of the tiny MoE
    assert moe["active_params"] == dense["params"] + routers
    assert moe["params"] > moe["active_params"] and dense["active_params"] == dense["params"]
    for res in (moe, dense):
        assert len(res["steps"]) == 1
        for phase in ("rollout_s", "experience_s", "train_s", "step_s"):
            assert math.isfinite(res["median"][phase]) and res["median"][phase] > 0, phase
    assert report["ratio"]["step"] == moe["median"]["step_s"] / dense["median"]["step_s"]
