"""``scripts/bench_rollout.py`` on small settings: both static schedules draw the same tokens, the
new one computes no more forward passes, and in the multi-turn episode each computes the whole
conversation every turn (the prompt length: a quadratic sum)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_small_rollout_benchmark_compares_the_schedules_on_equal_tokens(tmp_path):
    args = ["--rows", "4", "--max-batch", "2", "--repeats", "1", "--budget", "8", "--max-history", "1"]
    args += ["--turns", "3", "--turn-tokens", "4", "--json", str(tmp_path / "r.json")]
    out = subprocess.run(
        [sys.executable, "scripts/bench_rollout.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "every column drew the same tokens: yes" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    rollout = report["rollout"]
    assert rollout["static"]["tokens"] == rollout["lockstep"]["tokens"]
    assert rollout["static"]["forwards"] <= rollout["lockstep"]["forwards"]
    turns = report["turns"]
    assert [t["turn"] for t in turns] == [0, 1, 2]
    assert turns[0]["static"] == turns[0]["lockstep"] == turns[0]["prompt"] == turns[0]["new"]
    for t in turns[1:]:
        assert t["static"] == t["lockstep"] == t["prompt"] > t["new"]
