"""The RL loop end to end: a TP2xPP2 run, bit-exact resume, and bad input."""

import numpy as np
import pytest

from nemo_craft.testing.distributed import DistributedTestError, run_distributed
from tests.e2e import _bodies_train as bodies

_VOLATILE = ("time/", "perf/")


def _stable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(_VOLATILE)} for r in rows]


def test_two_steps_at_tp2_pp2(tmp_path):
    outs = run_distributed(
        bodies.train,
        world_size=4,
        tp=2,
        pp=2,
        timeout=600,
        args=(
            str(tmp_path / "run"),
            ["trainer.max_steps=2", "checkpoint.save_every=0"],
            {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2},
        ),
    )
    assert all(o["step"] == 2 for o in outs)
    rows = outs[0]["rows"]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["train/loss"]) and r["train/step_ok"] == 1.0
        assert 0.0 <= r["credit/gate_activity"] <= 1.0
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    assert (tmp_path / "run" / "checkpoints").exists()  # the final step is always saved


def test_resume_continues_bit_for_bit(tmp_path):
    common = ["checkpoint.save_every=2", "checkpoint.keep_last=3"]
    straight = run_distributed(
        bodies.train, world_size=1, timeout=600, args=(str(tmp_path / "a"), common + ["trainer.max_steps=4"])
    )[0]
    first = run_distributed(
        bodies.train, world_size=1, timeout=600, args=(str(tmp_path / "b"), common + ["trainer.max_steps=4"], None, 3)
    )[0]
    assert first["step"] == 2
    # A fresh process (the first one has exited), resuming from the step-2 checkpoint.
    resumed = run_distributed(
        bodies.train,
        world_size=1,
        timeout=600,
        args=(str(tmp_path / "b"), common + ["trainer.max_steps=4", "checkpoint.resume=auto"]),
    )[0]
    assert resumed["step"] == 4
    assert straight["params"].keys() == resumed["params"].keys()
    for name, value in straight["params"].items():
        assert np.array_equal(value.view(np.int32), resumed["params"][name].view(np.int32)), name
    assert _stable(straight["rows"]) == _stable(resumed["rows"])


def test_nan_loss_is_skipped_counted_and_stops_the_run(tmp_path):
    out = run_distributed(
        bodies.nan_loss_run,
        world_size=1,
        timeout=300,
        args=(str(tmp_path / "nan"), ["trainer.max_steps=5", "trainer.max_nan_steps=2"]),
    )[0]
    assert out["error"] is not None and "2 steps in a row" in out["error"]
    assert out["nan_steps"] == 2 and out["step"] == 1  # the second bad step raised before counting
    assert out["params_finite"]


def test_nan_gradient_with_a_finite_loss_is_skipped_on_every_rank(tmp_path):
    """DP2 with the distributed optimizer and overlapped reduce (the dp preset): a NaN gradient
    under a finite loss is caught before the update; the weights and Adam stay untouched."""
    outs = run_distributed(
        bodies.nan_grad_run,
        world_size=2,
        timeout=600,
        args=(str(tmp_path / "nan"), ["parallel=dp", "trainer.max_steps=5", "trainer.max_nan_steps=2"]),
    )
    for out in outs:
        assert out["error"] is not None and "2 steps in a row" in out["error"]
        assert out["nan_steps"] == 2 and out["step"] == 1
        assert out["unchanged"] and out["optimizer_state"] == 0
    row = outs[0]["rows"][0]
    assert row["train/step_ok"] == 0.0 and np.isfinite(row["train/loss"]) and row["train/nan_steps"] == 1


@pytest.mark.parametrize("method", ["craft", "grpo"])
def test_trainer_logprobs_are_the_samplers_at_the_behaviour_temperature(tmp_path, method):
    """At T != 1 every training log-prob is of softmax(logits / T): the sampler's own log-probs
    of its tokens equal pi_old's (the old pass for CRAFT, the training forward for on-policy
    GRPO) to float32 rounding, step after step."""
    out = run_distributed(
        bodies.train,
        world_size=1,
        timeout=600,
        args=(
            str(tmp_path / method),
            [
                f"method={method}",
                "rollout.generation.temperature=0.7",
                "trainer.max_steps=2",
                "checkpoint.save_every=0",
            ],
        ),
    )[0]
    for row in out["rows"]:
        assert 0 <= row["rollout/logprob_diff_mean"] < 1e-5 and row["rollout/logprob_diff_max"] < 1e-4, row


def test_the_logprob_mismatch_metric_shows_a_sampler_that_was_not_refit(tmp_path):
    """Negative control of the check above (and of the CP, vLLM and SmolLM2 ones on the same
    metric): the sampler's log-probs shifted by a known offset, the logged max and mean are it."""
    offset = 0.25
    out = run_distributed(
        bodies.train_with_rollout_offset,
        world_size=1,
        timeout=600,
        args=(str(tmp_path / "off"), ["trainer.max_steps=1", "checkpoint.save_every=0"], offset),
    )[0]
    (row,) = out["rows"]
    assert row["rollout/logprob_diff_max"] == pytest.approx(offset, abs=1e-4), row
    assert row["rollout/logprob_diff_mean"] == pytest.approx(offset, abs=1e-4), row


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(DistributedTestError, match="not found"):
        run_distributed(
            bodies.train,
            world_size=1,
            timeout=300,
            args=(str(tmp_path / "c"), ["trainer.max_steps=1", f"checkpoint.resume={tmp_path}/nope"]),
        )


def test_layout_that_does_not_divide_the_batch_is_refused(tmp_path):
    with pytest.raises(DistributedTestError, match="do not split into trainer.micro_batch_size=3"):
        run_distributed(
            bodies.train, world_size=1, timeout=300, args=(str(tmp_path / "d"), ["trainer.micro_batch_size=3"])
        )


@pytest.mark.parametrize(
    "override, message",
    [
        ("method=nope", "method"),
        ("env=nope", "env"),
    ],
)
def test_unknown_method_or_env_is_refused(override, message):
    from nemo_craft.config import compose

    with pytest.raises(ValueError, match=f"bad config override.*{message}"):
        compose([override])


def test_sequence_parallel_training_after_generation(tmp_path):
    """Generation then training at TP2 + SP: buffers megatron allocates while generating are
    reused by the sequence-parallel all-gather of training."""
    outs = run_distributed(
        bodies.train,
        world_size=2,
        tp=2,
        sp=True,
        timeout=600,
        args=(
            str(tmp_path / "sp"),
            ["trainer.max_steps=1", "checkpoint.save_every=0"],
            {"tensor_model_parallel_size": 2, "sequence_parallel": "true"},
        ),
    )
    assert all(o["step"] == 1 for o in outs)
    assert np.isfinite(outs[0]["rows"][0]["train/loss"])


def test_grpo_without_the_old_pass_trains_the_same_bits(tmp_path):
    """GRPO reads pi_old only in its ratio, and one optimizer step per rollout makes pi_old the
    policy being trained: the trainer skips the old-log-prob pass and the loss takes the training
    forward's log-probs. That changes no bit of the run (DP2: the loss's ratio on every rank)."""
    args = ["method=grpo", "trainer.max_steps=2", "checkpoint.save_every=0"]
    skipped = run_distributed(bodies.train, world_size=2, timeout=600, args=(str(tmp_path / "a"), args))
    forced = run_distributed(
        bodies.train, world_size=2, timeout=600, args=(str(tmp_path / "b"), args, None, None, True)
    )
    for x, y in zip(skipped, forced):
        for name, value in x["params"].items():
            assert np.array_equal(value.view(np.int32), y["params"][name].view(np.int32)), name
    assert _stable(skipped[0]["rows"]) == _stable(forced[0]["rows"])
    assert [skipped[0]["logprob_passes"], forced[0]["logprob_passes"]] == [2, 4]  # reference (+ old) x 2 steps


def test_warm_start_cache_gives_the_same_bits(tmp_path):
    """A second run with the same warm start loads it from the cache (it does not train) and
    ends with the same parameters, at DP2 (one cache file per rank)."""
    ws = [
        "trainer.warm_start.steps=3",
        "trainer.warm_start.batch_size=4",
        f"trainer.warm_start.cache_dir={tmp_path}/ws",
        "trainer.max_steps=1",
        "checkpoint.save_every=0",
    ]
    fresh = run_distributed(bodies.train, world_size=2, timeout=600, args=(str(tmp_path / "a"), ws))
    cached = run_distributed(bodies.train, world_size=2, timeout=600, args=(str(tmp_path / "b"), ws))
    assert sorted(p.name for p in (tmp_path / "ws").glob("*/*.pt")) == ["rank00000.pt", "rank00001.pt"]
    rows = {run: [r for r in out[0]["rows"] if "warm_start/nll" in r] for run, out in (("a", fresh), ("b", cached))}
    assert len(rows["a"]) == 3 and rows["b"] == []  # trained once, then loaded
    for x, y in zip(fresh, cached):
        for name, value in x["params"].items():
            assert np.array_equal(value.view(np.int32), y["params"][name].view(np.int32)), name
    # another world size, then more steps, then another optimizer setting: each another entry,
    # not a wrong hit (all three on one rank, so only the setting tells the last two apart)
    for i, other in enumerate([[], ["trainer.warm_start.steps=4"], ["trainer.optim.adam_beta1=0.8"]]):
        run_distributed(bodies.train, world_size=1, timeout=600, args=(str(tmp_path / f"c{i}"), ws + other))
    assert len(list((tmp_path / "ws").iterdir())) == 4
