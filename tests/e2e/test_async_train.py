"""Disaggregated training through torchrun with 3 ranks (2 train, 1 generates), the tiny model on
gloo: synchronous equals colocated; one step stale shows in the versions and the correction's
weights; a resumed run continues as the uninterrupted one."""

from __future__ import annotations

import math

import pytest
import torch

from tests.distributed.test_async_wire import torchrun

pytestmark = pytest.mark.slow

ASYNC = ["rollout.placement=disaggregated", "rollout.generation_ranks=1"]
STALE = [*ASYNC, "rollout.max_staleness=1", "loss.off_policy=tis", "trainer.max_steps=4", "checkpoint.save_every=2"]


def _rows(out):
    return {r["step"]: r for r in out["rows"]}


def test_synchronous_disaggregated_equals_colocated(tmp_path):
    common = ["trainer.max_steps=3", "checkpoint.save_every=0"]
    colocated = torchrun("train", tmp_path / "col", 2, args=common)
    disagg = torchrun("train", tmp_path / "dis", 3, args=[*common, *ASYNC, "rollout.max_staleness=0"])
    for rank in (0, 1):
        for a, b in zip(colocated[rank]["steps"], disagg[rank]["steps"], strict=True):
            assert a["tokens"] == b["tokens"] and a["rewards"] == b["rewards"]
            assert b["versions"] and all(v == b["versions"][0][:1] * len(v) for v in b["versions"])
    col, dis = _rows(colocated[0]), _rows(disagg[0])
    assert sorted(col) == sorted(dis) == [1, 2, 3]
    for step in col:
        assert col[step]["rollout/reward_mean"] == dis[step]["rollout/reward_mean"]
        for key in ("train/loss", "train/grad_norm"):
            assert math.isclose(col[step][key], dis[step][key], rel_tol=1e-5, abs_tol=1e-9), (step, key)
        assert dis[step]["rollout/staleness_max"] == 0.0 and "time/train_wait_s" in dis[step]
    for name, p in colocated[0]["params"].items():
        torch.testing.assert_close(disagg[0]["params"][name], p, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def stale_run(tmp_path_factory):
    return torchrun("train", tmp_path_factory.mktemp("stale"), 3, args=STALE)


def test_one_version_old_and_none_older_with_the_hand_computed_weights(stale_run):
    # batch t uses version max(t - 1, last checkpoint): the pipeline drains at the step-2 checkpoint
    expected = [0, 0, 2, 2]
    rows = _rows(stale_run[0])
    assert [rows[s]["rollout/staleness_max"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    assert len(stale_run) == 2  # both training ranks
    for t in range(4):
        log_ws = []
        for rank in stale_run:
            step = rank["steps"][t]
            assert {v for vs in step["versions"] for v in vs} == {expected[t]}
            mask = step["loss_mask"]
            log_w = (step["logp_old"] - step["logp_rollout"])[mask].double()
            hand = torch.clamp(torch.exp(log_w), max=2.0)  # loss.is_cap's default
            torch.testing.assert_close(step["is_weight"][mask].double(), hand, rtol=1e-6, atol=0.0)
            log_ws.append(log_w)
        log_w = torch.cat(log_ws)
        if t - expected[t]:  # one version old: the engine's policy is not the trained one
            assert log_w.abs().max() > 1e-4
        else:
            assert log_w.abs().max() < 1e-5
        assert rows[t + 1]["off_policy/weight_max"] == pytest.approx(float(torch.exp(log_w).max()), rel=1e-6)


def test_resumed_async_run_continues_as_the_uninterrupted_one(stale_run, tmp_path, monkeypatch):
    monkeypatch.setenv("KILL_AT_STEP", "4")  # dies after the step-2 checkpoint and one more step
    with pytest.raises(AssertionError):
        torchrun("train", tmp_path, 3, args=STALE)
    monkeypatch.delenv("KILL_AT_STEP")
    resumed = torchrun("train", tmp_path, 3, args=[*STALE, "checkpoint.resume=auto"])
    straight = _rows(stale_run[0])
    again = {r["step"]: r for r in resumed[0]["rows"][-2:]}  # the log holds the killed run's rows before
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        for key, value in straight[step].items():
            if not key.startswith(("time/", "perf/")):
                assert again[step][key] == value, (step, key)
    for name, p in stale_run[0]["params"].items():
        assert torch.equal(resumed[0]["params"][name], p), name
