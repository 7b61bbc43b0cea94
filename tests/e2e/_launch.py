"""Run ``nemo-craft train`` as a user does (``torchrun ... -m nemo_craft train <overrides>``) and
read back what it wrote: checkpoints as whole (layout-independent) tensors, and the metrics.

Runs compose the shipped presets and recipes; only what cannot fit on a CPU shrinks: the
workload per step (SHRINK), the model (the tiny model's dimensions) and the data-parallel size
(the number of ranks). Everything else (sequence parallel, the distributed optimizer, the
overlapped gradient reduce and parameter gather) is the preset's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from nemo_craft.testing.distributed import free_port

# The workload of a step, shrunk: 2 tasks x 2 siblings, short episodes, 1 trajectory per micro-batch
# (so a step at DP2 has 2 micro-batches, at DP1 4), no validation, no warm start.
SHRINK = [
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "trainer.micro_batch_size=1",
    "rollout.generation.max_new_tokens=8",
    "rollout.max_tokens_per_episode=24",
    "env.config.max_turns=3",
    "env.config.template=compact",
    "env.config.history_length=0",
    "trainer.val_every=0",
    "logging.progress_bar=false",
    "logging.plot=false",
    "logging.tensorboard=false",
    "trainer.warm_start.steps=0",
]
VOLATILE = ("time/", "perf/")


def train(
    nproc: int, run_dir: Path, overrides: list[str], *, stop_after_first_step: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node <nproc> -m nemo_craft train run_dir=<run_dir> <SHRINK> <overrides>``.

    ``stop_after_first_step``: a stop file exists from the start (what SLURM's warning signal
    leads to), so the run checkpoints after its first step and exits with the preemption code.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("NEMO_CRAFT_STOP_FILE", None)
    scratch = Path(tempfile.mkdtemp())
    env["NEMO_CRAFT_EXIT_MARKER"] = str(scratch / "exit.json")
    if stop_after_first_step:
        (scratch / "stop").touch()
        env["NEMO_CRAFT_STOP_FILE"] = str(scratch / "stop")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        "-m",
        "nemo_craft",
        "train",
        f"run_dir={run_dir}",
        *SHRINK,
        *overrides,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    # torchrun reports a worker's exit code 75 (preempted) as 1; the trainer's marker has it
    stopped = (scratch / "exit.json").exists() and json.loads((scratch / "exit.json").read_text())["exit_code"] == 75
    if (proc.returncode != 0 or stopped) != stop_after_first_step or (stop_after_first_step and not stopped):
        raise AssertionError(
            f"{' '.join(cmd)}\nexited with {proc.returncode} (stopped: {stopped}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def checkpoint(run_dir: Path, step: int) -> dict:
    """Everything checkpoint ``step`` of a run holds, as whole tensors: ``dist/<key>`` (model and
    optimizer), ``reference/<key>`` (pi_ref), ``state`` (step, scheduler, controller, ...)."""
    path = run_dir / "checkpoints" / f"step_{step:06d}"
    assert (path / "COMPLETE").exists(), f"no complete checkpoint {path}"
    out = {}
    for part in ("dist", "reference"):
        out.update({f"{part}/{k}": v for k, v in _dcp_tensors(path / part).items()})
    out["state"] = torch.load(path / "trainer_state.pt", weights_only=False)
    return out


def _dcp_tensors(directory: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(directory), f"{tmp}/all.pt")
        state = torch.load(f"{tmp}/all.pt", weights_only=False)
    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            elif isinstance(v, torch.Tensor):  # megatron's per-layer _extra_state objects carry no numbers
                flat[prefix + k] = v

    walk(state, "")
    return flat


def metrics(run_dir: Path) -> list[dict]:
    """The run's metrics rows without the wall-clock ones."""
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def assert_same_bits(a: dict, b: dict, keys=None) -> None:
    """Every tensor of ``a`` equals ``b``'s bit for bit (and the trainer state compares equal)."""
    keys = sorted(a) if keys is None else keys
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    for k in keys:
        if k == "state":
            assert a[k] == b[k], (a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (
                f"{k}: max |diff| {(a[k].double() - b[k].double()).abs().max().item():.3e}"
            )
