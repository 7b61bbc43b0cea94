"""``scripts/bench_rollout.py --smoke`` (seconds): both static schedules draw the same tokens, the
new one computes no more forward passes, and in the multi-turn episode each computes the whole
conversation every turn (the prompt length: a quadratic sum)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_small_rollout_benchmark_compares_the_schedules_on_equal_tokens(tmp_path):
    args = ["--smoke", "--json", str(tmp_path / "r.json")]  # 4 rows in batches of 2, 1 repeat, 3 turns
    out = subprocess.run(
        [sys.executable, "scripts/bench_rollout.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "time / lockstep" in out.stdout  # the ratios to the first column
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
