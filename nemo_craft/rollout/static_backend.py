"""Batched generation with megatron-core's static KV cache (``backend="static"``).

What is megatron's and what is ours:

* megatron-core: ``GPTInferenceWrapper`` (built by ``mcore_compat``: inputs, attention mask and
  position ids of a context window; the forward pass for TP, for PP with p2p between stages and,
  on megatron-core 0.16, micro-batching of large prefills; logits gathered over TP),
  ``StaticInferenceContext`` (the per-layer KV cache that attention fills and reads, prefill
  then decode mode) and the static batching scheme of its ``TextGenerationController``:
  prompts left-aligned, prefill up to the shortest prompt, then one position per step, where a
  row still inside its prompt feeds its next prompt token and a row past it feeds its last
  sampled token. No padding token is ever attended to, so the scheme is exact with every
  attention backend (local, TE, flash) and every position-embedding type.
* the loop below (~60 lines) replaces ``TextGenerationController.
  generate_all_output_tokens_static_batch``, which does not serve RL rollouts: it has one budget
  and one termination id for the whole batch and no stop strings (so every action would run to
  the longest budget), it materialises [B, prompt, V] logits whenever log-probs are asked for,
  it broadcasts the full [B, V] logits from the last pipeline stage at every step, and its engine
  (``StaticInferenceEngine.generate``) reseeds the global torch RNG on each call. Here each row
  has its own budget, EOS ids and stop strings, the batch stops when its last row does, only the
  last token's logits are computed, the last stage samples and broadcasts B token ids and
  log-probs, and sampling draws from a generator of its own.

Every rank of a model-parallel group runs this in lockstep on the same prompts; the sampled tokens
are broadcast from tensor-parallel rank 0 of the last pipeline stage, so all ranks hold the same
tokens and take the same stop decisions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from nemo_craft.parallel import mcore_compat
from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.backend_common import generation_mode, sample_and_share
from nemo_craft.rollout.stopping import StopCriteria

__all__ = ["StaticBackend"]


class StaticBackend:
    """Generation on one model chunk (this rank's pipeline stage) with a static KV cache.

    Args:
        model_chunks: this rank's model chunks as megatron builds them (one chunk; megatron's
            inference wrapper does not support virtual pipeline stages). May be wrapped (DDP,
            Float16Module).
        vocab_size: the tokenizer's vocabulary (logits beyond it are padding, never sampled).
        max_batch_size: rows per forward pass; larger batches are split.
        max_sequence_length: prompt plus generated tokens of one row, at most.
        pp_microbatch_tokens: megatron-core 0.16's ``inference_batch_times_seqlen_threshold``: a
            pipeline-parallel forward of more tokens than this is split into micro-batches (-1:
            never; None: 512). Later versions never split, and refuse any value but None / -1.
    """

    def __init__(
        self,
        model_chunks: Sequence[torch.nn.Module],
        *,
        vocab_size: int,
        max_batch_size: int,
        max_sequence_length: int,
        pp_microbatch_tokens: int | None = None,
    ):
        from megatron.core.inference.contexts import StaticInferenceContext
        from megatron.core.utils import get_model_config, unwrap_model

        if len(model_chunks) != 1:
            raise ValueError(
                f"generation needs exactly one model chunk per rank, got {len(model_chunks)}: "
                "megatron's inference wrapper does not support virtual pipeline parallel; "
                "generate with virtual_pipeline_model_parallel_size=None"
            )
        self.model = model_chunks[0]
        self.config = get_model_config(self.model)
        padded_vocab_size = unwrap_model(self.model).vocab_size
        if vocab_size > padded_vocab_size:
            raise ValueError(f"tokenizer vocab_size {vocab_size} > the model's padded vocabulary {padded_vocab_size}")
        self.vocab_size = vocab_size
        self.max_batch_size = max_batch_size
        self.max_sequence_length = max_sequence_length
        self._context_cls = StaticInferenceContext
        self.wrapper = mcore_compat.inference_wrapper(
            self.model,
            StaticInferenceContext(1, 1),
            padded_vocab_size=padded_vocab_size,
            max_batch_size=max_batch_size,
            max_sequence_length=max_sequence_length,
            pp_microbatch_tokens=pp_microbatch_tokens,
        )

    # -- public ------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        budgets: Sequence[int],
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        stop: StopCriteria,
        generator: torch.Generator,
    ) -> list[tuple[list[int], list[float], str]]:
        """``(token_ids, logprobs, finish_reason)`` per prompt, in order. Rows are grouped by
        prompt length (shortest first) into batches of at most ``max_batch_size``."""
        for i, (p, b) in enumerate(zip(prompts, budgets)):
            if len(p) + b > self.max_sequence_length:
                raise ValueError(
                    f"prompt {i}: {len(p)} prompt tokens + budget {b} exceed "
                    f"max_sequence_length={self.max_sequence_length}"
                )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list = [None] * len(prompts)
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, generator=generator)
        with self._inference_state():
            for first in range(0, len(order), self.max_batch_size):
                rows = order[first : first + self.max_batch_size]
                results = self._generate_batch([prompts[i] for i in rows], [budgets[i] for i in rows], **sampling)
                for i, result in zip(rows, results):
                    out[i] = result
        return out

    # -- the loop ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def _generate_batch(self, prompts, budgets, *, temperature, top_k, top_p, stop, generator):
        device = compute_device()
        lengths = [len(p) for p in prompts]
        width = max(n + b for n, b in zip(lengths, budgets))
        tokens_BT = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            tokens_BT[i, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)
        lengths_B = torch.tensor(lengths, device=device)

        context = self._context_cls(len(prompts), width)
        self.wrapper.inference_context = context
        self.wrapper.prep_model_for_inference()  # eval mode, context reset (prefill)
        inputs = self.wrapper.prep_inference_input(tokens_BT)

        generated = [[] for _ in prompts]
        logprobs = [[] for _ in prompts]
        reasons: list[str | None] = [None] * len(prompts)
        start, end = 0, min(lengths)
        while True:
            window = self.wrapper.get_batch_for_context_window(inputs, start, end)
            logits = self.wrapper.run_one_forward_step(window)  # [B, 1, V'] on the last stage
            next_B, logp_B = sample_and_share(
                logits[:, -1, :] if logits is not None else None,
                len(prompts),
                vocab_size=self.vocab_size,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                device=device,
            )
            started_B = lengths_B <= end  # rows whose prompt is consumed: their token goes at `end`
            tokens_BT[started_B, end] = next_B[started_B]
            next_list, logp_list = next_B.tolist(), logp_B.tolist()
            for i in range(len(prompts)):
                if reasons[i] is None and lengths[i] <= end:
                    generated[i].append(next_list[i])
                    logprobs[i].append(logp_list[i])
                    reasons[i] = stop.check(generated[i], budgets[i])
            if all(r is not None for r in reasons):
                break
            if bool(started_B.all()):
                context.enable_decode_mode()
            start, end = end, end + 1
            assert end < width, "a row outlived its budget"
        return list(zip(generated, logprobs, reasons))

    # -- model state around generation --------------------------------------------------------------

    @contextlib.contextmanager
    def _inference_state(self):
        """``generation_mode`` around the whole call, and the KV cache dropped after it."""
        with generation_mode(self.model):
            try:
                yield
            finally:
                self.wrapper.inference_context = self._context_cls(1, 1)
