"""Next-token sampling from full-vocabulary logits: temperature, top-k, top-p, a seeded generator.

Shape letters: B rows of the batch, V vocabulary (the tokenizer's, without megatron's padding).

Pure tensor code with no process groups: the caller gives every tensor-parallel rank the same
(all-gathered) logits and the same generator state, so every rank draws the same tokens.

A draw is ``torch.multinomial(probs_BV, 1)`` written out: that call takes one exponential variate
per entry of ``probs_BV`` from the generator (``exponential_noise``) and picks the argmax of
probs / noise in each row (the exponential race). Written out, a caller can draw the noise of a
whole batch and let only some of its rows use it: rows that have stopped need no logits, yet the
random stream advances exactly as when every row was sampled.
"""

from __future__ import annotations

import torch

__all__ = ["exponential_noise", "sample_next_tokens"]


def sample_next_tokens(
    logits_BV: torch.Tensor,
    *,
    vocab_size: int,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | None,
    noise_BV: torch.Tensor | None = None,
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
        noise_BV: [B, V] ``exponential_noise`` to draw with instead of taking it from ``generator``
            (rows of a larger batch's noise; unused when greedy).

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
        if noise_BV is None:
            noise_BV = exponential_noise(*probs_BV.shape, generator=generator, device=probs_BV.device)
        tokens_B = torch.argmax(probs_BV / noise_BV, dim=-1)
    return tokens_B, logprobs_BV.gather(1, tokens_B[:, None]).squeeze(1)


def exponential_noise(
    batch: int, vocab_size: int, *, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """[batch, vocab_size] Exp(1) variates (float32): the random numbers ``torch.multinomial``
    takes from ``generator`` to draw one token per row of a [batch, vocab_size] float32 probability
    table, in the same order, so the argmax of probs / noise is its draw, bit for bit."""
    return torch.empty(batch, vocab_size, dtype=torch.float32, device=device).exponential_(1.0, generator=generator)


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
