import os
import time

import pytest

from nemo_craft.testing.distributed import DistributedTestError, run_distributed
from tests.distributed import _bodies_harness as bodies


def test_layout_groups_and_cpu_mode():
    out = run_distributed(bodies.report_layout, world_size=4, tp=2, pp=1)
    assert [o["rank"] for o in out] == [0, 1, 2, 3]
    assert all(o["tp"] == 2 and o["pp"] == 1 and o["dp"] == 2 and o["layout_dp"] == 2 for o in out)
    assert all(o["total"] == 6.0 for o in out)  # 0+1+2+3 reduced over the world
    assert all(o["cpu_mode"] and o["backend"] == "gloo" for o in out)
    assert len({o["pid"] for o in out}) == 4


def test_failing_rank_traceback_is_reported_and_others_are_killed():
    t0 = time.monotonic()
    with pytest.raises(DistributedTestError, match=r"(?s)rank 1 .*deliberate failure on rank one"):
        run_distributed(bodies.fail_on_rank_one, world_size=2, timeout=60)
    assert time.monotonic() - t0 < 30  # rank 0 blocked in a barrier was not waited for


def test_timeout_kills_every_rank(tmp_path):
    import torch

    pid_file = str(tmp_path / "pid")
    # Where CUDA exists, ranks are fresh interpreters that import torch and megatron themselves:
    # their start-up must fit in the timeout before the body can write its pid and hang.
    timeout = 45 if torch.cuda.is_available() else 8
    with pytest.raises(DistributedTestError, match="timed out"):
        run_distributed(bodies.hang_forever, world_size=2, timeout=timeout, args=(pid_file,))
    for r in range(2):
        pid = int(open(f"{pid_file}.{r}").read())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_layout_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        run_distributed(bodies.report_layout, world_size=3, tp=2)


def test_a_device_the_machine_cannot_give_is_refused(monkeypatch):
    import torch

    with pytest.raises(ValueError, match=r"device='cuda' needs one GPU per rank: world_size=64"):
        run_distributed(bodies.report_layout, world_size=64, device="cuda")
    monkeypatch.setenv("NEMO_CRAFT_TEST_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"NEMO_CRAFT_TEST_DEVICE='tpu' is not a test device; allowed: cpu, cuda"):
        run_distributed(bodies.report_layout, world_size=1)
    assert torch.cuda.device_count() < 64
