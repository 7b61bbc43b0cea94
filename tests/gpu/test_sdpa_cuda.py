"""SDPAttention against megatron's local attention on a GPU (PyTorch's CUDA attention kernels:
flash / memory-efficient), every mask case, GQA. Skipped on machines without CUDA."""

import pytest
import torch

from nemo_craft.testing.distributed import run_distributed
from tests.distributed import _bodies_sdpa as bodies

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("heads,groups", [(4, 4), (8, 2)], ids=["mha", "gqa"])
def test_sdpa_matches_megatrons_local_attention_on_cuda(heads, groups):
    (out,) = run_distributed(bodies.compare_with_megatron, world_size=1, args=(heads, groups, 16), device="cuda")
    for case, r in out.items():
        assert r["finite"], case
        assert r["out"] < 1e-4 and r["grad"] < 1e-4, (case, r)


def test_sdpa_dropout_on_cuda():
    (out,) = run_distributed(bodies.dropout_draws_from_the_model_parallel_rng, world_size=1, device="cuda")
    assert out == dict(device="cuda", same_seed_same=True, train_differs_from_eval=True)
