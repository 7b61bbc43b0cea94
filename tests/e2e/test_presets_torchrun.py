"""The shipped parallel presets, launched as users launch them: ``torchrun -m nemo_craft train``.

Each preset keeps its own settings (sequence parallel, distributed optimizer, overlapped
gradient reduce and parameter gather); only the tensor-parallel size of the TP8 presets and
the data-parallel size shrink to fit 2 to 4 CPU ranks (see ``_launch``). Checkpoints are
compared as whole tensors, so runs at different layouts compare directly.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.e2e import _launch as launch

# name: (ranks, overrides). DP = ranks / (TP * PP).
LAYOUTS = {
    "tp2_dp2": (4, ["parallel=tp2"]),
    "tp2_pp2": (4, ["parallel=tp8_pp2", "parallel.tensor_model_parallel_size=2"]),
    "pp2": (2, ["parallel=tp8_pp2", "parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false"]),
    "dp2": (2, ["parallel=dp"]),
}
# CI runs one layout (TP and PP at once, then TP1); the rest are `slow`. The dp preset's
# distributed optimizer and overlaps run in CI through the overlap test below.
QUICK = ("tp2_pp2",)
STEPS = ["trainer.max_steps=2", "checkpoint.save_every=1", "checkpoint.keep_last=null"]


def _layouts():
    return [pytest.param(name, marks=() if name in QUICK else pytest.mark.slow) for name in LAYOUTS]


@pytest.mark.parametrize("name", _layouts())
def test_stop_resume_and_resume_at_one_rank(tmp_path, name):
    """Stopped after step 1 (stop file), resumed from its checkpoint: step 2 is the uninterrupted
    run's, bit for bit: weights, optimizer state, pi_ref, controller, scheduler, every metric.
    The same step-1 checkpoint also resumes at one rank (TP1 PP1 DP1): pi_ref and the weights are
    the saved ones, resharded, and training goes on from them."""
    ranks, layout = LAYOUTS[name]
    straight, cut, moved = tmp_path / "straight", tmp_path / "cut", tmp_path / "moved"
    launch.train(ranks, straight, layout + STEPS)
    launch.train(ranks, cut, layout + STEPS, stop_after_first_step=True)
    assert not (cut / "checkpoints" / "step_000002").exists()
    shutil.copytree(cut, moved)
    launch.train(ranks, cut, layout + STEPS + ["checkpoint.resume=auto"])
    a, b = launch.checkpoint(straight, 2), launch.checkpoint(cut, 2)
    launch.assert_same_bits(a, b)
    assert launch.metrics(straight) == launch.metrics(cut)
    # pi_ref is written once a run: later checkpoints hard-link its files (also after a resume)
    for run in (straight, cut):
        ref1, ref2 = (run / "checkpoints" / f"step_{s:06d}" / "reference" / ".metadata" for s in (1, 2))
        assert os.stat(ref1).st_ino == os.stat(ref2).st_ino
    # pi_ref is the initial policy throughout, and the policy has moved away from it
    first = launch.checkpoint(straight, 1)
    refs = [k for k in a if k.startswith("reference/")]
    assert refs and all(torch.equal(a[k], first[k]) for k in refs)
    assert any(
        not torch.equal(a[k], a["reference/" + k[len("dist/") :]])
        for k in a
        if k.startswith("dist/decoder") and "reference/" + k[len("dist/") :] in a
    )

    # the optimizer kind is the checkpoint's (its state format): one rank, still distributed
    launch.train(
        1, moved, ["parallel=single", "parallel.use_distributed_optimizer=true"] + STEPS + ["checkpoint.resume=auto"]
    )
    after = launch.checkpoint(moved, 2)
    assert all(torch.equal(first[k], after[k]) for k in refs)  # pi_ref resharded exactly
    lr = after["state"]["scheduler"]["max_lr"]
    for k in (k for k in first if k.startswith("dist/decoder") and "optimizer" not in k):
        assert (after[k] - first[k]).abs().max() <= 1.5 * lr, k  # one Adam step from the saved weights
    rows = launch.metrics(moved)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    # KL(pi || pi_ref) at step 2 is one step's worth, as in the uninterrupted run
    assert rows[-1]["loss/kl_ref"] == pytest.approx(launch.metrics(straight)[-1]["loss/kl_ref"], rel=0.5, abs=1e-4)


def test_overlapped_grad_reduce_gives_the_same_bits(tmp_path):
    """The dp preset (distributed optimizer, overlapped reduce-scatter and all-gather) with and
    without overlap: a warm start of 4 micro-batches a step, then RL steps of 2, the same bits."""
    ranks, layout = LAYOUTS["dp2"]
    ws = [
        "trainer.warm_start.steps=2",
        "trainer.warm_start.batch_size=8",
        "checkpoint.save_every=0",
        "trainer.max_steps=2",
    ]
    on, off = tmp_path / "on", tmp_path / "off"
    launch.train(ranks, on, layout + ws)
    launch.train(
        ranks, off, layout + ws + ["parallel.overlap_grad_reduce=false", "parallel.overlap_param_gather=false"]
    )
    launch.assert_same_bits(launch.checkpoint(on, 2), launch.checkpoint(off, 2))
    assert launch.metrics(on) == launch.metrics(off)
