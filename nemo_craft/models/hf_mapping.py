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
    "is_expert_kind",
]

# Megatron kinds: how a parameter is laid out over TP.
REPLICATED, VOCAB, COLUMN, QKV, FC1 = "replicated", "vocab", "column", "qkv", "fc1"
# An expert's MLP: FC1 / COLUMN over the expert-tensor-parallel group.
EXPERT_FC1, EXPERT_COLUMN = "expert_fc1", "expert_column"
_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(linear_fc[12]\.weight)$")
_TE_GROUPED_EXPERT = re.compile(r"^mlp\.experts\.(linear_fc[12])\.weight(\d+)$")

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
    "mlp.router.weight": REPLICATED,
}


@dataclass(frozen=True)
class WeightRule:
    """One megatron parameter: its TP layout ``kind`` and the Hugging Face tensors it is made of,
    with their full (unsharded) shapes."""

    name: str
    kind: str
    hf_names: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]


def is_expert_kind(kind: str) -> bool:
    """Whether a parameter of this kind is one expert's (sharded over ETP, owned by one EP rank)."""
    return kind in (EXPERT_FC1, EXPERT_COLUMN)


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
    expert = _EXPERT.match(match.group(2)) if match is not None else None
    if expert is not None and names.moe_per_layer:
        return _expert_rule(name, int(match.group(1)), int(expert.group(1)), expert.group(2), cfg, names)
    if (
        match is None
        or match.group(2) not in _KIND
        or (match.group(2) not in names.per_layer and match.group(2) not in names.moe_per_layer)
    ):
        raise KeyError(f"no Hugging Face mapping for megatron parameter {name!r}")
    layer, rest = int(match.group(1)), match.group(2)
    if rest in names.moe_per_layer:  # the router
        return WeightRule(
            name, REPLICATED, (names.layer(layer, names.moe_per_layer[rest][0]),), ((cfg.num_experts, h),)
        )
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


def _expert_rule(name: str, layer: int, expert: int, fc: str, cfg: ModelConfig, names: WeightNames) -> WeightRule:
    h, f = cfg.hidden_size, cfg.moe_ffn_hidden_size
    suffixes = names.moe_per_layer[f"mlp.experts.{fc}"]
    hf = tuple(names.layer(layer, s.format(expert=expert)) for s in suffixes)
    if fc == "linear_fc1.weight":
        return WeightRule(name, EXPERT_FC1, hf, ((f, h), (f, h)))
    return WeightRule(name, EXPERT_COLUMN, hf, ((h, f),))


def expected_names(cfg: ModelConfig) -> list[str]:
    """Canonical megatron parameter names of the whole model, in export order. ``output_layer``
    is absent when tied (its weight is the embedding's)."""
    per_layer = ["input_layernorm.weight", "self_attention.linear_qkv.weight"]
    if cfg.add_qkv_bias:
        per_layer.append("self_attention.linear_qkv.bias")
    if cfg.qk_layernorm:
        per_layer += ["self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"]
    per_layer += ["self_attention.linear_proj.weight", "pre_mlp_layernorm.weight"]
    dense_mlp = ["mlp.linear_fc1.weight", "mlp.linear_fc2.weight"]
    moe_mlp = ["mlp.router.weight"] + [
        f"mlp.experts.local_experts.{e}.{fc}"
        for e in range(cfg.num_experts or 0)
        for fc in ("linear_fc1.weight", "linear_fc2.weight")
    ]
    names = ["embedding.word_embeddings.weight"]
    for i, sparse in enumerate(cfg.moe_layer_pattern()):
        names += [f"decoder.layers.{i}.{p}" for p in per_layer + (moe_mlp if sparse else dense_mlp)]
    names.append("decoder.final_layernorm.weight")
    if not cfg.tie_word_embeddings:
        names.append("output_layer.weight")
    return names


def hf_tensor_names(cfg: ModelConfig) -> set[str]:
    """Every Hugging Face tensor the model reads (``lm_head.weight`` only when untied)."""
    return {n for name in expected_names(cfg) for n in weight_rule(name, cfg).hf_names}


def global_named_parameters(chunk) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """``(canonical name, parameter)`` of a GPTModel chunk, layer indices made global."""
    layers = {str(j): layer for j, layer in enumerate(chunk.decoder.layers)}
    for name, param in chunk.named_parameters():
        match = _LAYER.match(name)
        if match is not None:
            layer, rest = layers[match.group(1)], match.group(2)
            name = f"decoder.layers.{layer.layer_number - 1}.{_global_expert(rest, layer)}"
        yield canonical_name(name), param


def _global_expert(rest: str, layer) -> str:
    """A layer parameter's name with its local expert index made global (others unchanged)."""
    local = _EXPERT.match(rest)
    if local is not None:
        j, fc = int(local.group(1)), local.group(2)
    else:
        grouped = _TE_GROUPED_EXPERT.match(rest)
        if grouped is None:
            return rest
        j, fc = int(grouped.group(2)), grouped.group(1) + ".weight"
    return f"mlp.experts.local_experts.{layer.mlp.local_expert_indices[j]}.{fc}"


# A reader returns rows [r0, r1) (and, for 2-D tensors, optionally columns [c0, c1)) of a tensor.
Reader = Callable[[str, Optional[tuple[int, int]], Optional[tuple[int, int]]], torch.Tensor]


def _block(n: int, rank: int, size: int) -> tuple[int, int]:
    assert n % size == 0, (n, size)
    per = n // size
    return rank * per, (rank + 1) * per


def read_tp_shard(rule: WeightRule, read: Reader, cfg: ModelConfig, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's shard of the megatron parameter ``rule.name``, read with ``read`` (for an
    expert's parameter, ``tp_rank`` / ``tp_size`` are the expert-tensor-parallel ones)."""
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
    if rule.kind in (FC1, EXPERT_FC1):
        width = cfg.ffn_hidden_size if rule.kind == FC1 else cfg.moe_ffn_hidden_size
        rows = _block(width, tp_rank, tp_size)
        return torch.cat([read(n, rows, None) for n in rule.hf_names], dim=0)
    if rule.kind == EXPERT_COLUMN:
        return read(rule.hf_names[0], None, _block(rule.hf_shapes[0][1], tp_rank, tp_size))
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
    if rule.kind in (COLUMN, EXPERT_COLUMN):
        return {rule.hf_names[0]: torch.cat(list(shards), dim=1)}
    if rule.kind == VOCAB:
        return {rule.hf_names[0]: torch.cat(list(shards), dim=0)[: rule.hf_shapes[0][0]]}
    if rule.kind in (FC1, EXPERT_FC1):
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
