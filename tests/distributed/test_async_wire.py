"""Disaggregated placement over gloo, through torchrun with 3 ranks (2 train, 1 generates): the
refit over the wire gives the engine the trainer's weights bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from nemo_craft.testing.distributed import free_port


def torchrun(body: str, out_dir, nproc: int = 3, timeout: int = 300) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    cmd += ["-m", "tests.distributed._bodies_async", body, str(out_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(nproc)]


def test_refit_over_the_wire_is_bit_for_bit(tmp_path):
    trainer, _, engine = torchrun("refit", tmp_path)
    assert engine["version"] == 1
    assert list(engine["weights"]) == list(trainer["weights"])  # every tensor, in the same order
    for name, t in trainer["weights"].items():
        e = engine["weights"][name]
        assert e.dtype == t.dtype and e.shape == t.shape
        assert torch.equal(e.view(-1).view(torch.uint8), t.view(-1).view(torch.uint8)), name
