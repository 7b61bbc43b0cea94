"""Every task the project draws for training, validation and test has an expert plan that fits the
episode's turn limit: a task whose plan does not fit cannot be solved within the budget, gives its
group zero advantages and lowers every method's success alike.

The draws are those of the shipped configuration (conf/config.yaml, conf/env/*.yaml): training
seeds from ``seed * 7919`` (nemo_craft/seeds.py), validation from ``trainer.val_seed_offset``, and the
evaluation splits of ``nemo_craft.eval.splits``. ScienceWorld is checked from its shipped plan-length table (no Java);
ALFWorld's plans come from its planner, so its full draw is a slow test.
"""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_craft.config import compose
from nemo_craft.envs import make_config, make_env
from nemo_craft.envs import scienceworld as sw
from nemo_craft.envs.scienceworld_plan_lengths import PLAN_LENGTHS, SPLIT_RANGES
from nemo_craft.eval.splits import split_spec
from nemo_craft.seeds import train_task_seed0
from tests.conftest import need_engine

RUN = compose([])  # the shipped configuration, its YAMLs and the dataclass defaults they leave out
TRAIN_FIRST = train_task_seed0(RUN.seed)
VAL_FIRST = RUN.trainer.val_seed_offset
SEEDS = 300


def env_config(name: str) -> dict:
    return OmegaConf.to_container(compose([f"env={name}"]).env.config)


def draws(name: str, n: int = SEEDS) -> list[tuple[str, dict, list[int]]]:
    """(label, env config, seeds) of the training draw, the trainer's validation and each
    evaluation split (the evaluator's "val" is the trainer's validation except in ScienceWorld)."""
    cfg = env_config(name)
    out = [("train", cfg, [TRAIN_FIRST + i for i in range(n)]), ("validation", cfg, [VAL_FIRST + i for i in range(n)])]
    for split in ("val", "test"):
        spec = split_spec(name, split)
        split_cfg = cfg if spec.env_split is None else {**cfg, "split": spec.env_split}
        seeds = spec.seeds(n, val_seed_offset=VAL_FIRST)
        if all((split_cfg, seeds) != (c, s) for _, c, s in out):
            out.append((split, split_cfg, seeds))
    return out


def too_long(name: str, cfg: dict, seeds: list[int]) -> list[tuple[int, int, int]]:
    """(seed, plan length, turn limit) of every drawn task whose expert plan does not fit."""
    env = make_env(name, **cfg)
    bad = []
    try:
        for seed in seeds:
            env.reset(seed)
            plan, limit = len(env.expert_actions()), env.turn_limit()
            if plan > limit:
                bad.append((seed, plan, limit))
    finally:
        env.close()
    return bad


@pytest.mark.parametrize("name", ["sokoban", "search_qa", "webshop"])
def test_every_drawn_plan_fits_the_turn_limit(name):
    for label, cfg, seeds in draws(name):
        assert too_long(name, cfg, seeds) == [], f"{name} {label}: (seed, plan, turn limit)"


def test_every_scienceworld_variation_a_split_draws_fits_its_task_turn_limit():
    config = make_config("scienceworld", **env_config("scienceworld"))
    for task, lengths in PLAN_LENGTHS.items():
        limit = sw.task_turn_limit(task, config)
        assert config.max_turns <= limit <= config.turn_cap
        for split in SPLIT_RANGES[task]:
            drawn = sw.split_variations(task, dataclasses.replace(config, split=split))
            assert drawn, f"{task} is drawn in no {split} variation"
            over = {v: lengths[v] for v in drawn if sw.turns_needed(lengths[v]) > limit}
            assert not over, f"{task} {split}: plans longer than {limit} turns with the margin: {over}"


def test_scienceworld_seeds_draw_only_plans_that_fit():
    for label, cfg, seeds in draws("scienceworld"):
        config = make_config("scienceworld", **cfg)
        bad = []
        for seed in seeds:
            task, variation = sw.instance_of(seed, config)
            if PLAN_LENGTHS[task][variation] > sw.task_turn_limit(task, config):
                bad.append((seed, task, variation))
        assert bad == [], f"scienceworld {label}: (seed, task, variation)"


@pytest.mark.timeout(1800)  # ~1 s a reset (planner): 300 seeds outlast the default 600 s
@pytest.mark.parametrize("n", [3, pytest.param(SEEDS, marks=pytest.mark.slow)], ids=["few", "all"])
@pytest.mark.parametrize("label", ["train", "validation", "test"])
def test_every_drawn_alfworld_plan_fits_the_turn_limit(label, n, tmp_path):
    need_engine("alfworld")
    ((cfg, seeds),) = [(c, s) for name, c, s in draws("alfworld", n) if name == label]
    cfg = {**cfg, "cache_dir": str(tmp_path)}
    assert too_long("alfworld", cfg, seeds) == [], f"alfworld {label}: (seed, plan, turn limit)"


def test_scienceworld_config_names_bad_turn_settings():
    with pytest.raises(ValueError, match=r"turn_cap must be 0 .* max_turns=100, got 50"):
        make_config("scienceworld", turn_cap=50)
    with pytest.raises(ValueError, match="simplifications='easy', got ''.*turn_cap=0"):
        make_config("scienceworld", simplifications="")
    assert make_config("scienceworld", simplifications="", turn_cap=0).turn_cap == 0
    with pytest.raises(ValueError, match=r"unknown ScienceWorld task\(s\) \['boill'\]"):
        make_config("scienceworld", tasks=["boill"])


def test_a_flat_budget_leaves_plans_unfinishable_and_the_cap_leaves_out_few():
    flat = make_config("scienceworld", turn_cap=0)
    assert {sw.task_turn_limit(task, flat) for task in PLAN_LENGTHS} == {100}
    over = {task for task, lengths in PLAN_LENGTHS.items() if max(lengths) > 100}
    assert "mendelian-genetics-known-plant" in over and "find-plant" not in over
    config = make_config("scienceworld")
    total = kept = 0
    for task in PLAN_LENGTHS:
        for split in SPLIT_RANGES[task]:
            total += len(range(*SPLIT_RANGES[task][split]))
            kept += len(sw.split_variations(task, dataclasses.replace(config, split=split)))
    assert 0 < total - kept <= 0.05 * total
    assert len(sw.split_variations("boil", flat)) == len(range(*SPLIT_RANGES["boil"]["train"]))


def test_a_task_with_no_variation_under_the_cap_is_named():
    config = make_config("scienceworld", tasks=["mendelian-genetics-known-plant"], turn_cap=100)
    with pytest.raises(ValueError, match=r"no train variation .* turn_cap=100; raise turn_cap to >="):
        sw.instance_of(0, config)


def test_the_shipped_plan_table_is_the_generator_output():
    """The shipped module's ``PLAN_LENGTHS`` is in the generator's format
    (scripts/scienceworld_plan_lengths.py), and what the generator writes reads back to the same
    table: a task with another's sequences becomes an alias of it, nothing else is lost."""
    import importlib.util

    from nemo_craft.envs import scienceworld_plan_lengths as table

    path = Path(__file__).resolve().parents[3] / "scripts" / "scienceworld_plan_lengths.py"
    spec = importlib.util.spec_from_file_location("scienceworld_plan_lengths_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    lines = script.plan_length_lines(dict(sorted(PLAN_LENGTHS.items())))
    source = Path(table.__file__).read_text()
    assert source.endswith("\n".join(lines) + "\n")
    namespace: dict = {}
    exec("\n".join(lines), namespace)
    assert namespace["PLAN_LENGTHS"] == PLAN_LENGTHS
    assert sum(map(len, PLAN_LENGTHS.values())) == 7_207  # ScienceWorld 1.2.3's variations
