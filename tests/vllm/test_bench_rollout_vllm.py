"""``scripts/bench_rollout.py --columns static vllm``: in a multi-turn episode the vllm backend computes
only the conversation's tokens its prefix cache does not hold (whole 128-token blocks on the CPU), the
static backend the whole conversation every turn."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # tests/vllm/test_vllm_backend.py checks the cache hits in CI's time
def test_vllm_reuses_the_conversation_across_turns(tmp_path):
    args = ["--columns", "static", "vllm", "--smoke", "--turns", "4", "--json", str(tmp_path / "r.json")]
    out = subprocess.run(
        [sys.executable, "scripts/bench_rollout.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    turns = json.loads((tmp_path / "r.json").read_text())["turns"]
    assert turns[0]["vllm"] == turns[0]["static"] == turns[0]["prompt"]
    for t in turns[1:]:
        assert t["static"] == t["prompt"]
        # the observation (new minus the 4 generated tokens, which were cached when generated), plus
        # at most the part of the conversation's last block that was not full
        assert t["new"] - 4 <= t["vllm"] < t["new"] + 128, t
    assert sum(t["vllm"] for t in turns) < sum(t["static"] for t in turns)
