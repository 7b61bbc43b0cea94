"""Model families: everything the project knows about one Hugging Face architecture, in one record.

    fam = family("qwen3")                       # by ModelConfig.architecture
    fam = family_for_hf_config(config_json)     # by config.json's model_type (or architectures)
    register_family(ModelFamily(name="mymodel", ...))

A family is what :class:`~nemo_craft.models.config.ModelConfig` fixes for its ``architecture``
(bias and q/k-norm flags, the RoPE scalings allowed), what a Hugging Face ``config.json`` of it
says (``model_type``, the ``architectures`` class a serving engine such as vLLM builds,
keys that must have a given value) and the names of its tensors in a safetensors checkpoint
(:class:`WeightNames`, used by import, export and the serving engine's refit). Adding a family
is a :func:`register_family` call plus a ``conf/model/*.yaml`` (docs/extending_model_family.md).

Pure data: this module imports nothing of the project and no transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "ModelFamily",
    "WeightNames",
    "LLAMA_WEIGHT_NAMES",
    "QWEN3_MOE_WEIGHT_NAMES",
    "register_family",
    "family",
    "family_names",
    "family_for_hf_config",
]

# Megatron parameter of one transformer layer (canonical name, without "decoder.layers.N.")
# -> the Hugging Face tensors it is made of, in the order megatron concatenates them
# (q, k, v for linear_qkv; gate, up for linear_fc1). How each is laid out over tensor
# parallel is megatron's, the same for every family (nemo_craft.models.hf_mapping).
_LLAMA_PER_LAYER = {
    "input_layernorm.weight": ("input_layernorm.weight",),
    "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight",),
    "self_attention.linear_qkv.weight": (
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
    ),
    "self_attention.linear_qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "self_attention.q_layernorm.weight": ("self_attn.q_norm.weight",),
    "self_attention.k_layernorm.weight": ("self_attn.k_norm.weight",),
    "self_attention.linear_proj.weight": ("self_attn.o_proj.weight",),
    "mlp.linear_fc1.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.linear_fc2.weight": ("mlp.down_proj.weight",),
}


@dataclass(frozen=True)
class WeightNames:
    """Where a family's checkpoint keeps each megatron parameter."""

    embedding: str = "model.embed_tokens.weight"
    """The input embedding (also the output layer's weight when embeddings are tied)."""
    final_norm: str = "model.norm.weight"
    output_layer: str = "lm_head.weight"
    """The untied output layer (absent from tied checkpoints)."""
    layer_prefix: str = "model.layers.{layer}."
    """Prefix of layer ``layer``'s tensors (0-based)."""
    per_layer: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(_LLAMA_PER_LAYER))
    """Megatron layer parameter -> the layer's Hugging Face tensors (after ``layer_prefix``)."""
    moe_per_layer: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Of a mixture-of-experts layer: megatron parameter (router; one expert's ``linear_fc1`` /
    ``linear_fc2``, named without the expert index) -> its Hugging Face tensors after
    ``layer_prefix``, with ``{expert}`` standing for the global expert index. Empty for a dense
    family."""
    ignored_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    """Checkpoint tensors that carry nothing the model needs (old Llama checkpoints store RoPE's
    inverse frequencies); neither read nor refused."""

    def layer(self, layer: int, suffix: str) -> str:
        return self.layer_prefix.format(layer=layer) + suffix


LLAMA_WEIGHT_NAMES = WeightNames()
"""Llama's names, which Qwen2 and Qwen3 share."""

QWEN3_MOE_WEIGHT_NAMES = WeightNames(
    moe_per_layer={
        "mlp.router.weight": ("mlp.gate.weight",),
        "mlp.experts.linear_fc1.weight": (
            "mlp.experts.{expert}.gate_proj.weight",
            "mlp.experts.{expert}.up_proj.weight",
        ),
        "mlp.experts.linear_fc2.weight": ("mlp.experts.{expert}.down_proj.weight",),
    }
)
"""Qwen3-MoE: Llama's names for attention, norms and the dense layers (``mlp_only_layers``);
per expert ``mlp.experts.E.{gate,up,down}_proj`` and the router ``mlp.gate`` (transformers 5
fuses the experts into 3-D tensors in memory but saves them per expert, as here)."""


@dataclass(frozen=True)
class ModelFamily:
    """One Hugging Face architecture as the megatron model (RMSNorm, SwiGLU, GQA, RoPE) builds it."""

    name: str
    """``ModelConfig.architecture`` (``model.architecture=NAME``)."""
    model_type: str
    """config.json's ``model_type`` (Qwen2.5 checkpoints say "qwen2")."""
    hf_architecture: str
    """config.json's ``architectures`` entry: the transformers model class, which is also how a
    serving engine (vLLM) picks the model it builds."""
    hf_config_class: str
    """The transformers config class (tiny test checkpoints are built from it)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """ModelConfig fields this family fixes (e.g. add_qkv_bias, qk_layernorm; tie_word_embeddings
    only for a family that always ties). Fields not listed are read from each checkpoint."""
    rope_scalings: tuple[Optional[str], ...] = (None, "llama3")
    """Allowed ``ModelConfig.rope_scaling`` values (megatron-core implements only "llama3")."""
    hf_head_dim: bool = True
    """config.json carries ``head_dim`` (Qwen2 derives it as hidden_size / heads)."""
    hf_fixed: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    """config.json keys that must have a given value: key -> (value, why another is refused).
    Export writes them."""
    hidden_act: str = "silu"
    """config.json's ``hidden_act``: the provider builds SwiGLU, so "silu" only."""
    normalization: str = "RMSNorm"
    """The provider builds RMSNorm only."""
    weights: WeightNames = LLAMA_WEIGHT_NAMES
    """The checkpoint's tensor names."""

    @property
    def moe(self) -> bool:
        """Whether the family has mixture-of-experts layers (``ModelConfig.num_experts``)."""
        return bool(self.weights.moe_per_layer)

    def __post_init__(self) -> None:
        if self.hidden_act != "silu" or self.normalization != "RMSNorm":
            raise ValueError(
                f"family {self.name!r}: hidden_act={self.hidden_act!r}, normalization={self.normalization!r}; "
                "the megatron model is built with hidden_act='silu' (SwiGLU) and normalization='RMSNorm' only"
            )
        unknown = sorted(set(self.fixed) - {"add_qkv_bias", "qk_layernorm", "tie_word_embeddings", "rope_scaling"})
        if unknown:
            raise ValueError(
                f"family {self.name!r} fixes {unknown}; a family may fix add_qkv_bias, qk_layernorm, "
                "tie_word_embeddings and rope_scaling (the rest is each checkpoint's)"
            )
        for flag in ("add_qkv_bias", "qk_layernorm"):
            if not isinstance(self.fixed.get(flag), bool):
                raise ValueError(
                    f"family {self.name!r} must fix {flag} to True or False (got {self.fixed.get(flag)!r})"
                )


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(fam: ModelFamily) -> ModelFamily:
    """Add ``fam`` to the registry and return it. Registering the same record again is a no-op;
    a different record under a name or ``model_type`` already taken is refused."""
    for other in _FAMILIES.values():
        if other == fam:
            return fam
        if other.name == fam.name or other.model_type == fam.model_type:
            raise ValueError(
                f"family {fam.name!r} (model_type {fam.model_type!r}) clashes with the registered "
                f"family {other.name!r} (model_type {other.model_type!r}); pick another name and model_type"
            )
    _FAMILIES[fam.name] = fam
    return fam


def family_names() -> tuple[str, ...]:
    """The registered families' names, in registration order."""
    return tuple(_FAMILIES)


def family(name: str) -> ModelFamily:
    """The family ``name`` (a ``ModelConfig.architecture``)."""
    if name not in _FAMILIES:
        raise ValueError(f"model.architecture={name!r}: allowed values are {family_names()}")
    return _FAMILIES[name]


def family_for_hf_config(config: Mapping[str, Any]) -> ModelFamily:
    """The family of a Hugging Face ``config.json`` dict: by ``model_type``, or, in a config
    without one, by the class in ``architectures``."""
    model_type = config.get("model_type")
    for fam in _FAMILIES.values():
        if fam.model_type == model_type or (
            model_type is None and fam.hf_architecture in (config.get("architectures") or ())
        ):
            return fam
    raise ValueError(
        f"Hugging Face model_type={model_type!r} is not supported; supported: "
        f"{tuple(f.model_type for f in _FAMILIES.values())} (Qwen2.5 checkpoints have model_type 'qwen2'; "
        "a new family is a register_family call, docs/extending_model_family.md)"
    )


# ---------------------------------------------------------------- the shipped families

register_family(
    ModelFamily(
        name="llama",
        model_type="llama",
        hf_architecture="LlamaForCausalLM",
        hf_config_class="LlamaConfig",
        fixed=dict(add_qkv_bias=False, qk_layernorm=False),
        hf_fixed={
            "attention_bias": (False, "puts a bias on the output projection too, which this model does not implement"),
            "mlp_bias": (False, "megatron's bias flag would also add one to the attention projections"),
        },
    )
)
register_family(
    ModelFamily(
        name="qwen2",
        model_type="qwen2",
        hf_architecture="Qwen2ForCausalLM",
        hf_config_class="Qwen2Config",
        fixed=dict(add_qkv_bias=True, qk_layernorm=False),  # q/k/v always biased (attention_bias is ignored)
        hf_head_dim=False,
    )
)
register_family(
    ModelFamily(
        name="qwen3",
        model_type="qwen3",
        hf_architecture="Qwen3ForCausalLM",
        hf_config_class="Qwen3Config",
        fixed=dict(add_qkv_bias=False, qk_layernorm=True),
        hf_fixed={
            "attention_bias": (False, "puts a bias on the output projection too, which this model does not implement"),
        },
    )
)
register_family(
    ModelFamily(
        name="qwen3_moe",
        model_type="qwen3_moe",
        hf_architecture="Qwen3MoeForCausalLM",
        hf_config_class="Qwen3MoeConfig",
        fixed=dict(add_qkv_bias=False, qk_layernorm=True),
        hf_fixed={
            "attention_bias": (False, "puts a bias on the output projection too, which this model does not implement"),
        },
        weights=QWEN3_MOE_WEIGHT_NAMES,
    )
)
