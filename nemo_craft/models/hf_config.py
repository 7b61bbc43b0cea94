"""A Hugging Face ``config.json`` <-> :class:`~nemo_craft.models.config.ModelConfig`, and where a
run's initial weights come from.

    cfg = model_config_from_hf("/data/hf/Qwen3-1.7B", params_dtype="bf16")   # model=from_hf
    cfg.check_weights()   # start-up: hf_path / init / config.json agree with the model config

The family (:mod:`nemo_craft.models.families`) is found from config.json's ``model_type``; the
reader refuses what the megatron model would silently get wrong (sliding-window attention,
biases on the output projection or the MLP, RoPE scalings other than Llama 3's).

``model=from_hf`` (conf/model/from_hf.yaml) leaves the architecture fields null: they are read
from ``model.hf_path``'s config.json when the ModelConfig is built, and a field given on the
command line must agree with it. A named model (``model=qwen3_1p7b``) is checked against the
checkpoint by :func:`check_weights` instead: the YAMLs stay for planning without weights.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any, Optional

from nemo_craft.models.families import family, family_for_hf_config

__all__ = [
    "ARCHITECTURE_FIELDS",
    "hf_config_values",
    "model_config_from_hf",
    "to_hf_config",
    "resolve_from_checkpoint",
    "check_weights",
    "record_resolved",
]

# ModelConfig fields that describe the checkpoint's architecture -> the config.json key a
# disagreement is reported under. model=from_hf reads exactly these from the checkpoint.
ARCHITECTURE_FIELDS = {
    "architecture": "model_type",
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "kv_channels": "head_dim",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
    "rotary_base": "rope_theta",
    "rope_scaling": "rope_type",
    "rope_scaling_factor": "rope factor",
    "norm_epsilon": "rms_norm_eps",
    "add_qkv_bias": "model_type",
    "qk_layernorm": "model_type",
    "tie_word_embeddings": "tie_word_embeddings",
    "num_experts": "num_experts",
    "moe_router_topk": "num_experts_per_tok",
    "moe_ffn_hidden_size": "moe_intermediate_size",
    "moe_norm_topk_prob": "norm_topk_prob",
    "decoder_sparse_step": "decoder_sparse_step",
    "mlp_only_layers": "mlp_only_layers",
}
# The Llama 3.1 RoPE scaling megatron-core implements (RotaryEmbedding._apply_scaling has
# these constants built in); any other value would be silently ignored, so it is refused.
LLAMA3_ROPE_CONSTANTS = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


# ---------------------------------------------------------------- config.json -> ModelConfig


def _read(hf_config: Any) -> tuple[dict, Optional[str]]:
    """(config dict, checkpoint directory or None) of a dict, a ``PretrainedConfig``, a
    checkpoint directory or a config.json path."""
    if isinstance(hf_config, (str, os.PathLike)):
        path, hf_path = os.fspath(hf_config), None
        if os.path.isdir(path):
            hf_path, path = path, os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ValueError(
                f"model.hf_path={hf_path or path}: no config.json there; model.hf_path names a Hugging Face "
                "checkpoint directory (a GGUF file is converted first: nemo-craft convert from-gguf)"
            )
        with open(path) as f:
            return json.load(f), hf_path
    if isinstance(hf_config, Mapping):
        return dict(hf_config), None
    return hf_config.to_dict(), None  # a transformers PretrainedConfig


def hf_config_values(hf_config: Any) -> tuple[dict, Optional[str]]:
    """(ModelConfig field values, checkpoint directory or None) of a Hugging Face config (see
    :func:`_read` for the sources). Raises ValueError for what the megatron model does not implement."""
    config, hf_path = _read(hf_config)
    fam = family_for_hf_config(config)
    get = config.get
    if get("hidden_act", "silu") != fam.hidden_act:
        raise ValueError(f"hidden_act={get('hidden_act')!r}: only {fam.hidden_act!r} (SwiGLU) is supported")
    if get("use_sliding_window", False):
        raise ValueError(
            "use_sliding_window=true: sliding-window attention is not supported; "
            "set it to false in config.json if the checkpoint was trained without it"
        )
    if get("mlp_bias", False):
        raise ValueError(
            "mlp_bias=true is not supported (megatron's bias flag would also add one to the attention projections)"
        )
    for key, (value, why) in fam.hf_fixed.items():
        if key in config and config[key] != value:
            raise ValueError(f"{key}={json.dumps(config[key])} for {fam.name!r} {why}")
    heads = get("num_attention_heads")
    rotary_base, rope_scaling, rope_factor = _read_rope(get)
    values = dict(
        architecture=fam.name,
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
        add_qkv_bias=fam.fixed["add_qkv_bias"],
        qk_layernorm=fam.fixed["qk_layernorm"],
    )
    values.update(_read_moe(config, fam))
    return values, hf_path


def _read_moe(config: dict, fam) -> dict:
    """The mixture-of-experts fields of a config.json (all None for a dense family). transformers
    writes ``num_local_experts`` where the published checkpoints say ``num_experts``."""
    if not fam.moe:
        return {
            name: None
            for name in (
                "num_experts",
                "moe_router_topk",
                "moe_ffn_hidden_size",
                "moe_norm_topk_prob",
                "decoder_sparse_step",
                "mlp_only_layers",
            )
        }
    get = config.get
    if get("shared_expert_intermediate_size"):
        raise ValueError(
            f"shared_expert_intermediate_size={get('shared_expert_intermediate_size')}: shared experts are not "
            f"implemented for {fam.name!r}"
        )
    return dict(
        num_experts=get("num_experts", get("num_local_experts")),
        moe_router_topk=get("num_experts_per_tok"),
        moe_ffn_hidden_size=get("moe_intermediate_size"),
        moe_norm_topk_prob=bool(get("norm_topk_prob", True)),
        decoder_sparse_step=get("decoder_sparse_step", 1),
        mlp_only_layers=tuple(get("mlp_only_layers") or ()),
    )


def model_config_from_hf(hf_path: str, **overrides: Any):
    """The ModelConfig of the checkpoint directory ``hf_path`` (its config.json, the family found
    by the registry), loading its weights (``init="pretrained"``); ``overrides`` replace fields
    that are not the architecture's (``params_dtype="bf16"``, ``tokenizer=...``)."""
    from nemo_craft.models.config import ModelConfig  # lazy: this module is imported by models/config.py

    values, _ = hf_config_values(os.fspath(hf_path))
    values.update(hf_path=os.fspath(hf_path), init="pretrained")
    values.update(overrides)
    return ModelConfig(**values)


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
    for key, value in LLAMA3_ROPE_CONSTANTS.items():
        if float(spec.get(key, value)) != value:
            raise ValueError(
                f"llama3 RoPE scaling with {key}={spec.get(key)!r} is not supported: megatron-core "
                f"hard-codes {key}={value}"
            )
    return float(theta), "llama3", float(spec.get("factor", 8.0))


# ---------------------------------------------------------------- ModelConfig -> config.json


def to_hf_config(cfg) -> dict:
    """A ``config.json`` dict for ``cfg``'s architecture (what export writes when it has no
    original config to copy, and what the vLLM engine is built from)."""
    fam = family(cfg.architecture)
    rope: dict = {"rope_type": "default", "rope_theta": cfg.rotary_base}
    if cfg.rope_scaling == "llama3":
        rope = dict(
            rope_type="llama3", rope_theta=cfg.rotary_base, factor=cfg.rope_scaling_factor, **LLAMA3_ROPE_CONSTANTS
        )
    out = dict(
        architectures=[fam.hf_architecture],
        model_type=fam.model_type,
        num_hidden_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups,
        head_dim=cfg.kv_channels,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.norm_epsilon,
        hidden_act=fam.hidden_act,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_dropout=cfg.attention_dropout,
        # Both spellings: transformers >= 5 reads rope_parameters, 4.x rope_theta/rope_scaling.
        rope_parameters=rope,
        rope_theta=cfg.rotary_base,
        rope_scaling=None if cfg.rope_scaling is None else rope,
        torch_dtype="bfloat16" if cfg.params_dtype == "bf16" else "float32",
    )
    out.update({key: value for key, (value, _) in fam.hf_fixed.items()})
    if cfg.num_experts is not None:
        out.update(
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.moe_router_topk,
            moe_intermediate_size=cfg.moe_ffn_hidden_size,
            norm_topk_prob=cfg.moe_norm_topk_prob,
            decoder_sparse_step=cfg.decoder_sparse_step,
            mlp_only_layers=list(cfg.mlp_only_layers),
            router_aux_loss_coef=cfg.moe_aux_loss_coeff,
            output_router_logits=False,
        )
    return out


# ---------------------------------------------------------------- the model config vs the checkpoint


def _differs(field: str, given: Any, ref: Any) -> bool:
    if isinstance(given, (list, tuple)) or isinstance(ref, (list, tuple)):
        return list(given or ()) != list(ref or ())
    if isinstance(given, float) or isinstance(ref, float):
        return not math.isclose(float(given), float(ref), rel_tol=1e-6)
    return given != ref


def _disagreement(cfg, ref: dict, hf_path: str) -> Optional[tuple[str, str]]:
    """(field, start of a one-line message) of the first architecture field where ``cfg`` (None
    fields skipped) and the checkpoint's values ``ref`` differ; None when they agree."""
    for field, hf_key in ARCHITECTURE_FIELDS.items():
        given = getattr(cfg, field)
        if given is None or (field == "rope_scaling_factor" and ref["rope_scaling"] is None):
            continue
        if _differs(field, given, ref[field]):
            shown = family(ref["architecture"]).model_type if hf_key == "model_type" else ref[field]
            return field, f"model.{field}={given!r} but {os.path.join(hf_path, 'config.json')} has {hf_key}={shown!r}"
    return None


def resolve_from_checkpoint(cfg) -> None:
    """``model=from_hf`` (``cfg.architecture is None``): fill the architecture fields left None
    from ``cfg.hf_path``'s config.json, in place; a field that was given must agree with it."""
    if not cfg.hf_path:
        raise ValueError(
            "model=from_hf (model.architecture=null) reads the architecture from model.hf_path's config.json: "
            "set model.hf_path=DIR (a Hugging Face checkpoint directory)"
        )
    ref, _ = hf_config_values(os.fspath(cfg.hf_path))
    found = _disagreement(cfg, ref, os.fspath(cfg.hf_path))
    if found is not None:
        raise ValueError(f"{found[1]}; with model=from_hf leave model.{found[0]} unset")
    for field in ARCHITECTURE_FIELDS:
        if getattr(cfg, field) is None:
            setattr(cfg, field, ref[field])


def check_weights(cfg) -> None:
    """Refuse, in one line naming what is missing, a model config whose initial weights are not
    what the user asked for: a checkpoint with the tiny random model, a pretrained architecture
    without its checkpoint, or a checkpoint whose config.json disagrees with the model config."""
    if cfg.init == "random":
        if cfg.hf_path:
            raise ValueError(
                f"model.hf_path={cfg.hf_path} with model.init=random (the tiny model's, the default when no "
                f"model= is chosen): pass model=from_hf to read the architecture from {cfg.hf_path}/config.json, "
                "or the model's name (e.g. model=qwen3_1p7b); to train from random initialisation, drop model.hf_path"
            )
        return
    if not cfg.hf_path:
        raise ValueError(
            f"model.init=pretrained needs model.hf_path=DIR, the {cfg.architecture!r} checkpoint to start from; "
            "set model.init=random to train this architecture from random initialisation"
        )
    ref, _ = hf_config_values(os.fspath(cfg.hf_path))
    found = _disagreement(cfg, ref, os.fspath(cfg.hf_path))
    if found is not None:
        raise ValueError(
            f"{found[1]}; pass model=from_hf to take the checkpoint's architecture, "
            "or the model config that describes it"
        )


def record_resolved(node: Any, cfg) -> None:
    """Write the architecture ``model=from_hf`` read from the checkpoint into the composed
    config's model section ``node`` (its null fields), so that the printed config and a
    checkpoint's config.yaml hold the effective one."""
    if node is None or cfg is None or node.get("architecture") is not None:
        return
    for field in ARCHITECTURE_FIELDS:
        if node.get(field) is None:
            value = getattr(cfg, field)
            node[field] = list(value) if isinstance(value, tuple) else value
