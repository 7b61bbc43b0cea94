"""Which Hugging Face tensors make each megatron parameter, and how a TP rank's shard is cut.

Pure tensor code, no process groups: :func:`read_tp_shard` cuts one rank's shard out of the
Hugging Face tensors (reading only the rows/columns it needs through a ``reader``), and
:func:`merge_tp_shards` puts the shards of all TP ranks back into Hugging Face tensors. The
Hugging Face names are the model family's (``families.WeightNames``); megatron's layouts of each
tensor, the same for every family: docs/extending_model_family.md#megatrons-tensor-layouts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from nemo_craft.models.config import ModelConfig
from nemo_craft.models.families import WeightNames, family

__all__ = [
    "WeightRule",
    "weight_rule",
    "canonical_name",
    "expected_names",
    "global_named_parameters",
    "read_tp_shard",
    "merge_tp_shards",
    "hf_tensor_names",
    "hf_names",
]

# Megatron kinds: how a parameter is laid out over TP.
REPLICATED, VOCAB, COLUMN, QKV, FC1 = "replicated", "vocab", "column", "qkv", "fc1"

_TE_TO_LOCAL = (
    (".self_attention.linear_qkv.layer_norm_weight", ".input_layernorm.weight"),
    (".mlp.linear_fc1.layer_norm_weight", ".pre_mlp_layernorm.weight"),
)
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
# Megatron layer parameter -> its TP layout (the Hugging Face names are the family's,
# nemo_craft.models.families.WeightNames.per_layer).
_KIND = {
    "input_layernorm.weight": REPLICATED,
    "pre_mlp_layernorm.weight": REPLICATED,
    "self_attention.linear_qkv.weight": QKV,
    "self_attention.linear_qkv.bias": QKV,
    "self_attention.q_layernorm.weight": REPLICATED,
    "self_attention.k_layernorm.weight": REPLICATED,
    "self_attention.linear_proj.weight": COLUMN,
    "mlp.linear_fc1.weight": FC1,
    "mlp.linear_fc2.weight": COLUMN,
}


@dataclass(frozen=True)
class WeightRule:
    """One megatron parameter: its TP layout ``kind`` and the Hugging Face tensors it is made of,
    with their full (unsharded) shapes."""

    name: str
    kind: str
    hf_names: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]


def canonical_name(name: str) -> str:
    """Translate Transformer Engine's fused-norm parameter names to the local spec's."""
    for te, local in _TE_TO_LOCAL:
        if name.endswith(te):
            return name[: -len(te)] + local
    return name


def hf_names(cfg: ModelConfig) -> WeightNames:
    """The checkpoint tensor names of ``cfg``'s model family."""
    return family(cfg.architecture).weights


def weight_rule(name: str, cfg: ModelConfig) -> WeightRule:
    """The rule of a canonical megatron parameter name (global layer index)."""
    h, d, f = cfg.hidden_size, cfg.kv_channels, cfg.ffn_hidden_size
    nq, ng = cfg.num_attention_heads, cfg.num_query_groups
    names = hf_names(cfg)
    if name == "embedding.word_embeddings.weight":
        return WeightRule(name, VOCAB, (names.embedding,), ((cfg.vocab_size, h),))
    if name == "output_layer.weight":
        hf = names.embedding if cfg.tie_word_embeddings else names.output_layer
        return WeightRule(name, VOCAB, (hf,), ((cfg.vocab_size, h),))
    if name == "decoder.final_layernorm.weight":
        return WeightRule(name, REPLICATED, (names.final_norm,), ((h,),))
    match = _LAYER.match(name)
    if match is None or match.group(2) not in _KIND or match.group(2) not in names.per_layer:
        raise KeyError(f"no Hugging Face mapping for megatron parameter {name!r}")
    layer, rest = int(match.group(1)), match.group(2)
    kind, suffixes = _KIND[rest], names.per_layer[rest]
    shapes = {
        "input_layernorm.weight": ((h,),),
        "pre_mlp_layernorm.weight": ((h,),),
        "self_attention.linear_qkv.weight": ((nq * d, h), (ng * d, h), (ng * d, h)),
        "self_attention.linear_qkv.bias": ((nq * d,), (ng * d,), (ng * d,)),
        "self_attention.q_layernorm.weight": ((d,),),
        "self_attention.k_layernorm.weight": ((d,),),
        "self_attention.linear_proj.weight": ((h, nq * d),),
        "mlp.linear_fc1.weight": ((f, h), (f, h)),
        "mlp.linear_fc2.weight": ((h, f),),
    }[rest]
    return WeightRule(name, kind, tuple(names.layer(layer, s) for s in suffixes), shapes)


def expected_names(cfg: ModelConfig) -> list[str]:
    """Canonical megatron parameter names of the whole model, in export order. ``output_layer``
    is absent when tied (its weight is the embedding's)."""
    per_layer = ["input_layernorm.weight", "self_attention.linear_qkv.weight"]
    if cfg.add_qkv_bias:
        per_layer.append("self_attention.linear_qkv.bias")
    if cfg.qk_layernorm:
        per_layer += ["self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"]
    per_layer += [
        "self_attention.linear_proj.weight",
        "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight",
    ]
    names = ["embedding.word_embeddings.weight"]
    names += [f"decoder.layers.{i}.{p}" for i in range(cfg.num_layers) for p in per_layer]
    names.append("decoder.final_layernorm.weight")
    if not cfg.tie_word_embeddings:
        names.append("output_layer.weight")
    return names


def hf_tensor_names(cfg: ModelConfig) -> set[str]:
    """Every Hugging Face tensor the model reads (``lm_head.weight`` only when untied)."""
    return {n for name in expected_names(cfg) for n in weight_rule(name, cfg).hf_names}


def global_named_parameters(chunk) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """``(canonical name, parameter)`` of a GPTModel chunk, layer indices made global."""
    local_to_global = {str(j): str(layer.layer_number - 1) for j, layer in enumerate(chunk.decoder.layers)}
    for name, param in chunk.named_parameters():
        match = _LAYER.match(name)
        if match is not None:
            name = f"decoder.layers.{local_to_global[match.group(1)]}.{match.group(2)}"
        yield canonical_name(name), param


# A reader returns rows [r0, r1) (and, for 2-D tensors, optionally columns [c0, c1)) of a tensor.
Reader = Callable[[str, Optional[tuple[int, int]], Optional[tuple[int, int]]], torch.Tensor]


def _block(n: int, rank: int, size: int) -> tuple[int, int]:
    assert n % size == 0, (n, size)
    per = n // size
    return rank * per, (rank + 1) * per


def read_tp_shard(rule: WeightRule, read: Reader, cfg: ModelConfig, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's shard of the megatron parameter ``rule.name``, read with ``read``."""
    if rule.kind == REPLICATED:
        return read(rule.hf_names[0], None, None)
    if rule.kind == COLUMN:
        return read(rule.hf_names[0], None, _block(rule.hf_shapes[0][1], tp_rank, tp_size))
    if rule.kind == VOCAB:
        vocab, h = rule.hf_shapes[0]
        start, end = _block(cfg.padded_vocab_size(tp_size), tp_rank, tp_size)
        real_end = min(end, vocab)
        parts = [read(rule.hf_names[0], (start, real_end), None)] if start < real_end else []
        pad = end - max(start, real_end)
        if pad:
            like = parts[0] if parts else read(rule.hf_names[0], (0, 1), None)
            parts.append(like.new_zeros((pad, h)))
        return torch.cat(parts, dim=0)
    if rule.kind == FC1:
        rows = _block(cfg.ffn_hidden_size, tp_rank, tp_size)
        return torch.cat([read(n, rows, None) for n in rule.hf_names], dim=0)
    if rule.kind == QKV:
        d, hpg = cfg.kv_channels, cfg.num_attention_heads // cfg.num_query_groups
        g0, g1 = _block(cfg.num_query_groups, tp_rank, tp_size)
        q = read(rule.hf_names[0], (g0 * hpg * d, g1 * hpg * d), None)
        k = read(rule.hf_names[1], (g0 * d, g1 * d), None)
        v = read(rule.hf_names[2], (g0 * d, g1 * d), None)
        rest = tuple(q.shape[1:])
        groups = g1 - g0
        qkv = torch.cat(
            [q.reshape(groups, hpg * d, *rest), k.reshape(groups, d, *rest), v.reshape(groups, d, *rest)], dim=1
        )
        return qkv.reshape(groups * (hpg + 2) * d, *rest)
    raise AssertionError(rule.kind)


def merge_tp_shards(rule: WeightRule, shards: Sequence[torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The Hugging Face tensors of ``rule`` from the shards of all TP ranks (in TP-rank order)."""
    if rule.kind == REPLICATED:
        return {rule.hf_names[0]: shards[0]}
    if rule.kind == COLUMN:
        return {rule.hf_names[0]: torch.cat(list(shards), dim=1)}
    if rule.kind == VOCAB:
        return {rule.hf_names[0]: torch.cat(list(shards), dim=0)[: rule.hf_shapes[0][0]]}
    if rule.kind == FC1:
        halves = [s.chunk(2, dim=0) for s in shards]
        return {
            rule.hf_names[0]: torch.cat([g for g, _ in halves], dim=0),
            rule.hf_names[1]: torch.cat([u for _, u in halves], dim=0),
        }
    if rule.kind == QKV:
        d, hpg = cfg.kv_channels, cfg.num_attention_heads // cfg.num_query_groups
        full = torch.cat(list(shards), dim=0)
        rest = tuple(full.shape[1:])
        full = full.reshape(cfg.num_query_groups, (hpg + 2) * d, *rest)
        q, k, v = full.split([hpg * d, d, d], dim=1)
        return {n: t.reshape(-1, *rest).contiguous() for n, t in zip(rule.hf_names, (q, k, v))}
    raise AssertionError(rule.kind)
