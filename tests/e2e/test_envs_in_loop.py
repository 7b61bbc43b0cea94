"""Every environment runs inside the RL loop from its config group (``env=NAME``)."""

import numpy as np
import pytest

from nemo_craft.testing.distributed import run_distributed
from tests.conftest import need_engine
from tests.e2e import _bodies_train as bodies

ENVS = [
    pytest.param("sokoban", [], id="sokoban"),
    pytest.param("search_qa", ["env.config.topk=1", "env.config.max_passage_chars=60"], id="search_qa"),
    pytest.param("webshop", ["env.config.num_products=50"], id="webshop"),
    pytest.param("scienceworld", [], id="scienceworld", marks=pytest.mark.slow),
    pytest.param("alfworld", [], id="alfworld", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("env, extra", ENVS)
def test_one_training_step_on_each_environment(tmp_path, env, extra):
    if env in ("scienceworld", "alfworld"):
        need_engine(env)
    out = run_distributed(
        bodies.train,
        world_size=1,
        timeout=900,
        args=(
            str(tmp_path / env),
            [
                f"env={env}",
                "trainer.max_steps=1",
                "checkpoint.save_every=0",
                "trainer.val_every=1",
                "trainer.val_tasks=1",
                *extra,
            ],
        ),
    )[0]
    assert out["step"] == 1
    train_rows = [r for r in out["rows"] if "train/loss" in r]
    assert len(train_rows) == 1 and np.isfinite(train_rows[0]["train/loss"])
    assert any("val/success_rate" in r for r in out["rows"])
