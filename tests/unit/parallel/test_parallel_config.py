import pytest

from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.parallel.initialize import resolve_backend


def test_data_parallel_size_is_what_is_left():
    cfg = ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    assert cfg.data_parallel_size(8) == 2


def test_layout_that_does_not_divide_names_the_values():
    cfg = ParallelConfig(tensor_model_parallel_size=4, pipeline_model_parallel_size=2)
    with pytest.raises(ValueError, match=r"world size 12 is not divisible by TP\*PP\*CP = 4\*2\*1 = 8"):
        cfg.data_parallel_size(12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tensor_model_parallel_size=0), "tensor_model_parallel_size=0"),
        (dict(sequence_parallel=True), "sequence_parallel=true needs tensor_model_parallel_size > 1"),
        (dict(virtual_pipeline_model_parallel_size=2), "needs pipeline_model_parallel_size >= 2"),
        (dict(backend="mpi"), "backend='mpi'"),
        (dict(overlap_param_gather=True), "needs use_distributed_optimizer"),
    ],
)
def test_bad_layouts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**kwargs)


def test_backend_auto_is_gloo_without_cuda_and_nccl_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the machine without CUDA")
    assert resolve_backend("auto") == "gloo"
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_backend("nccl")
