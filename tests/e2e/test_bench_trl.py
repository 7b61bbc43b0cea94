"""``scripts/bench_trl.py --quick``: nemo_craft beside TRL (GRPO, SDPO) runs end to end, every
phase is timed, and both sides generate exactly the same number of completion tokens."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[2]
RUNS = ("nemo_craft:grpo", "trl:grpo", "nemo_craft:sdar", "nemo_craft:craft", "trl:sdpo")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_benchmark_times_every_phase_on_equal_tokens(tmp_path):
    out = subprocess.run([sys.executable, "scripts/bench_trl.py", "--quick", "--json", str(tmp_path / "r.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=1100, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    report = json.loads((tmp_path / "r.json").read_text())
    spec = report["spec"]
    n, budget = spec["tasks"] * spec["group"], spec["tasks"] * spec["group"] * spec["length"]
    assert set(report["runs"]) == set(RUNS)
    for name, run in report["runs"].items():
        assert "error" not in run, (name, run.get("error"))
        for clock in ("wall", "cpu"):  # wall-clock and process CPU seconds
            t = run[clock]
            for phase in ("gen", "logp", "train", "total"):
                assert math.isfinite(t[phase]) and t[phase] > 0, (name, clock, phase, t[phase])
            assert t["total"] == pytest.approx(t["gen"] + t["logp"] + t["train"], rel=1e-6), (name, clock)
        # Warm-up step included: N*G completions, each exactly L tokens (the checkpoint cannot emit EOS).
        assert run["completions_per_step"] == [n] * (spec["repeats"] + 1), name
        assert run["completion_tokens_per_step"] == [budget] * (spec["repeats"] + 1), name
        assert run["peak_rss_mib"] > 0
    # The same prompts on both sides, rendered to the same ids by the same chat template.
    assert len({run["prompt_tokens"] for run in report["runs"].values()}) == 1
    pairs = {(ours, peer): r for ours, peer, r in report["ratios"]}
    assert set(pairs) == {("nemo_craft:grpo", "trl:grpo"), ("nemo_craft:sdar", "trl:sdpo"),
                          ("nemo_craft:craft", "trl:sdpo")}
    for r in pairs.values():
        assert r["same_tokens"]
        assert all(math.isfinite(r[c][p]) and r[c][p] > 0 for c in ("wall", "cpu")
                   for p in ("gen", "logp", "train", "total"))
    assert "ratio nemo_craft / TRL" in out.stdout and "TOKEN COUNTS DIFFER" not in out.stdout
