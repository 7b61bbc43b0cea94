"""The production path on a GPU: NCCL, no CPU mode, bf16. Skipped on machines without CUDA."""

import numpy as np
import pytest
import torch

from nemo_craft.testing.distributed import run_distributed
from tests.e2e import _bodies_train as bodies

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _where():
    import torch.distributed as dist

    from nemo_craft.parallel.cpu_mode import cpu_mode_active

    return dist.get_backend(), cpu_mode_active(), torch.cuda.current_device()


def _where_cpu():
    import torch.distributed as dist

    from nemo_craft.parallel.cpu_mode import cpu_mode_active

    return dist.get_backend(), cpu_mode_active(), torch.cuda.is_available()


def test_ranks_use_nccl_and_no_cpu_mode():
    backend, cpu_mode, device = run_distributed(_where, world_size=1, device="cuda")[0]
    assert backend == "nccl" and not cpu_mode and device == 0


def test_the_suites_default_device_stays_on_cpu(monkeypatch):
    """The suite compares layouts bit for bit: on a GPU machine its ranks still run on gloo."""
    monkeypatch.delenv("NEMO_CRAFT_TEST_DEVICE", raising=False)
    assert run_distributed(_where_cpu, world_size=2, tp=2) == [("gloo", True, False)] * 2


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_training_steps_on_cuda(tmp_path, dtype):
    out = run_distributed(
        bodies.train,
        world_size=1,
        timeout=600,
        args=(str(tmp_path / dtype), ["trainer.max_steps=2", f"model.params_dtype={dtype}"]),
        device="cuda",
    )[0]
    assert out["step"] == 2
    assert all(np.isfinite(r["train/loss"]) and r["train/step_ok"] == 1.0 for r in out["rows"])
