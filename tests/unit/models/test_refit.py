"""The layouts a serving engine's refit serves: every rank holding the whole model."""

import pytest

from nemo_craft.models.refit import check_refit_layout
from nemo_craft.parallel.config import ParallelConfig


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_tensor_parallel_layouts_are_served(tp):
    check_refit_layout(ParallelConfig(tensor_model_parallel_size=tp))


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(pipeline_model_parallel_size=2), "pipeline_model_parallel_size=2"),
        (dict(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2), "virtual_pipeline"),
    ],
)
def test_other_layouts_are_refused_naming_one_that_works(kwargs, named):
    with pytest.raises(ValueError) as e:
        check_refit_layout(ParallelConfig(tensor_model_parallel_size=2, **kwargs))
    message = str(e.value)
    assert (
        named in message and "tensor_model_parallel_size=" in message and "rollout.generation.backend=static" in message
    )
    assert "\n" not in message
