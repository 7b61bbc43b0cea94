"""One run per run directory: a training run never mixes its metrics with another's.

- A fresh start (``checkpoint.resume`` unset) into a directory that already holds a run (its
  ``metrics.jsonl`` or a checkpoint) is refused with one line: continue it with
  ``checkpoint.resume=auto``, or pick another ``run_dir``.
- A resumed run keeps the records of the steps up to its checkpoint and drops those logged after
  it (they are done again); ``checkpoint.resume=auto`` that finds no checkpoint starts the
  directory afresh (the earlier attempt stopped before its first checkpoint).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from nemo_craft.runtime.checkpoint_layout import list_checkpoints

if TYPE_CHECKING:
    from nemo_craft.config import RunConfig

__all__ = ["METRICS_JSONL", "TENSORBOARD_DIR", "check_run_dir", "keep_metrics_upto"]

METRICS_JSONL = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def check_run_dir(run: RunConfig) -> None:
    """Raise ValueError (one line) when a fresh start would write into another run's directory."""
    if run.checkpoint.resume is not None:
        return
    run_dir = Path(run.run_dir)
    metrics = run_dir / METRICS_JSONL
    held = []
    if metrics.is_file() and metrics.stat().st_size > 0:
        held.append(METRICS_JSONL)
    checkpoints = list_checkpoints(run.checkpoint.dir) if run.checkpoint.dir else []
    if checkpoints:
        held.append(f"checkpoints up to step {checkpoints[-1].step}")
    if held:
        raise ValueError(
            f"run_dir={run.run_dir} already holds a run ({', '.join(held)}): continue it with "
            f"checkpoint.resume=auto, or start another with run_dir=DIR (or another seed=)"
        )


def keep_metrics_upto(run_dir: str | Path, step: int, resumed: bool) -> None:
    """Make the directory's logs those of this run: after a resume from ``step`` the records of
    later steps go; a fresh start removes the earlier attempt's metrics and TensorBoard events."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_JSONL
    if not resumed:
        metrics.unlink(missing_ok=True)
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
        return
    if metrics.is_file():
        kept = [line for line in metrics.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        metrics.write_text("".join(f"{line}\n" for line in kept))
