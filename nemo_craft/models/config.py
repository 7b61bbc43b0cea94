"""The architecture of a decoder-only model: one dataclass, validated at start-up.

:class:`ModelConfig` covers the dense architectures of the registered model families
(:mod:`nemo_craft.models.families`: Qwen2 / Qwen2.5 with bias on q, k, v; Qwen3 with RMSNorm on
q and k per head and ``head_dim`` possibly different from ``hidden_size / num_attention_heads``;
Llama 3 with Llama-3.1-style RoPE scaling). All of them are pre-norm RMSNorm transformers with
SwiGLU MLPs, grouped-query attention and rotary position embeddings, which is what
:mod:`nemo_craft.models.provider` builds.

``from_hf_config`` reads a Hugging Face ``config.json`` (or a ``PretrainedConfig``) and
``check_weights`` says, at start-up, whether the initial weights are the ones asked for
(:mod:`nemo_craft.models.hf_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, Optional, get_args

from nemo_craft.core.typed import check_choices
from nemo_craft.models.families import family, family_names

__all__ = ["ModelConfig", "PARAMS_DTYPES", "CORE_ATTENTIONS", "INITS"]

ParamsDtype = Literal["fp32", "bf16"]
CoreAttention = Literal["sdpa", "local"]
Init = Literal["pretrained", "random"]
RouterDtype = Literal["fp32", "fp64"]
RoutingReplay = Literal["none", "r2", "r3"]
PARAMS_DTYPES, CORE_ATTENTIONS, INITS = get_args(ParamsDtype), get_args(CoreAttention), get_args(Init)
# Fields of a mixture-of-experts architecture, read from config.json like the dense ones.
MOE_ARCHITECTURE_FIELDS = (
    "num_experts",
    "moe_router_topk",
    "moe_ffn_hidden_size",
    "moe_norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
)


@dataclass
class ModelConfig:
    """A decoder-only transformer (RMSNorm, SwiGLU, GQA, RoPE), dense or with mixture-of-experts
    layers (``num_experts``: top-k softmax router, no shared expert)."""

    architecture: Optional[str] = "qwen3"
    """Model family (:mod:`nemo_craft.models.families`: "llama", "qwen2", "qwen3", ...): fixes the
    bias and q/k-norm flags below and the names used by checkpoint import/export. None
    (``model=from_hf``): this and every other architecture field left None are read from
    ``hf_path``'s config.json."""
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
    """Local Hugging Face checkpoint directory to import the weights from (with
    ``init="pretrained"``); its config.json must agree with the fields above."""
    init: Init = "pretrained"
    """Where the initial weights come from: "pretrained" (the checkpoint ``hf_path``, which must
    be set) or "random" (normal init with ``init_method_std``; ``hf_path`` must not be set). The
    tiny model's YAML sets "random", so a named pretrained architecture never trains from random
    weights unless asked (see ``check_weights``)."""
    num_experts: Optional[int] = None
    """Experts per mixture-of-experts layer (Hugging Face ``num_experts``); None: a dense model.
    Only a family with expert tensors (``qwen3_moe``) takes it."""
    moe_router_topk: Optional[int] = None
    """Experts each token is sent to (``num_experts_per_tok``); needed with num_experts."""
    moe_ffn_hidden_size: Optional[int] = None
    """Width of one expert's SwiGLU MLP (``moe_intermediate_size``); needed with num_experts.
    ``ffn_hidden_size`` stays the width of the dense layers (``mlp_only_layers``)."""
    moe_norm_topk_prob: Optional[bool] = None
    """Renormalise the top-k routing probabilities to sum to 1 (``norm_topk_prob``; default true):
    megatron's softmax over the top-k logits; false is a softmax over all experts, then top-k."""
    decoder_sparse_step: Optional[int] = None
    """Layer i (0-based) has experts when (i + 1) % decoder_sparse_step == 0 and i is not in
    mlp_only_layers, as in Hugging Face's Qwen3-MoE (default 1: every layer)."""
    mlp_only_layers: Optional[tuple[int, ...]] = None
    """0-based layers with a dense MLP (of ffn_hidden_size) instead of experts (default none)."""
    moe_router_dtype: RouterDtype = "fp32"
    """Dtype of the router's logits and softmax ("fp32" or "fp64"), whatever params_dtype is: a
    bf16 router flips near-tied experts between passes."""
    moe_freeze_router: bool = True
    """Keep the router's weights fixed during RL (no gradient, no update): a moving router changes
    which experts the rollouts' tokens would get, which RL's objective does not ask for."""
    moe_aux_loss_coeff: float = 0.0
    """Load-balancing loss coefficient (0: off, the RL default; when on, logged as a loss term)."""
    moe_z_loss_coeff: float = 0.0
    """Router z-loss coefficient (0: off, the RL default; when on, logged as a loss term)."""
    moe_routing_replay: RoutingReplay = "none"
    """Routing replay: "none"; "r2" (the experts chosen in the old-log-prob pass are replayed in
    the training forward and in the reference / teacher passes over the same tokens); "r3" (the
    rollout engine's routes; not available in this build)."""
    moe_grouped_gemm: Optional[bool] = None
    """Experts as one grouped GEMM (Transformer Engine's) or one MLP after another; None: grouped
    where Transformer Engine is importable, sequential elsewhere (the CPU)."""
    tokenizer: Optional[str] = None
    """"char" for the built-in character tokenizer, a local Hugging Face tokenizer directory, or
    None for the tokenizer of ``hf_path`` (or "char" when there is no hf_path)."""

    def __post_init__(self) -> None:
        check_choices(self, "model")  # params_dtype, core_attention, init
        if self.architecture is None:  # model=from_hf
            from nemo_craft.models.hf_config import resolve_from_checkpoint  # lazy: hf_config imports this module

            resolve_from_checkpoint(self)
        fam = family(self.architecture)  # refuses a name no family has
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
        if self.rope_scaling not in fam.rope_scalings:
            raise ValueError(
                f"model.rope_scaling={self.rope_scaling!r}: allowed values for architecture={self.architecture!r} "
                f"are {fam.rope_scalings} (megatron-core implements only Llama 3.1-style 'llama3' scaling)"
            )
        if self.rope_scaling == "llama3" and not self.rope_scaling_factor >= 1.0:
            raise ValueError(f"model.rope_scaling_factor={self.rope_scaling_factor!r}: must be >= 1")
        self._check_moe(fam)
        for flag, value in fam.fixed.items():
            if getattr(self, flag) != value:
                raise ValueError(
                    f"model.{flag}={getattr(self, flag)} does not match architecture={self.architecture!r}, "
                    f"which has {flag}={value}; set {flag}={value} or pick the matching architecture "
                    f"({_family_with_these_flags(self)})"
                )

    def _check_moe(self, fam) -> None:
        """The mixture-of-experts fields: all None for a dense model; complete and consistent with
        experts. One line per refusal."""
        for name in ("moe_aux_loss_coeff", "moe_z_loss_coeff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"model.{name}={value!r}: must be a number >= 0 (0 turns it off)")
        if self.num_experts is None:
            if self.moe_routing_replay != "none":
                raise ValueError(
                    f"model.moe_routing_replay={self.moe_routing_replay!r} needs a mixture-of-experts model "
                    "(model.num_experts); allowed for a dense model: none"
                )
            return
        if not fam.moe:
            moe_families = [n for n in family_names() if family(n).moe]
            raise ValueError(
                f"model.num_experts={self.num_experts} with architecture={self.architecture!r}, which has no "
                f"expert layers; mixture-of-experts families: {moe_families} (or set num_experts=null)"
            )
        if self.moe_routing_replay == "r3":
            raise ValueError(
                "model.moe_routing_replay='r3' replays the rollout engine's routes, which needs vLLM's "
                "routed-experts output (its V2 model runner: CUDA and Triton) and is not built here; "
                "use model.moe_routing_replay=r2 (the old-log-prob pass's routes)"
            )
        self.moe_norm_topk_prob = True if self.moe_norm_topk_prob is None else bool(self.moe_norm_topk_prob)
        self.decoder_sparse_step = 1 if self.decoder_sparse_step is None else self.decoder_sparse_step
        self.mlp_only_layers = tuple(self.mlp_only_layers or ())
        for name in ("num_experts", "moe_router_topk", "moe_ffn_hidden_size", "decoder_sparse_step"):
            if getattr(self, name) is None:
                raise ValueError(
                    f"model.{name}=null with model.num_experts={self.num_experts}: set it (an integer >= 1)"
                )
            _check_int(name, getattr(self, name))
        if self.moe_router_topk > self.num_experts:
            raise ValueError(
                f"model.moe_router_topk={self.moe_router_topk} exceeds model.num_experts={self.num_experts}; "
                f"allowed: 1..{self.num_experts}"
            )
        bad = [i for i in self.mlp_only_layers if not (isinstance(i, int) and 0 <= i < self.num_layers)]
        if bad:
            raise ValueError(
                f"model.mlp_only_layers={list(self.mlp_only_layers)}: {bad} are not layers; "
                f"allowed: 0..{self.num_layers - 1}"
            )
        if not any(self.moe_layer_pattern()):
            raise ValueError(
                f"model.decoder_sparse_step={self.decoder_sparse_step} with mlp_only_layers="
                f"{list(self.mlp_only_layers)} leaves no layer with experts; set num_experts=null for a dense model"
            )

    # ---------------------------------------------------------------- derived values

    def moe_layer_pattern(self) -> list[int]:
        """Per layer (0-based), 1 where it has experts, 0 where its MLP is dense (Hugging Face's
        Qwen3-MoE rule; megatron's ``moe_layer_freq`` list). All 0 for a dense model."""
        if self.num_experts is None:
            return [0] * self.num_layers
        return [
            int(i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0)
            for i in range(self.num_layers)
        ]

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
        self._validate_expert_layout(parallel)
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

    def _validate_expert_layout(self, parallel) -> None:
        ep = getattr(parallel, "expert_model_parallel_size", 1)
        etp = getattr(parallel, "expert_tensor_parallel_size", None) or parallel.tensor_model_parallel_size
        if self.num_experts is None:
            if ep > 1 or etp != parallel.tensor_model_parallel_size:
                raise ValueError(
                    f"parallel.expert_model_parallel_size={ep} / expert_tensor_parallel_size={etp} with a dense "
                    "model (model.num_experts=null); allowed: 1 and null"
                )
            return
        if self.num_experts % ep != 0:
            raise ValueError(
                f"parallel.expert_model_parallel_size={ep} does not divide model.num_experts={self.num_experts}; "
                f"allowed: {_divisors(self.num_experts)}"
            )
        if self.moe_ffn_hidden_size % etp != 0:
            raise ValueError(
                f"parallel.expert_tensor_parallel_size={etp} does not divide model.moe_ffn_hidden_size="
                f"{self.moe_ffn_hidden_size}; allowed: {_divisors(self.moe_ffn_hidden_size)}"
            )
        if parallel.tensor_model_parallel_size > 1 and not parallel.sequence_parallel:
            raise ValueError(
                f"parallel.tensor_model_parallel_size={parallel.tensor_model_parallel_size} with experts needs "
                "parallel.sequence_parallel=true (megatron's token dispatcher works on sequence-parallel tokens)"
            )

    # ---------------------------------------------------------------- Hugging Face

    @classmethod
    def from_hf_config(cls, hf_config: Any, **overrides: Any) -> ModelConfig:
        """Read a Hugging Face config (``PretrainedConfig``, a ``config.json`` dict, or the path of a
        checkpoint directory / config.json; a directory becomes ``hf_path``). ``overrides`` replace
        fields afterwards (e.g. ``params_dtype="bf16"``). Raises ValueError for what the megatron
        model does not implement."""
        from nemo_craft.models.hf_config import hf_config_values  # lazy: hf_config imports this module

        values, hf_path = hf_config_values(hf_config)
        values["hf_path"] = hf_path
        values.update(overrides)
        return cls(**values)

    def to_hf_config(self) -> dict:
        """A ``config.json`` dict for this architecture (what export writes when it has no
        original config to copy)."""
        from nemo_craft.models.hf_config import to_hf_config  # lazy: hf_config imports this module

        return to_hf_config(self)

    def check_weights(self) -> None:
        """Start-up check of where the initial weights come from (``init``, ``hf_path``, and the
        checkpoint's config.json against this config): raises ValueError in one line naming what
        is missing or which field disagrees (:func:`nemo_craft.models.hf_config.check_weights`)."""
        from nemo_craft.models.hf_config import check_weights  # lazy: hf_config imports this module

        check_weights(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"model.{name}={value!r}: must be an integer >= 1")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _family_with_these_flags(cfg: ModelConfig) -> str:
    for name in family_names():
        if all(getattr(cfg, flag) == value for flag, value in family(name).fixed.items()):
            return f"architecture={name!r} has these flags"
    return "no registered architecture has these flags"
