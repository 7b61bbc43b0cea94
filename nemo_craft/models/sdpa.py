"""Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local spec (no Transformer Engine) computes attention unfused, kernel by kernel.
:class:`SDPAttention` is a drop-in ``core_attention`` for that spec which hands the same computation
to PyTorch's fused kernels (flash or memory-efficient on GPUs, the fused CPU kernel on CPUs, GQA
without copies), with megatron's semantics. It also runs packed (thd) sequences block by block
and context parallel. What :func:`nemo_craft.models.provider.layer_spec` picks, the masks, packing,
CP and what is refused: docs/design.md#attention-without-transformer-engine.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right

from nemo_craft.parallel.context_parallel import gather_sequence

__all__ = ["SDPAttention", "sdpa_unsupported_reason"]

_MASKED_SCORE = -10000.0  # megatron's attention_mask_func fill value


def sdpa_unsupported_reason(config) -> Optional[str]:
    """Why :class:`SDPAttention` cannot stand in for megatron's local attention under this
    ``TransformerConfig`` (None: it can)."""
    if getattr(config, "window_size", None) is not None:
        return f"window_size={config.window_size} (sliding-window attention)"
    if getattr(config, "softmax_type", "vanilla") != "vanilla":
        return f"softmax_type={config.softmax_type!r}"
    if getattr(config, "apply_query_key_layer_scaling", False):
        return "apply_query_key_layer_scaling=True"
    return None


class SDPAttention(DotProductAttention):
    """megatron's ``DotProductAttention`` (same constructor, same head bookkeeping per tensor-
    parallel partition) with its forward on PyTorch's fused attention kernels.

    Shapes: query [sq, b, np/TP, hn], key and value [sk, b, ng/TP, hn] (ng query groups, GQA);
    returns the context [sq, b, np/TP * hn]."""

    # The constructor and forward take what megatron's spec passes, by name as well as position:
    # newer megatron-core releases add arguments, which go to the parent unchanged.
    def __init__(self, config, *args, **kwargs):
        reason = sdpa_unsupported_reason(config)
        if reason is not None:
            raise ValueError(
                f"SDPAttention does not support {reason}; build the model with "
                "model.core_attention=local (megatron's DotProductAttention)"
            )
        # megatron's DotProductAttention asserts CP 1; this class does CP itself (below)
        cp = config.context_parallel_size
        base_config = config
        if cp > 1:
            base_config = copy.copy(config)
            base_config.context_parallel_size = 1
        super().__init__(base_config, *args, **kwargs)
        self.config = config
        self.cp_group = None
        if cp > 1:
            from megatron.core import parallel_state

            self.cp_group = getattr(self.pg_collection, "cp", None) or parallel_state.get_context_parallel_group()
        dropout = kwargs.get("attention_dropout", args[3] if len(args) > 3 else None)
        self.dropout_p = float(config.attention_dropout if dropout is None else dropout)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Optional[Tensor],
        attn_mask_type=None,
        attention_bias: Optional[Tensor] = None,
        packed_seq_params=None,
        **extra,
    ) -> Tensor:
        if attention_bias is not None:
            raise ValueError("SDPAttention does not take an attention_bias")
        unknown = sorted(k for k, v in extra.items() if v is not None)
        if unknown:
            raise ValueError(
                f"SDPAttention got arguments it does not implement: {unknown}; "
                "build the model with model.core_attention=local"
            )
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        if self.cp_group is not None:
            return self._context_parallel(query, key, value, attention_mask, mask_type, packed_seq_params)
        if packed_seq_params is not None:
            return self._packed(query, key, value, attention_mask, mask_type, packed_seq_params)
        sq, sk = query.size(0), key.size(0)
        mask, is_causal = None, False
        if attention_mask is not None:
            mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
            mask.masked_fill_(attention_mask.to(query.device), _MASKED_SCORE)
        elif mask_type == AttnMaskType.causal and sq > 1:
            if sq != sk:
                raise ValueError(f"a causal mask without attention_mask needs sq == sk, got sq={sq}, sk={sk}")
            is_causal = True
        return self._attend(query, key, value, mask, is_causal)

    def _packed(self, query, key, value, attention_mask, mask_type, params) -> Tensor:
        """Block-diagonal causal attention of ``thd`` input: [t, heads, hn] -> [t, np/TP * hn]."""
        if params.qkv_format != "thd":
            raise ValueError(f"SDPAttention takes packed sequences in qkv_format 'thd', got {params.qkv_format!r}")
        if attention_mask is not None:
            raise ValueError("SDPAttention takes packed sequences or an attention_mask, not both")
        # the boundaries megatron's RoPE used: the padded ones when given
        cu_q = params.cu_seqlens_q if params.cu_seqlens_q_padded is None else params.cu_seqlens_q_padded
        cu_kv = params.cu_seqlens_kv if params.cu_seqlens_kv_padded is None else params.cu_seqlens_kv_padded
        segments = (cu_q[1:] - cu_q[:-1]).tolist()  # the one host read (megatron's thd RoPE makes the same)
        if (cu_kv is not cu_q and not torch.equal(cu_q, cu_kv)) or sum(segments) != query.size(0):
            raise ValueError(
                f"packed self-attention needs cu_seqlens_q == cu_seqlens_kv ending at the {query.size(0)} tokens; "
                f"got {cu_q.tolist()} and {cu_kv.tolist()}"
            )
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        out = [
            self._attend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), None, causal and q.size(0) > 1)
            for q, k, v in zip(query.split(segments), key.split(segments), value.split(segments))
        ]
        return torch.cat(out, dim=0).squeeze(1)

    def _context_parallel(self, query, key, value, attention_mask, mask_type, packed_seq_params) -> Tensor:
        """This rank's query chunks [2n, b, np/TP, hn] against the whole sequence's keys and values
        (gathered over the CP group) -> [2n, b, np/TP * hn]."""
        if packed_seq_params is not None:
            raise ValueError(
                "SDPAttention does not take packed (thd) sequences under context parallel; leave packing off "
                "(trainer.max_tokens_per_microbatch=null) with parallel.context_parallel_size > 1"
            )
        if attention_mask is not None:
            raise ValueError("SDPAttention under context parallel takes no attention_mask (causal or no mask only)")
        causal = mask_type == AttnMaskType.causal
        if not causal and mask_type != AttnMaskType.no_mask:
            raise ValueError(f"SDPAttention under context parallel supports causal or no mask, got {mask_type}")
        cp = self.cp_group.size()
        rank = self.cp_group.rank()
        n = query.size(0) // 2
        kv = gather_sequence(torch.stack([key, value]), dim=1, group=self.cp_group)  # [2, S, b, ng/TP, hn]
        out = []
        for half, chunk in enumerate((rank, 2 * cp - 1 - rank)):
            q = query[half * n : (half + 1) * n]
            if not causal:
                out.append(self._attend(q, kv[0], kv[1], None, False))
                continue
            end = (chunk + 1) * n  # the keys at global positions <= the chunk's last query
            mask = causal_lower_right(n, end) if chunk > 0 else None
            out.append(self._attend(q, kv[0, :end], kv[1, :end], mask, chunk == 0))
        return torch.cat(out, dim=0)

    def _attend(self, query, key, value, mask, is_causal: bool) -> Tensor:
        """[s, b, heads, hn] each -> the context [sq, b, np/TP * hn]."""
        sq = query.size(0)
        # [s, b, heads, hn] -> [b, heads, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.dropout_p if self.training else 0.0
        # Dropout masks come from megatron's model-parallel RNG, as in the class this replaces.
        rng = (
            tensor_parallel.get_cuda_rng_tracker().fork()
            if dropout_p > 0.0 and not self.config.sequence_parallel
            else contextlib.nullcontext()
        )
        with rng:
            context = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                scale=self.softmax_scale,
                enable_gqa=q.size(1) != k.size(1),
            )
        # [b, np, sq, hn] -> [sq, b, np * hn]
        return context.permute(2, 0, 1, 3).reshape(sq, query.size(1), self.hidden_size_per_partition)
