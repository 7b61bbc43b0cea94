"""``scripts/bench_trl.py --quick``: nemo_craft beside TRL (GRPO, SDPO) runs end to end, every
phase is timed, and both sides generate exactly the same number of completion tokens; the same
with SmolLM2-135M-Instruct's real weights (``--model smollm2``) on both sides, and with vLLM
generating on both sides (``--vllm``, where vLLM is installed; refused in one line elsewhere)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = ("nemo_craft:grpo", "trl:grpo", "nemo_craft:sdar", "nemo_craft:craft", "trl:sdpo")


@pytest.fixture
def trl():
    """The runs beside TRL need the ``bench`` extra (pip install -e .[bench]), which no CI job
    installs: they are slow as well. The refusal test below needs neither TRL nor time."""
    return pytest.importorskip("trl", reason="TRL is in the bench extra: pip install -e .[bench]")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_benchmark_times_every_phase_on_equal_tokens(tmp_path, trl):
    out = subprocess.run(
        [sys.executable, "scripts/bench_trl.py", "--quick", "--json", str(tmp_path / "r.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
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
    assert set(pairs) == {
        ("nemo_craft:grpo", "trl:grpo"),
        ("nemo_craft:sdar", "trl:sdpo"),
        ("nemo_craft:craft", "trl:sdpo"),
    }
    for r in pairs.values():
        assert r["same_tokens"]
        assert all(
            math.isfinite(r[c][p]) and r[c][p] > 0 for c in ("wall", "cpu") for p in ("gen", "logp", "train", "total")
        )
    assert "ratio nemo_craft / TRL" in out.stdout and "TOKEN COUNTS DIFFER" not in out.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_smollm2_on_both_sides_gives_equal_prompts_and_completion_tokens(tmp_path, trl):
    """The real model can stop; its head is edited so that neither sampler draws a stop id
    (``make_smollm2_checkpoint``): every completion runs to L tokens on both sides."""
    cmd = [
        sys.executable,
        "scripts/bench_trl.py",
        "--model",
        "smollm2",
        "--tasks",
        "1",
        "--group",
        "2",
        "--length",
        "8",
        "--micro-batch",
        "2",
        "--repeats",
        "1",
        "--runs",
        "nemo_craft:craft",
        "trl:sdpo",
        "--json",
        str(tmp_path / "r.json"),
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1100, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["spec"]["model"] == "smollm2" and report["spec"]["lr"] == 1e-6
    runs = report["runs"]
    for name, run in runs.items():
        assert run["completion_tokens_per_step"] == [2 * 8] * 2, name  # warm-up + 1 timed step
    # SmolLM2's own BPE and ChatML template (with its default system message) render the same ids.
    assert runs["nemo_craft:craft"]["prompt_tokens"] == runs["trl:sdpo"]["prompt_tokens"] > 2 * 200
    [(ours, peer, ratio)] = report["ratios"]
    assert (ours, peer) == ("nemo_craft:craft", "trl:sdpo") and ratio["same_tokens"]
    assert "SmolLM2-135M-Instruct" in out.stdout and "TOKEN COUNTS DIFFER" not in out.stdout


def _vllm_problem():
    from nemo_craft.rollout.vllm_backend import vllm_problem

    env = dict(os.environ)
    try:
        return vllm_problem()
    finally:  # vllm_problem sets the engine's defaults in this process's environment
        os.environ.clear()
        os.environ.update(env)


def test_vllm_runs_are_refused_in_one_line_where_vllm_is_missing(tmp_path):
    """vLLM is hidden by a ``vllm`` package that fails to import (first on the path), so the
    refusal runs in every CI job, with vLLM installed or not."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    out = subprocess.run(
        [sys.executable, "scripts/bench_trl.py", "--quick", "--vllm", "--runs", "trl:grpo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 2 and out.stdout == "", out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("bench_trl: --vllm cannot run here: vLLM is not installed (hidden by the test)"), line
    assert "bash scripts/install.sh vllm" in line


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_vllm_on_both_sides_runs_beside_the_runs_without(tmp_path, trl):
    """``--vllm`` adds RUN:vllm for each run: nemo_craft's rollout.generation.backend=vllm and TRL's colocated
    vLLM engine, the same completion tokens as without, each compared with its own kind."""
    problem = _vllm_problem()
    if problem is not None:
        pytest.skip(problem)
    cmd = [sys.executable, "scripts/bench_trl.py", "--quick", "--vllm", "--runs", "nemo_craft:grpo", "trl:grpo"]
    out = subprocess.run(
        [*cmd, "--json", str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True, timeout=1100
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    report = json.loads((tmp_path / "r.json").read_text())
    runs, spec = report["runs"], report["spec"]
    assert list(runs) == ["nemo_craft:grpo", "trl:grpo", "nemo_craft:grpo:vllm", "trl:grpo:vllm"]
    budget = spec["tasks"] * spec["group"] * spec["length"]
    for name, run in runs.items():
        assert run["completion_tokens_per_step"] == [budget] * (spec["repeats"] + 1), name
        assert run["wall"]["total"] > 0 and run["cpu"]["total"] > 0, name
    pairs = {(ours, peer): r for ours, peer, r in report["ratios"]}
    assert set(pairs) == {("nemo_craft:grpo", "trl:grpo"), ("nemo_craft:grpo:vllm", "trl:grpo:vllm")}
    assert all(r["same_tokens"] for r in pairs.values())
    assert "without vLLM | with vLLM on both sides" in out.stdout
