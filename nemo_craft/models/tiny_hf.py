"""Tiny random Hugging Face checkpoints (no downloads), for tests and CPU smoke runs.

    path = make_tiny_hf_checkpoint(tmp_dir, "qwen3", tied=True)

Every parameter is random, biases and norm weights included (Hugging Face initialises those to
0 and 1, which would hide a wrong mapping of them), and the result is saved with
``save_pretrained(safe_serialization=True)``. Needs ``transformers``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from nemo_craft.models.families import family

__all__ = ["make_tiny_hf_checkpoint", "tiny_hf_config"]


def tiny_hf_config(
    architecture: str,
    *,
    tied: bool = False,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 160,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: Optional[int] = None,
    vocab_size: int = 320,
    rope_theta: float = 10000.0,
    llama3_rope_scaling: Optional[float] = None,
    num_experts: int = 8,
    num_experts_per_tok: int = 2,
    moe_intermediate_size: int = 48,
    decoder_sparse_step: int = 1,
    mlp_only_layers: tuple[int, ...] = (),
    norm_topk_prob: bool = True,
):
    """A transformers config of the model family ``architecture`` ("llama", "qwen2", "qwen3",
    "qwen3_moe" or any registered family whose ``hf_config_class`` transformers has). The
    ``num_experts`` ... ``norm_topk_prob`` arguments are a mixture-of-experts family's only."""
    import transformers

    fam = family(architecture)
    common = dict(
        num_hidden_layers=num_layers,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if llama3_rope_scaling is not None:
        rope = dict(
            rope_type="llama3",
            rope_theta=rope_theta,
            factor=llama3_rope_scaling,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
        common["max_position_embeddings"] = int(8192 * llama3_rope_scaling)
    if fam.moe:
        common.update(
            num_experts=num_experts,
            num_experts_per_tok=num_experts_per_tok,
            moe_intermediate_size=moe_intermediate_size,
            decoder_sparse_step=decoder_sparse_step,
            mlp_only_layers=list(mlp_only_layers),
            norm_topk_prob=norm_topk_prob,
            output_router_logits=False,
        )
    config_class = getattr(transformers, fam.hf_config_class)
    if not fam.hf_head_dim:
        if head_dim is not None:
            raise ValueError(f"{fam.hf_config_class} has no head_dim setting (it is hidden_size / num_attention_heads)")
        return config_class(rope_parameters=rope, **common)
    return config_class(head_dim=head_dim or hidden_size // num_attention_heads, rope_parameters=rope, **common)


def make_tiny_hf_checkpoint(
    out_dir: str, architecture: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs
) -> str:
    """Build a random ``architecture`` model (see :func:`tiny_hf_config` for the sizes), save it
    to ``out_dir`` as safetensors and return ``out_dir``."""
    from transformers import AutoModelForCausalLM

    config = tiny_hf_config(architecture, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)  # norms near 1 but not 1, so a misplaced one shows
            elif name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    model = model.to(dtype)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
