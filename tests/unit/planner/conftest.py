"""Closed-form parameter counts from a Hugging Face config's fields, independent of megatron."""

from __future__ import annotations


def hf_parameter_count(m) -> int:
    """Parameters of a RMSNorm/SwiGLU/GQA/RoPE decoder as Hugging Face stores them (embedding
    once when tied), from a ModelConfig's fields."""
    h, f, d = m.hidden_size, m.ffn_hidden_size, m.kv_channels
    q, kv = m.num_attention_heads * d, m.num_query_groups * d
    layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h
    if m.add_qkv_bias:
        layer += q + 2 * kv
    if m.qk_layernorm:
        layer += 2 * d
    embeddings = m.vocab_size * h * (1 if m.tie_word_embeddings else 2)
    return m.num_layers * layer + embeddings + h
