"""A short CRAFT run on SmolLM2-135M-Instruct's real weights (docs/real_model.md#a-short-craft-run):
the whole loop (rollout, the old / teacher / reference passes, credits, the loss, the optimizer, the
controller) runs at the paper's settings and its numbers are sane.

The rollouts run on the vllm backend where vLLM is installed (CI's Python 3.11 job: a real Llama-
architecture model with tied embeddings refit into the engine, its log-probs checked against the
trainer's every step), on the static engine elsewhere (the Python 3.12 job), so that each job runs
the loop once and both backends run it on a real model.

Tiny sizes so that it fits the fast suite: 2 Sokoban tasks x 2 siblings, 2 turns of 16 tokens,
2 steps. The conversion of the weights (tests/real_model/conftest.py, about a minute) is shared
with the session; the run itself takes about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import math

import numpy as np

from nemo_craft.testing.distributed import run_distributed

STEPS = 2
LR = 1e-6
MAX_TURNS = 2
INVALID_PENALTY = 0.1  # conf/env/sokoban.yaml's; the episode reward lies in [-turns * penalty, 1]
# The paper's settings where they apply (docs/algorithm.md): lambda_0 = beta_0 = 0.01, lr 1e-6, no
# warm start, behaviour temperature 1. Written out, not inherited, so that the test states them.
PAPER = [
    "method=craft",
    "loss.sd_coef=0.01",
    "loss.kl_coef=0.01",
    f"trainer.optim.lr={LR}",
    f"trainer.optim.min_lr={LR}",
    "trainer.warm_start.steps=0",
    "rollout.generation.temperature=1.0",
    "rollout.generation.top_p=1.0",
    "rollout.generation.top_k=0",
]
TINY = [
    "env=sokoban",
    "env.config.template=full",
    f"env.config.max_turns={MAX_TURNS}",
    f"env.config.invalid_penalty={INVALID_PENALTY}",
    "rollout.tasks_per_step=2",
    "rollout.group_size=2",
    "rollout.generation.max_new_tokens=16",
    "rollout.max_tokens_per_episode=32",
    "rollout.generation.max_sequence_length=1024",
    "rollout.generation.max_batch_size=4",
    "trainer.micro_batch_size=2",
    f"trainer.max_steps={STEPS}",
    "trainer.val_every=0",
    "checkpoint.dir=null",
    "checkpoint.save_every=0",
    "logging.tensorboard=false",
    "logging.plot=false",
    "logging.progress_bar=false",
]


def _backend() -> list[str]:
    from nemo_craft.rollout.vllm_backend import vllm_problem

    if vllm_problem():
        return ["rollout.generation.backend=static"]
    return ["rollout.generation.backend=vllm", "rollout.generation.kv_cache_gb=0.5"]


def body_craft_run(run_dir: str, hf_path: str) -> dict:
    """Train STEPS steps; the weights before the first step and after the last, the metrics rows
    and the controller's state."""
    from nemo_craft.config import load_run
    from nemo_craft.trainer.trainer import RLTrainer

    trainer = RLTrainer(
        load_run(["model=smollm2_135m", f"model.hf_path={hf_path}", *PAPER, *TINY, f"run_dir={run_dir}", *_backend()])
    )

    def weights() -> dict:
        return {
            f"{i}.{n}": p.detach().float().cpu().numpy().copy()
            for i, c in enumerate(trainer.model)
            for n, p in c.named_parameters()
        }

    before: dict = {}
    real_step = trainer.train_step

    def train_step():
        if not before:
            before.update(weights())
        return real_step()

    trainer.train_step = train_step
    trainer.fit()
    rows = [json.loads(line) for line in trainer.logger.jsonl_path.read_text().splitlines()]
    return {
        "before": before,
        "after": weights(),
        "rows": rows,
        "controller": trainer.controller.state_dict(),
        "step": trainer.step,
    }


def test_craft_steps_on_smollm2_run_with_sane_metrics(smollm2_dir, tmp_path):
    out = run_distributed(body_craft_run, world_size=1, timeout=900, args=(str(tmp_path / "run"), smollm2_dir))[0]
    assert out["step"] == STEPS
    rows = out["rows"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        bad = {k: v for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, f"non-finite metrics at step {r['step']}: {bad}"
        assert r["train/step_ok"] == 1.0, r
        assert -MAX_TURNS * INVALID_PENALTY - 1e-9 <= r["rollout/reward_mean"] <= 1.0, r
        assert 0.0 <= r["rollout/success_rate"] <= 1.0 and 1 <= r["rollout/turns_mean"] <= MAX_TURNS, r
        assert 0.0 <= r["credit/gate_activity"] <= 1.0, r
        # The sampler's log-probs and the old pass's, fp32, 30 layers: rounding only.
        assert 0.0 <= r["rollout/logprob_diff_max"] < 1e-3, r
        assert math.isclose(r["train/lr"], LR, rel_tol=1e-6), r
        for phase in ("time/rollout_s", "time/experience_s", "time/train_s"):
            assert r[phase] > 0, (phase, r)
    # Every parameter moved, by about lr a step (Adam's first steps move each weight by ~lr).
    assert out["before"].keys() == out["after"].keys()
    moved = {n: float(np.abs(out["after"][n] - out["before"][n]).max()) for n in out["before"]}
    still = [n for n, d in moved.items() if d == 0.0]
    assert not still, f"parameters unchanged after {STEPS} steps: {still[:5]}"
    assert max(moved.values()) < 10 * STEPS * LR, max(moved.items(), key=lambda kv: kv[1])
    ctl = out["controller"]
    assert ctl["step"] == STEPS and all(math.isfinite(ctl[k]) for k in ("lambda", "beta", "ema")), ctl
    # Pillar 2 keeps lambda and beta within controller_bound (10) of lambda_0 = beta_0 = 0.01.
    assert 0.001 <= ctl["lambda"] <= 0.1 and 0.001 <= ctl["beta"] <= 0.1, ctl
