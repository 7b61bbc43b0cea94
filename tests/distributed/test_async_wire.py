"""Disaggregated placement over gloo, through torchrun with 3 ranks (2 train, 1 generates): the
refit over the wire gives the engine the trainer's weights bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from nemo_craft.testing.distributed import free_port


def torchrun(body: str, out_dir, nproc: int = 3, *, args=(), timeout: int = 600) -> list[dict]:
    """``torchrun -m tests.e2e._bodies_async body out_dir *args``; each rank's saved results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    cmd += ["-m", "tests.e2e._bodies_async", body, str(out_dir), *args]
    # output to a file, not a pipe: a killed rank's environment workers may outlive it with the
    # pipe open, and reading a pipe waits for every holder
    log = out_dir / "torchrun.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{log.read_text()[-6000:]}"
    return [torch.load(p) for r in range(nproc) if (p := out_dir / f"rank{r}.pt").exists()]


def test_refit_over_the_wire_is_bit_for_bit(tmp_path):
    trainer, _, engine = torchrun("refit", tmp_path)
    assert engine["version"] == 1
    assert list(engine["weights"]) == list(trainer["weights"])  # every tensor, in the same order
    for name, t in trainer["weights"].items():
        e = engine["weights"][name]
        assert e.dtype == t.dtype and e.shape == t.shape
        assert torch.equal(e.view(-1).view(torch.uint8), t.view(-1).view(torch.uint8)), name
