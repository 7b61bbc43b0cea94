"""The seed streams of nemo_craft/seeds.py: disjoint for the shipped configuration, and the only
home of the stream constants (a bare constant elsewhere would be a second, silent definition)."""

import ast
from pathlib import Path

from nemo_craft import seeds
from nemo_craft.config import RunConfig, compose
from nemo_craft.eval.splits import split_spec

ROOT = Path(__file__).resolve().parents[2]
RUN = RunConfig.from_omegaconf(compose([]))
TRAINER = RUN.trainer
TASKS_PER_STEP = RUN.rollout.tasks_per_step


def _ranges():
    steps, n = TRAINER.max_steps, TASKS_PER_STEP
    train0 = seeds.train_task_seed0(RUN.seed)
    val0 = TRAINER.val_seed_offset
    test0 = split_spec("sokoban", "test").seeds(1, val_seed_offset=val0)[0]
    return {
        "train": range(train0, train0 + steps * n),
        "validation": range(val0, val0 + TRAINER.val_tasks),
        "warm_start": range(seeds.WARM_START_FIRST_TASK, seeds.WARM_START_FIRST_TASK + 10**6),
        "test": range(test0, test0 + 10**4),
    }


def test_task_streams_of_the_shipped_run_do_not_overlap():
    ranges = sorted(_ranges().items(), key=lambda kv: kv[1].start)
    for (a, ra), (b, rb) in zip(ranges, ranges[1:]):
        assert ra.stop <= rb.start, f"{a} tasks {ra} overlap {b} tasks {rb}"


def test_training_tasks_of_consecutive_run_seeds_do_not_overlap():
    assert seeds.train_task_seed0(2) - seeds.train_task_seed0(1) >= TRAINER.max_steps * TASKS_PER_STEP


def test_turn_sampling_seeds_are_distinct_over_steps_ranks_and_turns():
    drawn = [
        seeds.turn_sampling_seed(seeds.step_sampling_seed(s, step), rank, turn)
        for s in (1, 2)
        for step in range(50)
        for rank in range(8)
        for turn in range(60)
    ]
    assert len(set(drawn)) == len(drawn)
    assert all(0 <= d < 2**63 for d in drawn)


def test_stream_constants_live_only_in_the_seeds_module():
    constants = {
        seeds.TRAIN_TASK_STRIDE,
        seeds.SAMPLING_STRIDE,
        seeds.TURN_STRIDE,
        seeds.WARM_START_FIRST_TASK,
        seeds.TEST_FIRST_TASK,
    }
    found = [
        f"{p.relative_to(ROOT)}:{node.lineno}"
        for p in (ROOT / "nemo_craft").rglob("*.py")
        if p.name != "seeds.py"
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value in constants
    ]
    assert not found, f"seed stream constants outside nemo_craft/seeds.py: {found}"
