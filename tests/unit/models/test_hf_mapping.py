import json

import pytest
import torch
from safetensors.torch import save_file

from nemo_craft.models.config import ModelConfig
from nemo_craft.models.hf import SafetensorsReader
from nemo_craft.models.hf_mapping import (
    canonical_name,
    expected_names,
    hf_tensor_names,
    merge_tp_shards,
    read_tp_shard,
    weight_rule,
)

# 8 query heads in 4 groups (2 per group), head dim 8, vocab 300 (padded to 384 / 512 / 512).
CFG = ModelConfig(
    architecture="qwen2",
    add_qkv_bias=True,
    qk_layernorm=False,
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=96,
    num_attention_heads=8,
    num_query_groups=4,
    kv_channels=8,
    vocab_size=300,
)


def _full_tensors(cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in expected_names(cfg):
        rule = weight_rule(name, cfg)
        for hf_name, shape in zip(rule.hf_names, rule.hf_shapes):
            out[hf_name] = torch.randn(shape, generator=gen)
    return out


class DictReader:
    """Reads rows/columns of in-memory tensors and records what was asked for."""

    def __init__(self, tensors):
        self.tensors, self.calls = tensors, []

    def __call__(self, name, rows, cols):
        self.calls.append((name, rows, cols))
        t = self.tensors[name]
        t = t[slice(*rows)] if rows is not None else t
        return t[:, slice(*cols)] if cols is not None else t


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_every_parameter_round_trips_through_tp_shards(tp):
    full = _full_tensors(CFG)
    reader = DictReader(full)
    for name in expected_names(CFG):
        rule = weight_rule(name, CFG)
        shards = [read_tp_shard(rule, reader, CFG, r, tp) for r in range(tp)]
        assert len({tuple(s.shape) for s in shards}) == 1
        merged = merge_tp_shards(rule, shards, CFG)
        assert set(merged) == set(rule.hf_names)
        for hf_name in rule.hf_names:
            assert torch.equal(merged[hf_name], full[hf_name]), (name, hf_name, tp)


def _labelled_qkv(cfg):
    """q/k/v whose rows say (kind, head): q head i rows = 100 + i, k head j = 200 + j, v = 300 + j."""
    d, h = cfg.kv_channels, cfg.hidden_size
    q = torch.cat([torch.full((d, h), 100.0 + i) for i in range(cfg.num_attention_heads)])
    k = torch.cat([torch.full((d, h), 200.0 + j) for j in range(cfg.num_query_groups)])
    v = torch.cat([torch.full((d, h), 300.0 + j) for j in range(cfg.num_query_groups)])
    return {
        "model.layers.0.self_attn.q_proj.weight": q,
        "model.layers.0.self_attn.k_proj.weight": k,
        "model.layers.0.self_attn.v_proj.weight": v,
    }


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_qkv_is_interleaved_per_query_group_and_split_by_groups(tp):
    rule = weight_rule("decoder.layers.0.self_attention.linear_qkv.weight", CFG)
    reader = DictReader(_labelled_qkv(CFG))
    groups_per_rank = CFG.num_query_groups // tp
    for r in range(tp):
        shard = read_tp_shard(rule, reader, CFG, r, tp)
        heads = shard[:: CFG.kv_channels, 0].tolist()  # one label per head-sized block of rows
        expected = []
        for g in range(r * groups_per_rank, (r + 1) * groups_per_rank):
            expected += [100.0 + 2 * g, 100.0 + 2 * g + 1, 200.0 + g, 300.0 + g]  # q q k v of group g
        assert heads == expected


def test_fc1_shard_is_gate_slice_then_up_slice():
    rule = weight_rule("decoder.layers.1.mlp.linear_fc1.weight", CFG)
    gate = torch.arange(96.0).unsqueeze(1).expand(96, 64)
    up = 1000 + gate
    reader = DictReader({"model.layers.1.mlp.gate_proj.weight": gate, "model.layers.1.mlp.up_proj.weight": up})
    shard = read_tp_shard(rule, reader, CFG, 1, 2)
    assert shard[:, 0].tolist() == list(range(48, 96)) + [1000.0 + i for i in range(48, 96)]


def test_vocab_shards_are_padded_with_zero_rows_and_export_drops_them():
    rule = weight_rule("embedding.word_embeddings.weight", CFG)
    full = torch.randn(300, 64)
    reader = DictReader({"model.embed_tokens.weight": full})
    shards = [read_tp_shard(rule, reader, CFG, r, 2) for r in range(2)]
    assert [tuple(s.shape) for s in shards] == [(256, 64), (256, 64)]  # padded 512 over TP 2
    assert torch.equal(shards[1][:44], full[256:]) and not shards[1][44:].any()
    assert torch.equal(merge_tp_shards(rule, shards, CFG)["model.embed_tokens.weight"], full)
    # A rank whose block lies wholly in the padding reads nothing from the file's rows.
    shards4 = [read_tp_shard(rule, reader, CFG, r, 4) for r in range(4)]
    assert not shards4[3][44:].any() and tuple(shards4[3].shape) == (128, 64)


def test_each_rank_reads_only_its_rows_or_columns():
    full = _full_tensors(CFG)
    reader = DictReader(full)
    for name in expected_names(CFG):
        rule = weight_rule(name, CFG)
        if rule.kind == "replicated":
            continue
        reader.calls.clear()
        read_tp_shard(rule, reader, CFG, 1, 2)
        for hf_name, rows, cols in reader.calls:
            shape = full[hf_name].shape
            n_rows = (rows[1] - rows[0]) if rows else shape[0]
            n_cols = (cols[1] - cols[0]) if cols else (shape[1] if len(shape) > 1 else 1)
            full_cols = shape[1] if len(shape) > 1 else 1
            assert n_rows * n_cols <= shape[0] * full_cols // 2, (name, hf_name, rows, cols)


def test_tied_output_layer_reads_the_embedding_and_names_follow_the_flags():
    tied = ModelConfig(num_layers=1, tie_word_embeddings=True)
    assert weight_rule("output_layer.weight", tied).hf_names == ("model.embed_tokens.weight",)
    assert "output_layer.weight" not in expected_names(tied) and "lm_head.weight" not in hf_tensor_names(tied)
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"} <= hf_tensor_names(tied)
    names = hf_tensor_names(CFG)
    assert "lm_head.weight" in names and "model.layers.1.self_attn.v_proj.bias" in names
    assert not any("q_norm" in n for n in names)


def test_transformer_engine_names_map_to_local_ones():
    assert (
        canonical_name("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight")
        == "decoder.layers.3.input_layernorm.weight"
    )
    assert (
        canonical_name("decoder.layers.0.mlp.linear_fc1.layer_norm_weight")
        == "decoder.layers.0.pre_mlp_layernorm.weight"
    )
    assert canonical_name("decoder.layers.0.mlp.linear_fc1.weight") == "decoder.layers.0.mlp.linear_fc1.weight"


def test_unknown_parameter_is_an_error():
    with pytest.raises(KeyError, match="no Hugging Face mapping"):
        weight_rule("decoder.layers.0.mlp.router.weight", CFG)


def test_reader_follows_a_sharded_index_and_slices(tmp_path):
    a, b = torch.randn(6, 4), torch.randn(5).to(torch.bfloat16)
    save_file({"a": a}, str(tmp_path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file({"b": b}, str(tmp_path / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    reader = SafetensorsReader(str(tmp_path))
    assert reader.keys() == {"a", "b"} and reader.shape("a") == (6, 4)
    assert torch.equal(reader.read("a", (2, 4), (1, 3)), a[2:4, 1:3])
    assert torch.equal(reader.read("b", (1, 3)), b[1:3]) and reader.read("b").dtype == torch.bfloat16
    with pytest.raises(KeyError, match="'c' is not in the checkpoint"):
        reader.read("c")
    reader.close()


def test_reader_refuses_a_directory_without_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError, match="only safetensors checkpoints"):
        SafetensorsReader(str(tmp_path))


@pytest.fixture(scope="module")
def qwen3_checkpoint(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    return make_tiny_hf_checkpoint(str(tmp_path_factory.mktemp("qwen3")), "qwen3", num_layers=1, tied=True)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(architecture="qwen2", add_qkv_bias=True, qk_layernorm=False), r"lacks 3 tensors .*q_proj.bias"),
        (dict(architecture="llama", qk_layernorm=False), r"has 2 tensors the model has no place for.*k_norm"),
        (dict(tie_word_embeddings=False), r"lacks 1 tensors .*lm_head.weight"),
    ],
)
def test_checkpoint_that_does_not_match_the_config_is_refused(qwen3_checkpoint, change, match):
    import dataclasses

    from nemo_craft.models.hf import load_hf_weights

    cfg = dataclasses.replace(ModelConfig.from_hf_config(qwen3_checkpoint), **change)
    with pytest.raises(ValueError, match=match):
        load_hf_weights([], cfg)


def test_load_needs_a_checkpoint_directory():
    from nemo_craft.models.hf import load_hf_weights

    with pytest.raises(ValueError, match="no checkpoint directory"):
        load_hf_weights([], ModelConfig())
