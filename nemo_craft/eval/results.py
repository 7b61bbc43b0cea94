"""A sweep's results: each finished run's final validation metrics (from its ``metrics.jsonl``),
mean ± standard deviation over seeds, as one table in the paper's format (docs/algorithm.md#the-papers-evaluation).

    results = collect(spec)                   # RunResult per run of the spec
    stats = aggregate(results, spec)          # CellStat per (env, model, method, paper metric)
    write_tables(stats, spec, out_dir)        # results.csv, results.md

The table has a row per method and a column per model; a cell joins the environments' paper
metrics with " / " (e.g. "ALFWorld success / Search-QA EM / WebShop score / WebShop success"),
each "mean ± std" in percent with one decimal. "Final" is the validation row of the highest step
(a resumed run logs some steps twice: the last row of a step wins). The standard deviation is
the sample one (ddof 1), 0.0 for a single seed. Only finished runs count (``is_finished``); a
value over fewer seeds than the sweep has is marked "†".
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from nemo_craft.eval.metrics import mean_std, paper_metrics
from nemo_craft.eval.sweep_spec import RunSpec, SweepSpec, is_finished

__all__ = [
    "METHOD_LABELS",
    "MODEL_LABELS",
    "RunResult",
    "CellStat",
    "read_metrics",
    "val_curve",
    "collect",
    "aggregate",
    "gain_table",
    "GAIN_METRICS",
    "REWARD_KEY",
    "markdown_table",
    "write_tables",
    "CURVE_KEY",
    "finished_runs",
    "method_label",
    "model_label",
]

CURVE_KEY = "val/success_rate"
REWARD_KEY = "val/reward_mean"
METHOD_LABELS = {
    "grpo": "GRPO",
    "grpo_opsd": "GRPO+OPSD",
    "sdar": "SDAR",
    "adaptive_cringe": "Adaptive-CRINGE",
    "craft": "CRAFT",
    "rlsd": "RLSD",
    "skill_sd": "Skill-SD",
    "craft_only_counterfactual": "CRAFT only P1 (counterfactual)",
    "craft_only_controller": "CRAFT only P2 (controller)",
    "craft_only_polarized_kl": "CRAFT only P3 (polarised KL)",
}
MODEL_LABELS = {
    "qwen3_1p7b": "Qwen3-1.7B",
    "qwen2p5_3b": "Qwen2.5-3B",
    "qwen2p5_7b": "Qwen2.5-7B",
    "qwen3_8b": "Qwen3-8B",
    "qwen2p5_72b": "Qwen2.5-72B",
    "llama3p1_70b": "Llama-3.1-70B",
    "tiny": "tiny",
}


def method_label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def model_label(spec: SweepSpec, name: str) -> str:
    return spec.models[name].label or MODEL_LABELS.get(name, name)


@dataclass
class RunResult:
    run: RunSpec
    finished: bool
    final: dict[str, float]
    """Validation metric -> value at the run's last validated step."""
    curve: dict[int, float]
    """Step -> ``CURVE_KEY`` (validation success)."""
    reward_curve: dict[int, float] = field(default_factory=dict)
    """Step -> ``REWARD_KEY`` (mean validation reward, penalties included): where no policy succeeds
    yet, the reward still shows what was learnt (fewer invalid actions)."""


def finished_runs(results: Sequence[RunResult], env: str, model: str, method: str) -> list[RunResult]:
    """The finished runs (one per seed) of one (environment, model, method)."""
    return [r for r in results if r.finished and (r.run.env, r.run.model, r.run.method) == (env, model, method)]


@dataclass
class CellStat:
    env: str
    model: str
    method: str
    metric: str
    """The paper metric's label, e.g. "WebShop score"."""
    values: list[float]
    """Per finished seed, in percent."""
    mean: float
    std: float
    n: int


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a truncated last line, from a killed run, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def val_curve(rows: Sequence[dict], key: str) -> dict[int, float]:
    """Step -> value of ``key``, in step order; the last row of a step wins."""
    out: dict[int, float] = {}
    for r in rows:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[int(r["step"])] = float(v)
    return dict(sorted(out.items()))


def collect(spec: SweepSpec, runs: Optional[Sequence[RunSpec]] = None) -> list[RunResult]:
    out = []
    for run in runs if runs is not None else spec.runs():
        rows = read_metrics(run.run_dir / "metrics.jsonl")
        keys = {m.val_key for m in paper_metrics(run.env)} | {CURVE_KEY}
        final = {}
        for key in keys:
            curve = val_curve(rows, key)
            if curve:
                final[key] = curve[max(curve)]
        out.append(
            RunResult(run, is_finished(run.run_dir), final, val_curve(rows, CURVE_KEY), val_curve(rows, REWARD_KEY))
        )
    return out


def aggregate(results: Sequence[RunResult], spec: SweepSpec) -> list[CellStat]:
    """Mean ± std over the finished seeds of every (env, model, method, paper metric)."""
    stats = []
    for env in spec.envs:
        for model in spec.models:
            for method in spec.methods:
                mine = finished_runs(results, env, model, method)
                for m in paper_metrics(env):
                    values = [100.0 * r.final[m.val_key] for r in mine if m.val_key in r.final]
                    mean, std, n = mean_std(values)
                    stats.append(CellStat(env, model, method, m.label, values, mean, std, n))
    return stats


def _cell(stats: list[CellStat], n_seeds: int) -> str:
    parts = []
    for s in stats:
        if s.n == 0:
            parts.append("–")
        else:
            parts.append(f"{s.mean:.1f} ± {s.std:.1f}" + ("†" if s.n < n_seeds else ""))
    return " / ".join(parts)


def markdown_table(stats: Sequence[CellStat], spec: SweepSpec, finished: Optional[int] = None) -> str:
    """The paper's table (docs/algorithm.md#the-papers-evaluation): a row per method, a column per
    model, "mean ± std" cells."""
    labels = [m.label for env in spec.envs for m in paper_metrics(env)]
    n_seeds = len(spec.seeds)
    head = (
        f"Cells: {' / '.join(labels)} (%, final validation, mean ± std over {n_seeds} seed"
        f"{'s' if n_seeds != 1 else ''}: {', '.join(map(str, spec.seeds))})."
    )
    lines = [
        f"# {spec.name}",
        "",
        head,
        "",
        "| method | " + " | ".join(model_label(spec, m) for m in spec.models) + " |",
        "|---" * (len(spec.models) + 1) + "|",
    ]
    partial = False
    for method in spec.methods:
        cells = []
        for model in spec.models:
            mine = [s for s in stats if s.model == model and s.method == method]
            mine.sort(key=lambda s: list(spec.envs).index(s.env))
            partial |= any(0 < s.n < n_seeds for s in mine)
            cells.append(_cell(mine, n_seeds))
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    notes = []
    if partial:
        notes.append(f"† fewer than {n_seeds} seeds finished.")
    if any(s.n == 0 for s in stats):
        notes.append("– no finished run.")
    if finished is not None:
        notes.append(f"{finished} of {len(spec.runs())} runs finished.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


GAIN_METRICS = {
    "success": ("curve", "Validation success"),
    "reward": ("reward_curve", "Mean validation reward (x 100: penalties included)"),
}


def gain_table(results: Sequence[RunResult], spec: SweepSpec, metric: str = "success") -> str:
    """Markdown: ``metric`` ("success" or "reward", see ``GAIN_METRICS``) at the first validation
    (the starting policy: the warm start, or the pretrained model), at the last, and the change,
    in points, mean ± std over finished seeds, per environment and model. Where seeds start far
    apart (a tiny model's warm starts), the change says more than the final value."""
    if metric not in GAIN_METRICS:
        raise ValueError(f"gain_table metric={metric!r}; allowed: {', '.join(GAIN_METRICS)}")
    attr, title = GAIN_METRICS[metric]
    n_seeds = len(spec.seeds)
    lines = [
        "",
        f"{title} at the first and the last validation and its change (points, mean ± std "
        f"over {n_seeds} seed{'s' if n_seeds != 1 else ''}).",
        "",
    ]
    for env in spec.envs:
        for model in spec.models:
            lines += [f"| {env} / {model_label(spec, model)} | first | last | change |", "|---|---|---|---|"]
            for method in spec.methods:
                curves = [getattr(r, attr) for r in finished_runs(results, env, model, method) if getattr(r, attr)]
                first = [100 * c[min(c)] for c in curves]
                last = [100 * c[max(c)] for c in curves]
                change = [b - a for a, b in zip(first, last)]
                cells = [_mean_std_cell(first), _mean_std_cell(last), _mean_std_cell(change, signed=True)]
                lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _mean_std_cell(values: Sequence[float], signed: bool = False) -> str:
    mean, std, n = mean_std(list(values))
    return "–" if n == 0 else f"{mean:{'+' if signed else ''}.1f} ± {std:.1f}"


def write_tables(
    stats: Sequence[CellStat],
    spec: SweepSpec,
    out_dir: str | Path,
    finished: Optional[int] = None,
    results: Optional[Sequence[RunResult]] = None,
) -> dict[str, Path]:
    """``results.csv`` (one row per env, model, method, metric) and ``results.md`` (the table, and
    with ``results`` the change of success and of reward from the first validation: ``gain_table``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "markdown": out / "results.md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env", "model", "method", "metric", "n_seeds", "mean_pct", "std_pct", "values_pct"])
        for s in stats:
            w.writerow(
                [
                    s.env,
                    s.model,
                    s.method,
                    s.metric,
                    s.n,
                    _num(s.mean),
                    _num(s.std),
                    ";".join(f"{v:.4f}" for v in s.values),
                ]
            )
    text = markdown_table(stats, spec, finished)
    if results is not None:
        text += gain_table(results, spec) + gain_table(results, spec, "reward")
    paths["markdown"].write_text(text)
    return paths


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4f}"
