"""The architecture of a decoder-only model: one dataclass, validated at start-up.

:class:`ModelConfig` covers the dense architectures of the paper: Qwen2 / Qwen2.5 (bias on
q, k, v), Qwen3 (RMSNorm on q and k per head, no bias, ``head_dim`` possibly different from
``hidden_size / num_attention_heads``) and Llama 3 (no bias; Llama-3.1-style RoPE scaling).
All of them are pre-norm RMSNorm transformers with SwiGLU MLPs, grouped-query attention and
rotary position embeddings, which is what :mod:`nemo_craft.models.provider` builds.

``from_hf_config`` reads a Hugging Face ``config.json`` (or a ``PretrainedConfig``) and refuses
what the megatron model would silently get wrong (sliding-window attention, biases on the
output projection or the MLP, RoPE scalings other than Llama 3's).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, Optional, get_args

from nemo_craft.core.typed import check_choices

__all__ = ["ModelConfig", "ARCHITECTURES", "PARAMS_DTYPES", "CORE_ATTENTIONS"]

Architecture = Literal["llama", "qwen2", "qwen3"]
ParamsDtype = Literal["fp32", "bf16"]
CoreAttention = Literal["sdpa", "local"]
ARCHITECTURES, PARAMS_DTYPES, CORE_ATTENTIONS = get_args(Architecture), get_args(ParamsDtype), get_args(CoreAttention)

# What each architecture fixes about the attention block (Hugging Face's modelling code).
_ARCH_FLAGS = {
    "llama": dict(add_qkv_bias=False, qk_layernorm=False),
    "qwen2": dict(add_qkv_bias=True, qk_layernorm=False),
    "qwen3": dict(add_qkv_bias=False, qk_layernorm=True),
}
# The Llama 3.1 RoPE scaling megatron-core implements (RotaryEmbedding._apply_scaling has
# these constants built in); any other value would be silently ignored, so it is refused.
_LLAMA3_ROPE_CONSTANTS = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


@dataclass
class ModelConfig:
    """A dense decoder-only transformer (RMSNorm, SwiGLU, GQA, RoPE)."""

    architecture: Architecture = "qwen3"
    """Hugging Face family the weights map to: "llama", "qwen2" or "qwen3" (fixes the bias and
    q/k-norm flags below and the names used by checkpoint import/export)."""
    num_layers: int = 4
    """Transformer layers."""
    hidden_size: int = 128
    """Width of the residual stream."""
    ffn_hidden_size: int = 384
    """Width of the SwiGLU MLP (Hugging Face ``intermediate_size``; gate and up each have it)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: Optional[int] = None
    """Key/value heads (GQA); None means as many as query heads (plain multi-head attention)."""
    kv_channels: Optional[int] = None
    """Per-head dimension (Hugging Face ``head_dim``); None means hidden_size / num_attention_heads.
    Qwen3 sets it independently of hidden_size."""
    vocab_size: int = 128
    """Rows of the Hugging Face embedding (``config.vocab_size``), before megatron's padding."""
    make_vocab_size_divisible_by: int = 128
    """The embedding is padded to a multiple of this times TP (see ``padded_vocab_size``); the
    padded logits belong to no token and must be masked by consumers of full-vocab logits."""
    max_position_embeddings: int = 4096
    """Longest sequence the model is meant for (RoPE itself has no table)."""
    rotary_base: float = 10000.0
    """RoPE base (Hugging Face ``rope_theta``)."""
    rope_scaling: Optional[str] = None
    """None, or "llama3" for Llama 3.1-style frequency scaling (low/high frequency factors 1 and
    4 and an original context of 8192, the values megatron-core has built in)."""
    rope_scaling_factor: float = 8.0
    """The Llama 3 scaling factor (used when rope_scaling == "llama3")."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon (Hugging Face ``rms_norm_eps``)."""
    add_qkv_bias: bool = False
    """Bias on the q, k, v projections (Qwen2/Qwen2.5)."""
    qk_layernorm: bool = True
    """RMSNorm over each query and key head before RoPE (Qwen3)."""
    tie_word_embeddings: bool = False
    """Output layer shares the input embedding's weight."""
    params_dtype: ParamsDtype = "fp32"
    """Dtype of the parameters: "fp32" or "bf16"."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities (0 for RL fine-tuning)."""
    hidden_dropout: float = 0.0
    """Dropout on the attention and MLP outputs (0 for RL fine-tuning)."""
    core_attention: CoreAttention = "sdpa"
    """Attention kernel of the local spec (no Transformer Engine; with TE, TE's attention is used
    and this is ignored): "sdpa" (:class:`~nemo_craft.models.sdpa.SDPAttention`, PyTorch's fused
    scaled-dot-product attention: flash / memory-efficient kernels on GPUs) or "local" (megatron's
    unfused ``DotProductAttention``, which holds [b * heads, sq, sk] scores)."""
    init_method_std: float = 0.02
    """Std of the normal initialisation used when no checkpoint is loaded."""
    hf_path: Optional[str] = None
    """Local Hugging Face checkpoint directory to import the weights from; None for random init."""
    tokenizer: Optional[str] = None
    """"char" for the built-in character tokenizer, a local Hugging Face tokenizer directory, or
    None for the tokenizer of ``hf_path`` (or "char" when there is no hf_path)."""

    def __post_init__(self) -> None:
        check_choices(self, "model")  # architecture, params_dtype, core_attention
        for name in (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "vocab_size",
            "make_vocab_size_divisible_by",
            "max_position_embeddings",
        ):
            _check_int(name, getattr(self, name))
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        _check_int("num_query_groups", self.num_query_groups)
        if self.num_attention_heads % self.num_query_groups != 0:
            raise ValueError(
                f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                f"model.num_query_groups={self.num_query_groups}; each key/value head must serve a whole "
                "number of query heads"
            )
        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"model.hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; set model.kv_channels (the head dimension) explicitly"
                )
            self.kv_channels = self.hidden_size // self.num_attention_heads
        _check_int("kv_channels", self.kv_channels)
        if self.kv_channels % 2 != 0:
            raise ValueError(f"model.kv_channels={self.kv_channels}: RoPE needs an even head dimension")
        for name in ("attention_dropout", "hidden_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name}={value!r}: must be a probability in [0, 1)")
        for name in ("norm_epsilon", "rotary_base", "init_method_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name}={value!r}: must be a number > 0")
        if self.rope_scaling not in (None, "llama3"):
            raise ValueError(
                f"model.rope_scaling={self.rope_scaling!r}: allowed values are None and 'llama3' "
                "(megatron-core implements only Llama 3.1-style scaling)"
            )
        if self.rope_scaling == "llama3" and not self.rope_scaling_factor >= 1.0:
            raise ValueError(f"model.rope_scaling_factor={self.rope_scaling_factor!r}: must be >= 1")
        for flag, value in _ARCH_FLAGS[self.architecture].items():
            if getattr(self, flag) != value:
                raise ValueError(
                    f"model.{flag}={getattr(self, flag)} does not match architecture={self.architecture!r}, "
                    f"which has {flag}={value}; set {flag}={value} or pick the matching architecture "
                    f"({_arch_for_flags(self.add_qkv_bias, self.qk_layernorm)})"
                )

    # ---------------------------------------------------------------- derived values

    def padded_vocab_size(self, tensor_model_parallel_size: int = 1) -> int:
        """Embedding rows megatron allocates: vocab_size rounded up to a multiple of
        make_vocab_size_divisible_by * TP (so each TP rank holds an equal, aligned slice)."""
        multiple = self.make_vocab_size_divisible_by * tensor_model_parallel_size
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def validate_layout(self, parallel) -> None:
        """Raise a ValueError naming the value and the fix when ``parallel`` (a ParallelConfig)
        cannot split this model."""
        tp = parallel.tensor_model_parallel_size
        pp = parallel.pipeline_model_parallel_size
        vpp = parallel.virtual_pipeline_model_parallel_size or 1
        for name in ("num_attention_heads", "num_query_groups", "ffn_hidden_size"):
            value = getattr(self, name)
            if value % tp != 0:
                raise ValueError(
                    f"model.{name}={value} is not divisible by tensor_model_parallel_size={tp}; "
                    f"choose a TP size that divides it ({_divisors(value)})"
                )
        if self.num_layers % (pp * vpp) != 0:
            what = f"pipeline_model_parallel_size={pp}" + (
                f" * virtual_pipeline_model_parallel_size={vpp}" if vpp > 1 else ""
            )
            raise ValueError(
                f"model.num_layers={self.num_layers} is not divisible by {what} = {pp * vpp}; every "
                f"pipeline chunk must hold the same number of layers (choose PP*VPP among "
                f"{_divisors(self.num_layers)})"
            )
        padded = self.padded_vocab_size(tp)
        if padded % (self.make_vocab_size_divisible_by * tp) != 0 or padded < self.vocab_size:
            raise AssertionError(
                f"padded vocab {padded} is not a multiple of {self.make_vocab_size_divisible_by}*{tp}"
            )  # invariant of padded_vocab_size
        cp = getattr(parallel, "context_parallel_size", 1)
        if cp > 1 and self.kv_channels % 2 != 0:
            raise ValueError(f"model.kv_channels={self.kv_channels} must be even with context parallel")
        if cp > 1 and self.core_attention == "local":
            from nemo_craft.models.provider import te_available  # lazy: the config stays importable without megatron

            if not te_available():  # megatron's DotProductAttention asserts CP 1; TE's and SDPAttention do CP
                raise ValueError(
                    f"parallel.context_parallel_size={cp} needs model.core_attention=sdpa (or Transformer Engine); "
                    "megatron's local attention (model.core_attention=local) does not split the sequence"
                )

    # ---------------------------------------------------------------- Hugging Face

    @classmethod
    def from_hf_config(cls, hf_config: Any, **overrides: Any) -> ModelConfig:
        """Read a Hugging Face config (``PretrainedConfig``, a ``config.json`` dict, or the path of a
        checkpoint directory / config.json). ``overrides`` replace fields afterwards (e.g.
        ``params_dtype="bf16"``). Raises ValueError for what the megatron model does not implement."""
        hf_path = None
        if isinstance(hf_config, (str, os.PathLike)):
            path = os.fspath(hf_config)
            if os.path.isdir(path):
                hf_path, path = path, os.path.join(path, "config.json")
            with open(path) as f:
                hf_config = json.load(f)
        get = _getter(hf_config)
        model_type = get("model_type")
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"Hugging Face model_type={model_type!r} is not supported; supported: {ARCHITECTURES} "
                "(Qwen2.5 checkpoints have model_type 'qwen2')"
            )
        if get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={get('hidden_act')!r}: only 'silu' (SwiGLU) is supported")
        if get("use_sliding_window", False):
            raise ValueError(
                "use_sliding_window=true: sliding-window attention is not supported; "
                "set it to false in config.json if the checkpoint was trained without it"
            )
        if get("mlp_bias", False):
            raise ValueError(
                "mlp_bias=true is not supported (megatron's bias flag would also add one to the attention projections)"
            )
        if model_type != "qwen2" and get("attention_bias", False):
            raise ValueError(
                f"attention_bias=true for {model_type!r} puts a bias on the output projection "
                "too, which this model does not implement"
            )
        heads = get("num_attention_heads")
        rotary_base, rope_scaling, rope_factor = _read_rope(get)
        values = dict(
            architecture=model_type,
            num_layers=get("num_hidden_layers"),
            hidden_size=get("hidden_size"),
            ffn_hidden_size=get("intermediate_size"),
            num_attention_heads=heads,
            num_query_groups=get("num_key_value_heads") or heads,
            kv_channels=get("head_dim") or get("hidden_size") // heads,
            vocab_size=get("vocab_size"),
            max_position_embeddings=get("max_position_embeddings", 4096),
            rotary_base=rotary_base,
            rope_scaling=rope_scaling,
            rope_scaling_factor=rope_factor,
            norm_epsilon=get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            attention_dropout=float(get("attention_dropout", 0.0) or 0.0),
            hf_path=hf_path,
            **_ARCH_FLAGS[model_type],
        )
        values.update(overrides)
        return cls(**values)

    def to_hf_config(self) -> dict:
        """A ``config.json`` dict for this architecture (what export writes when it has no
        original config to copy)."""
        rope: dict = {"rope_type": "default", "rope_theta": self.rotary_base}
        if self.rope_scaling == "llama3":
            rope = dict(
                rope_type="llama3",
                rope_theta=self.rotary_base,
                factor=self.rope_scaling_factor,
                **_LLAMA3_ROPE_CONSTANTS,
            )
        arch_class = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
        out = dict(
            architectures=[arch_class[self.architecture]],
            model_type=self.architecture,
            num_hidden_layers=self.num_layers,
            hidden_size=self.hidden_size,
            intermediate_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_query_groups,
            head_dim=self.kv_channels,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.norm_epsilon,
            hidden_act="silu",
            tie_word_embeddings=self.tie_word_embeddings,
            attention_dropout=self.attention_dropout,
            # Both spellings: transformers >= 5 reads rope_parameters, 4.x rope_theta/rope_scaling.
            rope_parameters=rope,
            rope_theta=self.rotary_base,
            rope_scaling=None if self.rope_scaling is None else rope,
            torch_dtype="bfloat16" if self.params_dtype == "bf16" else "float32",
        )
        if self.architecture != "qwen2":
            out.update(attention_bias=False)
        if self.architecture == "llama":
            out.update(mlp_bias=False)
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"model.{name}={value!r}: must be an integer >= 1")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _arch_for_flags(add_qkv_bias: bool, qk_layernorm: bool) -> str:
    for arch, flags in _ARCH_FLAGS.items():
        if flags == dict(add_qkv_bias=add_qkv_bias, qk_layernorm=qk_layernorm):
            return f"architecture={arch!r} has these flags"
    return "no supported architecture has both"


def _getter(hf_config: Any):
    if isinstance(hf_config, Mapping):
        return lambda key, default=None: hf_config.get(key, default)
    return lambda key, default=None: getattr(hf_config, key, default)


def _read_rope(get) -> tuple[float, Optional[str], float]:
    """(rotary_base, rope_scaling, factor) from transformers 5 ``rope_parameters`` or 4.x
    ``rope_theta`` + ``rope_scaling``."""
    params = get("rope_parameters") or {}
    scaling = get("rope_scaling") or {}
    if not isinstance(params, Mapping):
        params = dict(params)
    theta = params.get("rope_theta", get("rope_theta", 10000.0))
    spec = dict(scaling)
    spec.update({k: v for k, v in params.items() if k != "rope_theta"})
    rope_type = spec.get("rope_type", spec.get("type", "default"))
    if rope_type in (None, "default"):
        return float(theta), None, 8.0
    if rope_type != "llama3":
        raise ValueError(
            f"RoPE scaling rope_type={rope_type!r} is not supported (megatron-core implements only "
            "Llama 3.1-style 'llama3' scaling); remove it from config.json only if the checkpoint "
            "does not depend on it"
        )
    for key, value in _LLAMA3_ROPE_CONSTANTS.items():
        if float(spec.get(key, value)) != value:
            raise ValueError(
                f"llama3 RoPE scaling with {key}={spec.get(key)!r} is not supported: megatron-core "
                f"hard-codes {key}={value}"
            )
    return float(theta), "llama3", float(spec.get("factor", 8.0))
