"""The static backend's earlier schedule, all rows in lockstep: the reference its results are
compared against (tests/distributed/test_static_schedule.py) and the baseline of
scripts/bench_rollout.py.

megatron's static-batching scheme as its ``TextGenerationController`` runs it: prompts
left-aligned, one prefill up to the shortest prompt, then one column per step for the whole
batch, where a row still inside its prompt feeds its next prompt token and a row past it feeds its
last sampled token; every row is computed until the batch's last row ends. Each step samples all
rows from one [B, V] draw (``torch.multinomial``'s), keeping the tokens of the rows that generate.
"""

from __future__ import annotations

import torch

from nemo_craft.parallel.cpu_mode import compute_device
from nemo_craft.rollout.backend_common import sample_and_share
from nemo_craft.rollout.static_backend import StaticBackend

__all__ = ["LockstepStaticBackend"]


class LockstepStaticBackend(StaticBackend):
    """``StaticBackend`` with the lockstep schedule (same constructor and ``generate``)."""

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
