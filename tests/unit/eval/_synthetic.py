"""Synthetic sweeps for the evaluation tests: a spec YAML and runs with metrics.jsonl files."""

import json
from pathlib import Path

SPEC = """
name: synth
out_dir: {out}
methods: [sdar, craft]
envs:
  sokoban: {{overrides: []}}
  webshop: {{overrides: [env.config.max_turns=15]}}
models:
  tiny: {{overrides: [], nodes: 1}}
seeds: [1, 2, 3]
overrides: [trainer.max_steps=3, logging.progress_bar=false]
"""


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "synth.yaml"
    path.write_text(text.format(out=tmp_path / "sweep"))
    return path


def write_run(run_dir: Path, finals: dict, *, done: bool = True, early: float = 0.1) -> None:
    """A run that validated at steps 0, 2 and 3 (step 3 logged twice, as after a resume: the
    second row wins) with ``finals`` (metric key -> value) at step 3."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        {"step": 0, **{k: early for k in finals}},
        {"step": 1, "rollout/success_rate": 0.5, "train/loss": 0.3},
        {"step": 2, **{k: early + 0.05 for k in finals}},
        {"step": 3, **{k: 0.0 for k in finals}},
        {"step": 3, **finals},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "val/succ')
    if done:
        (run_dir / "done.json").write_text("{}")
