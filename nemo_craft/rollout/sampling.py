"""Next-token sampling from full-vocabulary logits: temperature, top-k, top-p, a seeded generator.

Shape letters: B rows of the batch, V vocabulary (the tokenizer's, without megatron's padding).

Pure tensor code with no process groups: the caller gives every tensor-parallel rank the same
(all-gathered) logits and the same generator state, so every rank draws the same tokens.
"""

from __future__ import annotations

import torch

__all__ = ["sample_next_tokens"]


def sample_next_tokens(
    logits_BV: torch.Tensor,
    *,
    vocab_size: int,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return ``(tokens_B, logprobs_B)``.

    Args:
        logits_BV: [B, V'] logits with V' >= ``vocab_size``; columns from ``vocab_size`` on are
            megatron's vocabulary padding and are never sampled.
        vocab_size: the tokenizer's vocabulary size.
        temperature: 0 picks the argmax (greedy); otherwise logits are divided by it.
        top_k: keep the k most likely tokens (0: all). Applied before top-p.
        top_p: keep the smallest set of most likely tokens whose probability reaches top_p
            (1.0: all); the most likely token is always kept.
        generator: the random stream of the draw (unused when greedy).

    Returns:
        tokens_B (int64) and logprobs_B (float32): the log-probability of each drawn token under
        the behaviour policy softmax(logits / temperature) over the true vocabulary (the raw
        logits' when greedy), before any top-k / top-p truncation: the quantity the trainer
        recomputes as log pi_old (training rollouts never truncate).
    """
    logits_BV = logits_BV[:, :vocab_size].float()
    if temperature == 0.0:
        logprobs_BV = torch.log_softmax(logits_BV, dim=-1)
        tokens_B = torch.argmax(logits_BV, dim=-1)
    else:
        scores_BV = logits_BV / temperature
        logprobs_BV = torch.log_softmax(scores_BV, dim=-1)
        if 0 < top_k < vocab_size:
            kth_B1 = torch.topk(scores_BV, top_k, dim=-1).values[:, -1:]
            scores_BV = scores_BV.masked_fill(scores_BV < kth_B1, float("-inf"))
        if top_p < 1.0:
            scores_BV = _top_p_filter(scores_BV, top_p)
        probs_BV = torch.softmax(scores_BV, dim=-1)
        tokens_B = torch.multinomial(probs_BV, num_samples=1, generator=generator).squeeze(1)
    return tokens_B, logprobs_BV.gather(1, tokens_B[:, None]).squeeze(1)


def _top_p_filter(scores_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """-inf on every token outside the nucleus: a token is dropped when the probability of the
    tokens strictly more likely than it already reaches top_p."""
    sorted_BV, order_BV = torch.sort(scores_BV, dim=-1, descending=True)
    probs_BV = torch.softmax(sorted_BV, dim=-1)
    before_BV = torch.cumsum(probs_BV, dim=-1) - probs_BV
    drop_sorted_BV = before_BV >= top_p
    drop_sorted_BV[:, 0] = False
    drop_BV = torch.zeros_like(drop_sorted_BV).scatter(1, order_BV, drop_sorted_BV)
    return scores_BV.masked_fill(drop_BV, float("-inf"))
