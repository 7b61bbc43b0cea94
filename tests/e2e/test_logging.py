"""Logging sinks of a run: TensorBoard events, metrics.jsonl, the PNG plot, W&B offline."""

import json

from nemo_craft.testing.distributed import run_distributed
from tests.e2e import _bodies_train as bodies


def test_tensorboard_jsonl_and_plot(tmp_path):
    run_distributed(
        bodies.train,
        world_size=1,
        timeout=600,
        args=(str(tmp_path / "r"), ["trainer.max_steps=1", "checkpoint.save_every=0", "logging.plot=true"]),
    )
    rows = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    assert any("time/rollout_s" in r and "time/old_logprobs_s" in r and "perf/tokens_per_s" in r for r in rows)
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    png = tmp_path / "r" / "curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "r" / "wandb").exists()  # the W&B check below sees only an enabled sink


def test_wandb_offline(tmp_path, monkeypatch):
    """W&B is in the test extra: without it this fails (ModuleNotFoundError) instead of skipping."""
    import wandb  # noqa: F401

    monkeypatch.setenv("WANDB_SILENT", "true")
    run_distributed(
        bodies.train,
        world_size=1,
        timeout=600,
        args=(
            str(tmp_path / "w"),
            [
                "trainer.max_steps=1",
                "checkpoint.save_every=0",
                "logging.wandb.enabled=true",
                "logging.wandb.mode=offline",
            ],
        ),
    )
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
