"""The metrics each environment reports in the paper (docs/algorithm.md#the-papers-evaluation), and the summary of
one evaluation.

The paper's cell for a model is "ALFWorld avg / Search-QA avg / WebShop score / WebShop
accuracy": ALFWorld's success rate, Search-QA's exact match (its success: the answer matches a
gold answer after SQuAD normalisation), WebShop's mean score and its success rate (score 1).
They are percentages. The per-episode fields are those of ``Trajectory`` (success, score, reward,
num_turns) and ``summarize`` averages them; a metric's ``val_key`` is the trainer's
``metrics.jsonl`` key of the same quantity. Each environment declares its metrics on its class
(``TextEnv.paper_metrics``, nemo_craft/envs/spec.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from nemo_craft.envs.registry import ENVIRONMENTS, env_class
from nemo_craft.envs.spec import SUCCESS_RATE, PaperMetric

__all__ = ["PaperMetric", "paper_metrics", "episode_record", "summarize", "markdown_summary"]


def paper_metrics(env_name: str) -> tuple[PaperMetric, ...]:
    """The paper's metrics of ``env_name`` as its class declares them (``TextEnv.paper_metrics``);
    its success rate for an environment that declares none or is not registered."""
    declared = env_class(env_name).paper_metrics if env_name in ENVIRONMENTS else ()
    return declared or (PaperMetric(SUCCESS_RATE, f"{env_name} success"),)


def episode_record(traj) -> dict[str, Any]:
    """The outcome of one validation episode (a ``Trajectory``) as plain JSON values."""
    return {
        "task_seed": int(traj.task_seed),
        "success": bool(traj.success),
        "score": float(traj.score),
        "reward": float(traj.reward),
        "num_turns": int(traj.num_turns),
        "n_invalid": int(traj.n_invalid),
        "finish_reason": traj.finish_reason,
        "error": traj.error,
    }


def summarize(episodes: Sequence[dict[str, Any]], env_name: str) -> dict[str, Any]:
    """Means over ``episodes`` (``episode_record`` dicts) and the paper's metrics in percent."""
    n = len(episodes)
    if n == 0:
        raise ValueError("no episodes to summarize (the split has no tasks: pass --tasks N >= 1)")

    def mean(key: str) -> float:
        return sum(float(e[key]) for e in episodes) / n

    out: dict[str, Any] = {
        "n_tasks": n,
        "success_rate": mean("success"),
        "score_mean": mean("score"),
        "reward_mean": mean("reward"),
        "turns_mean": mean("num_turns"),
        "invalid_per_episode": mean("n_invalid"),
        "env_errors": sum(1 for e in episodes if e.get("error")),
    }
    out["paper"] = {m.label: 100.0 * out[m.field] for m in paper_metrics(env_name)}
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_summary(result: dict[str, Any]) -> str:
    """One evaluation (``Evaluator.run``'s result) as a Markdown table with a heading."""
    s = result["summary"]
    ckpt = result.get("checkpoint") or "initial weights"
    lines = [
        f"# {result['method']} on {result['env']} ({result['split']} split)",
        "",
        f"checkpoint: `{ckpt}` (step {result.get('step')}), {s['n_tasks']} tasks from seed "
        f"{result['first_seed']}, env split {result['env_split']!r}, temperature {result['temperature']}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {label} (%) | {value:.1f} |" for label, value in s["paper"].items()]
    lines += [
        f"| {key} | {_fmt(s[key])} |"
        for key in ("success_rate", "score_mean", "reward_mean", "turns_mean", "invalid_per_episode", "env_errors")
    ]
    return "\n".join(lines) + "\n"


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof 1; 0 for one value), count) of ``values``."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mu = sum(xs) / n
    if n == 1:
        return mu, 0.0, 1
    return mu, math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)), n
