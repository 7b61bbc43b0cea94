"""Tiny *random* Hugging Face checkpoints built on the spot (no download), for tests."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["make_tiny_hf_model"]


def make_tiny_hf_model(out_dir: str | Path, arch: str = "qwen3", *, num_layers: int = 4, hidden: int = 64,
                       heads: int = 4, kv_heads: int = 2, vocab: int = 256, ffn: int = 128,
                       tied: bool = False, seed: int = 0) -> Path:
    """Save a randomly initialised ``arch`` ("qwen2", "qwen3" or "llama") model as safetensors."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=num_layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                  rms_norm_eps=1e-6, tie_word_embeddings=tied, torch_dtype="float32")
    if arch == "qwen3":
        config, cls = tf.Qwen3Config(head_dim=hidden // heads, rope_theta=1e6, **common), tf.Qwen3ForCausalLM
    elif arch == "qwen2":
        config, cls = tf.Qwen2Config(rope_theta=1e6, **common), tf.Qwen2ForCausalLM
    elif arch == "llama":
        config, cls = tf.LlamaConfig(rope_theta=5e5, **common), tf.LlamaForCausalLM
    else:
        raise ValueError(f"arch={arch!r}: allowed are qwen2, qwen3, llama")
    torch.manual_seed(seed)
    model = cls(config).float()
    with torch.no_grad():  # HF zero-inits some biases/norms; randomise all so a mis-mapping shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    return out
