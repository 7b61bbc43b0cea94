"""rollout.placement / generation_ranks / max_staleness: defaults are today's colocated, synchronous
run; every bad value or combination is one line naming it and what is allowed."""

from __future__ import annotations

import pytest

from nemo_craft.rollout.config import GenerationConfig, RolloutConfig


def test_default_is_colocated_and_synchronous():
    r = RolloutConfig()
    assert (r.placement, r.generation_ranks, r.max_staleness) == ("colocated", 0, 0)
    assert r.check_placement(4) == 4


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(placement="split"), "rollout.placement='split': must be one of ('colocated', 'disaggregated')"),
        (dict(max_staleness=-1), "rollout.max_staleness=-1: must be an integer >= 0"),
        (dict(generation_ranks=True), "rollout.generation_ranks=True: must be an integer >= 0"),
        (dict(generation_ranks=2), "rollout.generation_ranks=2 with rollout.placement=colocated"),
        (dict(max_staleness=1), "rollout.max_staleness=1 with rollout.placement=colocated"),
        (dict(placement="disaggregated"), "rollout.placement=disaggregated with rollout.generation_ranks=0"),
    ],
)
def test_bad_values_are_one_line(fields, message):
    with pytest.raises(ValueError) as err:
        RolloutConfig(**fields)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_start_up_refusals_name_what_runs():
    r = RolloutConfig(placement="disaggregated", generation_ranks=2, max_staleness=1)
    with pytest.raises(ValueError, match="leaves no training rank of the world size 2; allowed: 1 to 1"):
        r.check_placement(2)
    dynamic = RolloutConfig(
        placement="disaggregated", generation_ranks=1, generation=GenerationConfig(backend="dynamic")
    )
    with pytest.raises(ValueError, match="backend='dynamic' cannot run on a generation rank; allowed .*static, vllm"):
        dynamic.check_placement(3)
    assert r.check_placement(3) == 1  # the ranks that train


def test_the_trainer_refuses_at_start_up_before_any_process_group():
    from nemo_craft.config import load_run
    from nemo_craft.trainer.trainer import check_training

    fields = ["rollout.placement=disaggregated", "rollout.max_staleness=1", "rollout.tasks_per_step=2"]
    fields.append("trainer.micro_batch_size=1")
    run = load_run([*fields, "rollout.generation_ranks=1"])
    assert run.rollout.max_staleness == 1  # settable as section.field=value
    assert check_training(run, world_size=3) == 2  # two data-parallel trainers
    with pytest.raises(ValueError, match="rollout.generation_ranks=3 > the 2 data-parallel ranks that train"):
        check_training(load_run([*fields, "rollout.generation_ranks=3"]), world_size=5)
    with pytest.raises(ValueError, match="rollout.placement=disaggregated serves layouts where every rank holds"):
        check_training(
            load_run([*fields, "rollout.generation_ranks=1", "parallel.pipeline_model_parallel_size=2"]), world_size=5
        )
    assert check_training(load_run([]), world_size=1) == 1  # the default as before
