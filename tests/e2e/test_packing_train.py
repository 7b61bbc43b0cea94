"""`nemo-craft train` with trainer.max_tokens_per_microbatch: the same first step as the padded run
(the same rollouts, the loss and gradient norm to 1e-5), each pass's padding fraction logged, and
the refusal of a budget the model cannot pack."""

import pytest

from nemo_craft.testing.distributed import run_distributed
from tests.e2e import _bodies_train as bodies

ONE_STEP = ["trainer.max_steps=1", "checkpoint.save_every=0", "method=craft"]
PADS = ("perf/pad_frac_old", "perf/pad_frac_teacher", "perf/pad_frac_ref", "perf/pad_frac_train")


def _first_row(run_dir, overrides):
    out = run_distributed(bodies.train, world_size=1, timeout=600, args=(str(run_dir), ONE_STEP + overrides))[0]
    return out["rows"][0]


def test_a_packed_step_equals_the_padded_step(tmp_path):
    padded = _first_row(tmp_path / "padded", [])
    packed = _first_row(tmp_path / "packed", ["trainer.max_tokens_per_microbatch=1024"])
    assert packed["rollout/reward_mean"] == padded["rollout/reward_mean"]  # the same rollouts
    for key in ("train/loss", "train/grad_norm", "loss/pg", "loss/distill", "loss/kl_ref"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-5, abs=1e-7), key
    for key in PADS:
        assert 0.0 <= packed[key] < 1.0 and 0.0 <= padded[key] < 1.0, key
    assert packed["perf/pad_frac_train"] < padded["perf/pad_frac_train"]


def test_packing_with_megatrons_local_attention_is_refused(tmp_path):
    from nemo_craft.config import load_run
    from nemo_craft.trainer.trainer import RLTrainer

    run = load_run(
        bodies.SMALL + [f"run_dir={tmp_path}", "trainer.max_tokens_per_microbatch=1024", "model.core_attention=local"]
    )
    with pytest.raises(ValueError, match="use model.core_attention=sdpa or leave packing off"):
        RLTrainer(run)
