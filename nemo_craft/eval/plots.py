"""A sweep's figures (PNG): validation-success learning curves and the pillar ablation.

- ``curves_<env>.png``: a panel per model, a line per method: the mean over finished seeds of
  validation success at each step, shaded ± the standard deviation (ddof 1) where several seeds
  validated at that step.
- ``ablation.png``: a panel per (environment, model), a bar per method of ``spec.ablation``
  (SDAR, each single pillar, CRAFT): final validation success, mean ± std over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from nemo_craft.eval.metrics import mean_std
from nemo_craft.eval.results import CURVE_KEY, RunResult, finished_runs, method_label, model_label
from nemo_craft.eval.sweep_spec import SweepSpec

__all__ = ["learning_curves", "ablation_bars"]

_BAR_COLORS = {"sdar": "#888888", "craft": "#d9534f"}  # the baseline, the full method; pillars in blue


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(results: Sequence[RunResult], attr: str = "curve") -> tuple[list[int], list[float], list[float]]:
    curves = [getattr(r, attr) for r in results]
    steps = sorted({s for c in curves for s in c})
    means, stds = [], []
    for s in steps:
        mu, sd, _ = mean_std(c[s] for c in curves if s in c)
        means.append(100.0 * mu)
        stds.append(100.0 * sd)
    return steps, means, stds


_PANELS = (("curve", "validation success (%)"), ("reward_curve", "mean validation reward (x 100)"))
"""Rows of a learning-curve figure: success, and the reward (which shows learning where nothing
succeeds yet: fewer invalid actions) when the runs logged it."""


def learning_curves(results: Sequence[RunResult], spec: SweepSpec, out_dir: str | Path) -> list[Path]:
    """One PNG per environment with a finished run (none for the others); returns their paths.
    Columns: the models; rows: validation success, then mean validation reward where logged."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for env in spec.envs:
        models = list(spec.models)
        path = out_dir / f"curves_{env}.png"
        done = [r for m in models for method in spec.methods for r in finished_runs(results, env, m, method)]
        if not done:
            path.unlink(missing_ok=True)  # a stale plot from an earlier collection would mislead
            continue
        panels = [p for p in _PANELS if any(getattr(r, p[0]) for r in done)]
        fig, axes = plt.subplots(
            len(panels), len(models), figsize=(4.6 * len(models), 3.6 * len(panels)), squeeze=False
        )
        for row, (attr, ylabel) in zip(axes, panels):
            for ax, model in zip(row, models):
                for method in spec.methods:
                    steps, means, stds = _mean_curve(finished_runs(results, env, model, method), attr)
                    if not steps:
                        continue
                    (line,) = ax.plot(steps, means, marker="o", ms=3, label=method_label(method))
                    ax.fill_between(
                        steps,
                        [m - s for m, s in zip(means, stds)],
                        [m + s for m, s in zip(means, stds)],
                        color=line.get_color(),
                        alpha=0.18,
                        linewidth=0,
                    )
                ax.set_title(f"{env}, {model_label(spec, model)}")
                ax.set_xlabel("step")
                ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def ablation_bars(results: Sequence[RunResult], spec: SweepSpec, out_path: str | Path) -> Optional[Path]:
    """The pillar ablation, a panel per (environment, model) with a finished ablation run; None
    when there is no such panel (or the sweep runs none of ``spec.ablation``'s methods)."""
    methods = [m for m in spec.ablation if m in spec.methods]
    panels = [
        (env, model)
        for env in spec.envs
        for model in spec.models
        if any(finished_runs(results, env, model, m) for m in methods)
    ]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.2, 1.1 * len(methods)) * len(panels), 3.8), squeeze=False)
    for ax, (env, model) in zip(axes[0], panels):
        means, stds = [], []
        for method in methods:
            values = [
                100.0 * r.final[CURVE_KEY] for r in finished_runs(results, env, model, method) if CURVE_KEY in r.final
            ]
            mu, sd, _ = mean_std(values)
            means.append(mu)
            stds.append(sd)
        xs = range(len(methods))
        colors = [_BAR_COLORS.get(m, "#7fa7d9") for m in methods]
        ax.bar(
            xs,
            [0.0 if math.isnan(m) else m for m in means],
            yerr=[0.0 if math.isnan(s) else s for s in stds],
            capsize=3,
            color=colors,
        )
        ax.set_xticks(list(xs), [method_label(m).replace(" (", "\n(") for m in methods], fontsize=7)
        ax.set_title(f"{env}, {model_label(spec, model)}")
        ax.set_ylabel("final validation success (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
