"""``nemo-craft train`` with ``rollout.generation.backend=vllm`` as users launch it (torchrun, the tp2 preset:
sequence parallel, the distributed optimizer): the engine is refit after every step, and a run
stopped after step 1 and resumed continues bit for bit (per-request seeds: the resumed run draws
the same samples). A layout the refit does not serve is refused in one line."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e import _launch as launch

VLLM = [
    "parallel=tp2",
    "rollout.generation.backend=vllm",
    "rollout.generation.kv_cache_gb=0.25",
    "rollout.generation.max_batch_size=8",
]
STEPS = ["trainer.max_steps=2", "checkpoint.save_every=1", "checkpoint.keep_last=null"]


def test_vllm_run_stops_and_resumes_bit_for_bit(tmp_path):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    launch.train(2, straight, VLLM + STEPS)
    launch.train(2, cut, VLLM + STEPS, stop_after_first_step=True)
    launch.train(2, cut, VLLM + STEPS + ["checkpoint.resume=auto"])
    launch.assert_same_bits(launch.checkpoint(straight, 2), launch.checkpoint(cut, 2))
    rows = launch.metrics(straight)
    assert rows == launch.metrics(cut)
    trained = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in trained] == [1, 2]
    assert all(0.0 <= r["rollout/prefix_cache_hit_rate"] <= 1.0 for r in trained)
    # the engine's log-probs of its samples are the trainer's pi_old at every step: at step 2 only
    # if the engine was refit with step 1's update
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in trained), [r["rollout/logprob_diff_max"] for r in trained]


def test_layout_the_refit_does_not_serve_is_refused(tmp_path):
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "nemo_craft", "train", f"run_dir={tmp_path}", "rollout.generation.backend=vllm"),
            *("parallel=tp8_pp2", "parallel.tensor_model_parallel_size=2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "pipeline_model_parallel_size=2" in lines[-1] and "rollout.generation.backend=static" in lines[-1], lines[-1]
