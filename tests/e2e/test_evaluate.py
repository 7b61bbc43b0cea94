"""``nemo-craft evaluate`` end to end: train one tiny Sokoban step, evaluate its checkpoint."""

import json

import numpy as np

from nemo_craft.testing.distributed import run_distributed
from tests.e2e import _bodies_train as bodies


def _evaluate(argv: list) -> dict:
    """The evaluator's weights after loading the checkpoint, then the CLI's exit code."""
    from nemo_craft.cli.evaluate import main
    from nemo_craft.config import load_eval_run
    from nemo_craft.eval.evaluator import Evaluator

    run, _ = load_eval_run([a for a in argv if "=" in a])
    ev = Evaluator(run, "test", n_tasks=1)
    ev.setup()
    params = {
        f"{i}.{n}": p.detach().float().cpu().numpy().copy()
        for i, c in enumerate(ev.chunks)
        for n, p in c.named_parameters()
    }
    ev.close()
    return {"params": params, "rc": main(argv)}


def test_evaluate_a_trained_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    trained = run_distributed(
        bodies.train, world_size=1, timeout=300, args=(str(run_dir), ["trainer.max_steps=1", "checkpoint.save_every=0"])
    )[0]
    ckpt = run_dir / "checkpoints" / "step_000001"
    assert (ckpt / "COMPLETE").exists()

    out = tmp_path / "eval"
    # The run's config comes from the checkpoint; only the split's size is overridden.
    evaluated = run_distributed(
        _evaluate,
        world_size=1,
        timeout=300,
        args=([f"checkpoint.resume={run_dir / 'checkpoints'}", "--split", "test", "--tasks", "3", "--out", str(out)],),
    )[0]
    assert evaluated["rc"] == 0
    # The trainer's chunks are DDP-wrapped ("0.module.decoder..."), the evaluator's bare.
    trained_params = {k.replace("module.", ""): v for k, v in trained["params"].items()}
    assert trained_params.keys() == evaluated["params"].keys()
    for name, value in trained_params.items():
        assert np.array_equal(value, evaluated["params"][name]), name
    result = json.loads((out / "results.json").read_text())
    assert result["env"] == "sokoban" and result["split"] == "test" and result["step"] == 1
    assert result["checkpoint"] == str(ckpt) and result["temperature"] == 0.4
    assert result["first_seed"] == 2_000_000_000 and result["n_tasks"] == 3
    s = result["summary"]
    assert s["n_tasks"] == 3 and 0.0 <= s["success_rate"] <= 1.0 and 1.0 <= s["turns_mean"] <= 3.0
    assert s["paper"] == {"Sokoban success": 100.0 * s["success_rate"]}
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [e["task_seed"] for e in episodes] == [2_000_000_000, 2_000_000_001, 2_000_000_002]
    assert abs(sum(e["success"] for e in episodes) / 3 - s["success_rate"]) < 1e-12
    md = (out / "results.md").read_text()
    assert "| Sokoban success (%) |" in md and "| turns_mean |" in md
