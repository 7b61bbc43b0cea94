"""`nemo-craft train` at context parallel 2, launched under torchrun as users launch it: its first
step (the same rollouts, generated on every CP rank with CP off; the four passes on load-balanced
halves of every sequence) equals the CP1 run's within 1e-5."""

import pytest

from tests.e2e import _launch as launch

ONE_STEP = ["trainer.max_steps=1", "checkpoint.save_every=0", "method=craft"]
KEYS = ("train/loss", "train/grad_norm", "loss/pg", "loss/distill", "loss/kl_ref", "loss/entropy")


def test_the_first_step_at_cp2_equals_cp1(tmp_path):
    launch.train(1, tmp_path / "cp1", ONE_STEP)
    launch.train(2, tmp_path / "cp2", ONE_STEP + ["parallel.context_parallel_size=2"])
    (one,), (two,) = launch.metrics(tmp_path / "cp1"), launch.metrics(tmp_path / "cp2")
    assert two["rollout/reward_mean"] == one["rollout/reward_mean"]  # the same rollouts
    assert two["credit/num_tokens"] == one["credit/num_tokens"] > 0  # the global token count of token_mean
    assert one["train/grad_norm"] > 0 and two["rollout/logprob_diff_max"] < 1e-5  # pi_old is the sampler's
    for key in KEYS:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
