import functools
import logging
import time

import pytest

from nemo_craft.envs import EnvPool, PoolConfig, env_factory
from nemo_craft.envs.faulty import make_faulty

BACKENDS = ["thread", "process"]


def _run_plans(pool, seeds):
    first = pool.reset(seeds)
    plans = [r.privileged.split(", ") for r in first]
    trace = [[(r.observation, r.privileged, r.prompt) for r in first]]
    for k in range(max(len(p) for p in plans)):
        actions = [f"<action>{p[k]}</action>" if k < len(p) else None for p in plans]
        results = pool.step(actions)
        trace.append([None if r is None else (r.observation, r.reward, r.done, r.info["success"]) for r in results])
    return trace


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_replays_plans_deterministically(backend):
    factory = env_factory("sokoban")
    seeds = [3, 1, 4, 1, 5]
    cfg = PoolConfig(backend=backend, max_workers=2)
    with EnvPool(factory, 5, cfg) as a, EnvPool(factory, 5, cfg) as b:
        trace_a, trace_b = _run_plans(a, seeds), _run_plans(b, seeds)
        assert trace_a == trace_b
        assert trace_a[0][1] == trace_a[0][3]  # same seed, same instance
        assert all(a.done)
    finals = {}
    for row in trace_a[1:]:
        for slot, r in enumerate(row):
            if r is not None:
                finals[slot] = r
    assert all(r[2] and r[3] for r in finals.values())


def test_invalid_action_in_pool_is_penalised_not_fatal():
    with EnvPool(env_factory("sokoban"), 2) as pool:
        pool.reset([0, 1])
        bad, good = pool.step(["??", "<action>up</action>"])
        assert bad.info["invalid"] and bad.reward == pytest.approx(-0.1) and not bad.done
        assert not good.info["invalid"]
        with pytest.raises(ValueError, match="slot 2|2 actions|3 actions"):
            pool.step(["up", "up", "up"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("when", ["reset", "step"])
def test_hang_ends_only_that_episode(backend, when, caplog):
    factory = functools.partial(make_faulty, mode="hang", fail_on=when, fail_seeds=(1,), hang_s=60)
    cfg = PoolConfig(backend=backend, reset_timeout_s=1.0, step_timeout_s=1.0, failure_reward=-1.0)
    with EnvPool(factory, 3, cfg) as pool, caplog.at_level(logging.WARNING):
        t0 = time.monotonic()
        first = pool.reset([0, 1, 2])
        if when == "reset":
            assert first[1].done and first[1].reward == -1.0 and "timed out" in first[1].error
            assert not first[0].done and not first[2].done
        else:
            steps = pool.step(["go", "go", "go"])
            assert steps[1].done and "timed out" in steps[1].error and not steps[0].done
            assert steps[1].reward == -1.0 and not steps[1].info["success"]
        assert time.monotonic() - t0 < 20  # far less than the 60 s hang
        assert pool.failures and pool.failures[0]["seed"] == 1
        assert "slot 1, seed 1" in caplog.text
        # the replaced worker serves the next episode
        again = pool.reset([0, 2, 0])
        assert [r.error for r in again] == [None, None, None]
        assert pool.step(["go", "go", "go"])[1].observation == "count 1"


@pytest.mark.parametrize("backend", BACKENDS)
def test_crash_ends_episode_with_reason(backend):
    mode = "exit" if backend == "process" else "raise"
    factory = functools.partial(make_faulty, mode=mode, fail_on="step", fail_seeds=(1,))
    with EnvPool(factory, 2, PoolConfig(backend=backend)) as pool:
        pool.reset([0, 1])
        ok, crashed = pool.step(["go", "go"])
        assert crashed.done and not crashed.info["success"] and crashed.reward == 0.0
        assert ("deliberate failure" if mode == "raise" else "died") in crashed.error
        assert not ok.done and ok.error is None
        assert pool.step(["go", None])[0].done


def test_pool_config_errors():
    with pytest.raises(ValueError, match="backend"):
        PoolConfig(backend="gpu")
    with pytest.raises(ValueError, match="step_timeout_s"):
        PoolConfig(step_timeout_s=0)
