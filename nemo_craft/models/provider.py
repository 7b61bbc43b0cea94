"""Build megatron-core ``GPTModel`` chunks from a :class:`ModelConfig` and a ``ParallelConfig``.

    chunks = build_model(model_cfg, parallel_cfg)            # list[GPTModel], one per VPP chunk
    chunks = build_model(model_cfg, parallel_cfg, device="meta")   # shapes only, no memory

Megatron's parallel state must be initialised (``initialize_parallel``). Each rank builds only
its pipeline stage: one chunk without virtual pipeline, ``vpp`` chunks with it, each with its
own ``pre_process`` / ``post_process`` and ``vp_stage`` exactly as Megatron-LM's ``get_model``
sets them. The chunks are bare (no DDP / Float16Module wrapping: the trainer owns that).

Behaviour is chosen by ModuleSpec: the Transformer Engine spec when TE is importable (GPUs),
else megatron's local spec with :class:`~nemo_craft.models.norm.RMSNorm` in place of
``WrappedTorchNorm`` so that sequence parallel works without TE and apex.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch

from nemo_craft.models.config import ModelConfig
from nemo_craft.models.norm import RMSNorm
from nemo_craft.parallel.megatron_fixes import (
    apply_moe_fixes,
    use_finalize_model_grads,
    use_unbatched_p2p_for_interleaved_pipeline,
)

__all__ = ["build_model", "gpt_model", "make_transformer_config", "layer_spec", "te_available", "parameter_count"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def te_available() -> bool:
    """Whether Transformer Engine (and megatron's TE extension) can be imported."""
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as _mte  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means the local spec
        return False
    return True


def make_transformer_config(
    model_cfg: ModelConfig,
    parallel_cfg,
    *,
    use_cpu_initialization: Optional[bool] = None,
    perform_initialization: bool = True,
    overrides: Optional[dict] = None,
):
    """The megatron ``TransformerConfig`` of the model on this layout, with the two megatron fixes
    of :mod:`nemo_craft.parallel.megatron_fixes` applied. ``overrides`` sets further fields
    (fusions, recompute, ...) before validation.

    ``perform_initialization`` must stay True: megatron-core marks its TP-split weights
    (``tensor_model_parallel``, read by DDP, gradient clipping and the optimizer) only while
    initialising them, so without it the gradient norm would count TP shards as replicas."""
    from megatron.core.transformer import TransformerConfig

    if not perform_initialization or (overrides or {}).get("perform_initialization", True) is False:
        raise ValueError(
            "perform_initialization=False leaves megatron's TP-split weights unmarked (wrong gradient norms); "
            "keep it True - on the meta device or before loading a checkpoint it only costs the random fill"
        )
    model_cfg.validate_layout(parallel_cfg)
    dtype = _DTYPES[model_cfg.params_dtype]
    if use_cpu_initialization is None:
        use_cpu_initialization = not torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.ffn_hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.num_query_groups,
        kv_channels=model_cfg.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=model_cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        bias_activation_fusion=False,
        add_bias_linear=False,
        add_qkv_bias=model_cfg.add_qkv_bias,
        qk_layernorm=model_cfg.qk_layernorm,
        attention_dropout=model_cfg.attention_dropout,
        hidden_dropout=model_cfg.hidden_dropout,
        init_method_std=model_cfg.init_method_std,
        tensor_model_parallel_size=parallel_cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel_cfg.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel_cfg.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel_cfg.context_parallel_size,
        sequence_parallel=parallel_cfg.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=use_cpu_initialization,
        perform_initialization=perform_initialization,
    )
    kwargs.update(parallel_cfg.recompute_kwargs())
    kwargs.update(moe_kwargs(model_cfg, parallel_cfg))
    kwargs.update(overrides or {})
    config = TransformerConfig(**kwargs)
    use_unbatched_p2p_for_interleaved_pipeline(config)
    use_finalize_model_grads(config)
    return config


def moe_kwargs(model_cfg: ModelConfig, parallel_cfg) -> dict:
    """The TransformerConfig fields of the mixture-of-experts layers (empty for a dense model):
    Qwen3-MoE's router (softmax over the top-k logits = normalised top-k probabilities; with
    ``moe_norm_topk_prob`` false, softmax over all experts first), logits in ``moe_router_dtype``,
    no expert bias, no shared expert, megatron's all-to-all token dispatcher, and the RL
    defaults: load-balancing and z-losses off unless their coefficients are set."""
    if model_cfg.num_experts is None:
        return {}
    apply_moe_fixes()
    aux = model_cfg.moe_aux_loss_coeff
    return dict(
        num_moe_experts=model_cfg.num_experts,
        moe_router_topk=model_cfg.moe_router_topk,
        moe_ffn_hidden_size=model_cfg.moe_ffn_hidden_size,
        moe_layer_freq=model_cfg.moe_layer_pattern(),
        moe_router_score_function="softmax",
        moe_router_pre_softmax=not model_cfg.moe_norm_topk_prob,
        moe_router_dtype=model_cfg.moe_router_dtype,
        moe_router_load_balancing_type="aux_loss" if aux > 0 else "none",
        moe_aux_loss_coeff=aux,
        moe_z_loss_coeff=model_cfg.moe_z_loss_coeff or None,
        moe_router_enable_expert_bias=False,
        moe_token_dispatcher_type="alltoall",
        moe_grouped_gemm=grouped_gemm(model_cfg),
        moe_enable_routing_replay=model_cfg.moe_routing_replay != "none",
        expert_model_parallel_size=parallel_cfg.expert_model_parallel_size,
        expert_tensor_parallel_size=parallel_cfg.expert_tensor_size,
    )


def grouped_gemm(model_cfg: ModelConfig) -> bool:
    """Whether the experts run as one grouped GEMM: ``model.moe_grouped_gemm``, by default where
    Transformer Engine is importable (its grouped linear); sequential MLPs elsewhere."""
    if model_cfg.moe_grouped_gemm is not None:
        return bool(model_cfg.moe_grouped_gemm)
    return te_available()


def layer_spec(model_cfg: ModelConfig, config, *, use_te: Optional[bool] = None, vp_stage: Optional[int] = None):
    """The decoder block spec (``TransformerBlockSubmodules``) of one pipeline chunk.

    TE spec when ``use_te`` (default: TE importable), else megatron's local spec with
    :class:`RMSNorm` for the input, pre-MLP, q/k and final norms and, unless
    ``model.core_attention="local"``, :class:`~nemo_craft.models.sdpa.SDPAttention` as its core
    attention."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if use_te is None:
        use_te = te_available()
    dense, final_norm = _one_layer_spec(model_cfg, config, use_te, num_experts=None)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    layers = [dense] * num_layers
    if model_cfg.num_experts is not None:  # which of this chunk's layers have experts
        from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

        moe, _ = _one_layer_spec(model_cfg, config, use_te, num_experts=model_cfg.num_experts)
        pattern = model_cfg.moe_layer_pattern()
        offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
        layers = [moe if pattern[offset + i] else dense for i in range(num_layers)]
    return TransformerBlockSubmodules(layer_specs=layers, layer_norm=final_norm)


def _one_layer_spec(model_cfg: ModelConfig, config, use_te: bool, *, num_experts: Optional[int]):
    """(layer spec, final norm class): a dense layer, or one with ``num_experts`` experts."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    moe = dict(num_experts=num_experts, moe_grouped_gemm=grouped_gemm(model_cfg) if num_experts else False)
    if use_te:
        from megatron.core.extensions.transformer_engine import TENorm

        layer = specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model_cfg.qk_layernorm, **moe)
        return layer, TENorm
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Apex is not installed" - it is replaced below
        layer = specs.get_gpt_layer_local_spec(qk_layernorm=model_cfg.qk_layernorm, normalization="RMSNorm", **moe)
    sub = layer.submodules
    if model_cfg.core_attention == "sdpa":
        from nemo_craft.models.sdpa import (  # lazy: only the sdpa spec needs it
            SDPAttention,
            sdpa_unsupported_reason,
        )

        reason = sdpa_unsupported_reason(config)
        if reason is not None:
            raise ValueError(f"model.core_attention='sdpa' does not support {reason}; set model.core_attention=local")
        sub.self_attention.submodules.core_attention = SDPAttention
    sub.input_layernorm = RMSNorm
    sub.pre_mlp_layernorm = RMSNorm
    if model_cfg.qk_layernorm:
        sub.self_attention.submodules.q_layernorm = RMSNorm
        sub.self_attention.submodules.k_layernorm = RMSNorm
    return layer, RMSNorm


def build_model(
    model_cfg: ModelConfig,
    parallel_cfg,
    *,
    device: Optional[str] = None,
    use_te: Optional[bool] = None,
    transformer_config_overrides: Optional[dict] = None,
) -> list:
    """This rank's model chunks (``list[GPTModel]``, length VPP or 1), randomly initialised
    (``init_method_std``), in train mode, on the compute device (GPU, or the CPU in CPU mode).
    Load a checkpoint into them with :func:`nemo_craft.models.hf.load_hf_weights`.

    ``device="meta"``: parameters on the meta device (shapes, dtypes and megatron's parallel
    attributes; no memory), for counting parameters per rank; such chunks cannot run. They use
    the local spec unless ``use_te=True``.
    ``transformer_config_overrides``: further TransformerConfig fields (e.g.
    ``calculate_per_token_loss``, recompute, fusions).
    """
    from megatron.core import parallel_state, tensor_parallel

    from nemo_craft.parallel.cpu_mode import compute_device  # lazy: cpu_mode patches megatron when imported

    if device not in (None, "meta"):
        raise ValueError(f"build_model(device={device!r}): allowed values are None and 'meta'")
    meta = device == "meta"
    if meta and use_te is None:
        # Same parameters as the TE spec (TE fuses the norms into the next linear but keeps their
        # weights), and TE's modules would allocate on the CPU despite the meta device.
        use_te = False
    # Initialisation stays on for meta (it costs nothing there): megatron marks the TP-split
    # weights (``tensor_model_parallel``) only while initialising them.
    config = make_transformer_config(
        model_cfg,
        parallel_cfg,
        use_cpu_initialization=True if meta else None,
        overrides=transformer_config_overrides,
    )
    _check_parallel_state(parallel_cfg)
    vpp = parallel_cfg.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp) if vpp else [None]:
        with _meta_context(meta):
            model = gpt_model(
                config,
                model_cfg,
                parallel_cfg.tensor_model_parallel_size,
                vp_stage=vp_stage,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                use_te=use_te,
            )
        for param in model.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(param)
        freeze_routers(model, model_cfg)
        if not meta:
            model.to(compute_device())
        model.model_type = _encoder_or_decoder()
        chunks.append(model)
    return chunks


def gpt_model(
    config,
    model_cfg: ModelConfig,
    tp: int,
    *,
    vp_stage: Optional[int],
    pre_process: bool,
    post_process: bool,
    use_te: Optional[bool] = None,
    pg_collection=None,
):
    """One megatron ``GPTModel`` chunk: the single place that maps a :class:`ModelConfig` onto
    GPTModel's arguments (the trainer's :func:`build_model` and the planner's meta builds both
    call it). ``pg_collection``: process groups other than parallel_state's (the planner's
    stand-ins for a layout larger than this machine)."""
    from megatron.core.models.gpt import GPTModel

    extra = {} if pg_collection is None else {"pg_collection": pg_collection}
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model_cfg, config, use_te=use_te, vp_stage=vp_stage),
        vocab_size=model_cfg.padded_vocab_size(tp),
        max_sequence_length=model_cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=model_cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=model_cfg.rotary_base,
        rope_scaling=model_cfg.rope_scaling == "llama3",
        rope_scaling_factor=model_cfg.rope_scaling_factor,
        vp_stage=vp_stage,
        **extra,
    )


def freeze_routers(model, model_cfg: ModelConfig) -> int:
    """With ``model.moe_freeze_router``, take the routers' weights out of training
    (``requires_grad=False``: megatron's DDP gives them no gradient buffer and the optimizer no
    state, so they never move). Returns how many were frozen."""
    if model_cfg.num_experts is None or not model_cfg.moe_freeze_router:
        return 0
    frozen = 0
    for name, param in model.named_parameters():
        if name.endswith("mlp.router.weight") or name.endswith("mlp.router.bias"):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def _check_parallel_state(parallel_cfg) -> None:
    """The layout must be the one megatron's parallel state was initialised with."""
    from megatron.core import parallel_state as ps

    want = (
        parallel_cfg.tensor_model_parallel_size,
        parallel_cfg.pipeline_model_parallel_size,
        parallel_cfg.virtual_pipeline_model_parallel_size,
    )
    have = (
        ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_virtual_pipeline_model_parallel_world_size() or None,
    )
    if want != have:
        raise ValueError(
            f"parallel_cfg has (TP, PP, VPP) = {want} but megatron's parallel state was initialised with {have}; "
            "build with the ParallelConfig that initialize_parallel was given"
        )


def parameter_count(chunks) -> int:
    """Parameters held by this rank (its TP shards, all its chunks); works on meta chunks."""
    return sum(p.numel() for chunk in chunks for p in chunk.parameters())


def _encoder_or_decoder():
    from megatron.core.enums import ModelType

    return ModelType.encoder_or_decoder


@contextlib.contextmanager
def _meta_context(meta: bool):
    """Allocate on the meta device, and make the collectives megatron runs inside the
    constructor (the tied-embedding all-reduce between the first and last pipeline stage) a
    no-op on meta tensors."""
    if not meta:
        yield
        return
    import torch.distributed as dist

    all_reduce = dist.all_reduce

    def meta_all_reduce(tensor, *args, **kwargs):
        if tensor.is_meta:
            return None
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = meta_all_reduce
    try:
        with torch.device("meta"):
            yield
    finally:
        dist.all_reduce = all_reduce
