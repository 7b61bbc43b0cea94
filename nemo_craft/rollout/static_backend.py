"""Batched generation with megatron-core's static KV cache (``backend="static"``).

megatron's ``GPTInferenceWrapper`` and ``StaticInferenceContext`` run the forward passes and hold
the cache; the schedule here replaces megatron's static-batch loop, which does not serve RL
rollouts: one prefill of the prompts, then decode steps over the running rows only, each row with
its own budget, EOS ids and stop strings, sampling from a generator of its own. Every rank of a
model-parallel group runs it in lockstep and holds the same tokens. What is megatron's, the
schedule step by step and why its tokens equal the lockstep schedule's:
docs/rollout.md#the-static-backend.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch

from nemo_craft.parallel import mcore_compat
from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.backend_common import generation_mode, sample_and_share, skip_draws
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

    # -- GenerationBackend (nemo_craft.rollout.backends) ---------------------------------------------

    holds_weight_copy = False  # it runs the training chunks
    paged_kv_cache = False  # its KV cache is max_batch_size rows of max_sequence_length
    auto_preference = 0  # auto's fallback: it runs everywhere

    @classmethod
    def problem(cls, capability) -> None:
        return None

    @classmethod
    def check_run(cls, parallel_cfg, model_cfg) -> None:
        """Nothing beyond what every backend needs (``ParallelConfig.check_generation``)."""

    @classmethod
    def build(cls, model_chunks, config, *, vocab_size: int, max_sequence_length: int, model_cfg=None):
        if config.cuda_graphs:  # the config refuses it with backend=static: auto resolved to static
            warnings.warn(
                "cuda_graphs=true is ignored: backend=auto resolved to static here (CUDA graphs are the "
                "dynamic backend's)",
                stacklevel=4,
            )
        return cls(
            model_chunks,
            vocab_size=vocab_size,
            max_batch_size=config.max_batch_size,
            max_sequence_length=max_sequence_length,
            pp_microbatch_tokens=config.pp_microbatch_tokens,
        )

    def weights_changed(self) -> None:
        """Nothing to do: it generates with the chunks themselves."""

    def release_memory(self) -> None:
        """Nothing to lend back: the static KV cache lives only during ``generate``."""

    def read_stats(self) -> dict[str, float]:
        return {}

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

    # -- the schedule ------------------------------------------------------------------------------

    @torch.inference_mode()
    def _generate_batch(self, prompts, budgets, *, temperature, top_k, top_p, stop, generator):
        device = compute_device()
        n = len(prompts)
        lengths = [len(p) for p in prompts]
        width = max(length + b for length, b in zip(lengths, budgets))
        tokens_NT = torch.zeros(n, width, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            tokens_NT[i, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)

        context = self._context_cls(n, width)
        self.wrapper.inference_context = context
        self.wrapper.prep_model_for_inference()  # eval mode, context reset (prefill)
        inputs = self.wrapper.prep_inference_input(tokens_NT)
        slots = _Slots(sorted(range(n), key=lengths.__getitem__))
        if max(lengths) > 1:
            self._forward(inputs, slots.rows, 0, max(lengths) - 1)
        context.enable_decode_mode()

        generated = [[] for _ in prompts]
        logprobs = [[] for _ in prompts]
        reasons: list[str | None] = [None] * n
        sampling = dict(vocab_size=self.vocab_size, temperature=temperature, generator=generator, device=device)
        end = min(lengths)
        while True:
            while slots.waiting and lengths[slots.next_waiting] <= end:
                slots.start_next()
            if not slots.running:  # every started row ended before the next prompt's length
                skip_draws(lengths[slots.next_waiting] - end, n, **sampling)
                end = lengths[slots.next_waiting]
                continue
            rows = slots.running
            # the running rows are KV slots first .. first + len(rows) - 1; their token goes at column end
            context.sequence_len_offset, context.batch_size_offset = end - 1, slots.first
            logits = self._forward(inputs, rows, end - 1, end)  # [rows, 1, V'] on the last stage
            rows_R = torch.tensor(rows, device=device)
            next_R, logp_R = sample_and_share(
                logits[:, -1, :] if logits is not None else None,
                len(rows),
                top_k=top_k,
                top_p=top_p,
                draw_rows=(n, rows_R),
                **sampling,
            )
            assert end < width, "a row outlived its budget"
            tokens_NT[rows_R, end] = next_R
            ended = []
            for i, token, logp in zip(rows, next_R.tolist(), logp_R.tolist()):
                generated[i].append(token)
                logprobs[i].append(logp)
                reasons[i] = stop.check(generated[i], budgets[i])
                if reasons[i] is not None:
                    ended.append(i)
            slots.finish(ended, context.key_value_memory_dict, columns=end)
            if not slots.running and not slots.waiting:
                return list(zip(generated, logprobs, reasons))
            end += 1

    def _forward(self, inputs, rows: list[int], start: int, end: int):
        """megatron's forward of columns [start, end) for these rows of the batch (in this order:
        KV slots batch_size_offset on)."""
        window = self.wrapper.get_batch_for_context_window(inputs, start, end)
        index = torch.tensor(rows, device=window["tokens"].device)
        window = dict(window, tokens=window["tokens"][index], position_ids=window["position_ids"][index])
        return self.wrapper.run_one_forward_step(window)

    # -- model state around generation --------------------------------------------------------------

    @contextlib.contextmanager
    def _inference_state(self):
        """``generation_mode`` around the whole call, and the KV cache dropped after it."""
        with generation_mode(self.model):
            try:
                yield
            finally:
                self.wrapper.inference_context = self._context_cls(1, 1)


class _Slots:
    """Which row of the batch each KV-cache slot holds (the batch dimension of megatron's static
    cache). Megatron reads a contiguous slot range, so: the rows waiting for their first step at
    the front, the next to start last (``next_waiting``, at ``first - 1``); the running rows from
    ``first`` on; free slots after them. A row starts by moving ``first`` down one; a row that
    ends gives its slot to the last running row (one row's KV copied), so nothing is copied for
    the rows that go on and no slot is computed for a row that has ended."""

    def __init__(self, start_order: Sequence[int]):
        self.rows = list(reversed(start_order))
        self.first = len(self.rows)
        self._running = 0

    @property
    def running(self) -> list[int]:
        return self.rows[self.first : self.first + self._running]

    @property
    def waiting(self) -> int:
        return self.first

    @property
    def next_waiting(self) -> int:
        return self.rows[self.first - 1]

    def start_next(self) -> None:
        self.first -= 1
        self._running += 1

    def finish(self, ended: Sequence[int], kv_cache: dict, *, columns: int) -> None:
        """Drop the running rows ``ended``; ``kv_cache``: megatron's ``key_value_memory_dict``
        (layer -> (keys, values), each [columns, slots, ...]) whose first ``columns`` columns of
        the moved rows are copied."""
        slot_of = {row: self.first + k for k, row in enumerate(self.running)}
        for slot in sorted((slot_of[row] for row in ended), reverse=True):
            last = self.first + self._running - 1
            if slot != last:
                for cache in kv_cache.values():
                    for buffer in cache:
                        buffer[:columns, slot] = buffer[:columns, last]
                self.rows[slot] = self.rows[last]
            self._running -= 1
