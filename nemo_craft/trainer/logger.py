"""Metrics out of the trainer: TensorBoard (default), Weights & Biases (when configured),
a JSONL file, a progress bar, and a PNG of the reward and success curves at the end.

Only the rank that owns logging (global rank 0) writes; every rank may call ``log``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

from nemo_craft.trainer.config import LoggingConfig
from nemo_craft.trainer.run_dir import METRICS_JSONL, TENSORBOARD_DIR, keep_metrics_upto

__all__ = ["MetricsLogger", "plot_curves"]


def _scalar(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value


class MetricsLogger:
    """Writes each step's metrics to the configured sinks; a no-op on ranks other than 0."""

    def __init__(
        self,
        cfg: LoggingConfig,
        run_dir: str | Path,
        *,
        rank: int = 0,
        total_steps: int = 0,
        config_dict: Optional[dict] = None,
        start_step: int = 0,
        resumed: bool = False,
    ):
        """``start_step`` / ``resumed``: a resumed run keeps the records up to its checkpoint's
        step and drops later ones; a fresh one starts the directory's logs afresh (run_dir.py)."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.active = rank == 0
        self.jsonl_path = self.run_dir / METRICS_JSONL
        self.tb_dir = self.run_dir / TENSORBOARD_DIR
        self._tb = self._wandb = self._bar = None
        self._t0 = time.monotonic()
        self._start_step = start_step
        self.total_steps = total_steps
        if not self.active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        keep_metrics_upto(self.run_dir, start_step, resumed)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=start_step or None)
        if cfg.wandb.enabled:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("logging.wandb.enabled=true needs `pip install wandb`") from err
            self._wandb = wandb.init(
                project=cfg.wandb.project,
                mode=cfg.wandb.mode,
                dir=str(self.run_dir),
                config=config_dict,
                resume="allow",
            )
        if cfg.progress_bar and total_steps:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        if not self.active:
            return
        scalars = {f"{prefix}{k}": v for k, v in ((k, _scalar(v)) for k, v in metrics.items()) if v is not None}
        if self.cfg.jsonl:
            with open(self.jsonl_path, "a") as f:
                f.write(
                    json.dumps({"step": step, **{k: (None if math.isnan(v) else v) for k, v in scalars.items()}}) + "\n"
                )
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k.replace(".", "/"), v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def progress(self, step: int, metrics: dict[str, Any]) -> None:
        if self._bar is None:
            return
        done = step - self._start_step
        elapsed = time.monotonic() - self._t0
        eta = elapsed / max(done, 1) * (self.total_steps - step)
        self._bar.n = step
        self._bar.set_postfix(
            reward=f"{metrics.get('rollout/reward_mean', float('nan')):.3f}",
            success=f"{metrics.get('rollout/success_rate', float('nan')):.2f}",
            tok_s=f"{metrics.get('perf/tokens_per_s', 0.0):.0f}",
            eta=f"{eta / 60:.1f}m",
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def plot_curves(jsonl_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """PNG of training reward/success and validation success against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(jsonl_path) if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, keys, label in (
        (axes[0], ("rollout/reward_mean",), "train reward"),
        (axes[1], ("rollout/success_rate", "val/success_rate"), "success rate"),
    ):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            if key.startswith("val"):
                ax.plot(xs, ys, marker="o", ms=4, label=key)
                continue
            # Rollout metrics of one step are noisy (a few tasks): the raw line thin, a running
            # mean over 5 steps on top.
            (line,) = ax.plot(xs, ys, alpha=0.3, lw=1)
            smooth = [sum(ys[max(0, i - 4) : i + 1]) / len(ys[max(0, i - 4) : i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, color=line.get_color(), label=f"{key} (mean of 5 steps)")
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
