"""``full_hf_weights``: what a serving engine is refit with. At TP1 and TP2 every rank gets every
Hugging Face tensor of the checkpoint the model was loaded from, bit for bit (q/k/v with biases
interleaved per query group, SwiGLU's gate/up halves, a padded vocabulary, tied embeddings), in a
fixed order; a layout with pipeline stages is refused."""

from __future__ import annotations

import pytest
import torch

from nemo_craft.testing.distributed import run_distributed

CHECKPOINTS = {
    "qwen2": ("qwen2", dict(num_layers=2, vocab_size=300, num_attention_heads=8, num_key_value_heads=4)),
    "qwen3_tied": ("qwen3", dict(num_layers=2, tied=True, head_dim=32)),
}


def body(paths: dict):
    from nemo_craft.models.hf import load_hf_model
    from nemo_craft.models.refit import full_hf_weights
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.distributed import current_layout

    parallel = ParallelConfig(tensor_model_parallel_size=current_layout().tp)
    out = {}
    for name, path in paths.items():
        model_cfg, chunks = load_hf_model(path, parallel)
        out[name] = [(hf_name, t.clone().numpy()) for hf_name, t in full_hf_weights(chunks, model_cfg)]
    return out


def body_pipeline():
    from nemo_craft.models.provider import build_model
    from nemo_craft.models.refit import full_hf_weights
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.models import tiny_model_config

    cfg = tiny_model_config(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        num_query_groups=None,
        kv_channels=None,
        make_vocab_size_divisible_by=128,
        tie_word_embeddings=False,
    )
    chunks = build_model(cfg, ParallelConfig(pipeline_model_parallel_size=2))
    try:
        next(full_hf_weights(chunks, cfg))
    except ValueError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("hf")
    return {
        name: make_tiny_hf_checkpoint(str(root / name), arch, dtype=torch.float32, seed=i, **kw)
        for i, (name, (arch, kw)) in enumerate(CHECKPOINTS.items())
    }


@pytest.mark.parametrize("tp", [1, 2])
def test_every_rank_gets_the_checkpoints_tensors(checkpoints, tp):
    from safetensors.torch import load_file

    from nemo_craft.models.hf import SafetensorsReader

    ranks = run_distributed(body, world_size=tp, tp=tp, args=(checkpoints,), timeout=300)
    for name, path in checkpoints.items():
        reader = SafetensorsReader(path)
        expected = {}
        for file in set(reader.weight_map.values()):
            expected.update(load_file(f"{path}/{file}"))
        for got in (r[name] for r in ranks):
            assert [n for n, _ in got] == [n for n, _ in ranks[0][name]], "ranks iterate in different orders"
            assert sorted(n for n, _ in got) == sorted(expected), name
            for hf_name, tensor in got:
                assert torch.equal(torch.from_numpy(tensor), expected[hf_name]), f"{name}: {hf_name}"


def test_pipeline_stages_are_refused():
    message = run_distributed(body_pipeline, world_size=2, pp=2, timeout=120)[0]
    assert message is not None and "pipeline parallel 1" in message
