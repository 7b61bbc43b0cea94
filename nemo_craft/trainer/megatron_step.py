"""One adapter between the project's per-token losses and megatron's pipeline schedules.

megatron's ``forward_step_calc_loss`` scales what a loss function returns by its tuple shape; this
module owns that contract, once: training returns each micro-batch's loss sum and token count
(``calculate_per_token_loss=True``), so the gradient is the global token mean
(docs/algorithm.md#sdar-the-baseline-loss) whatever the split into ranks and micro-batches;
forward-only passes return per-token values, broadcast from the last pipeline stage. The contract,
the micro-batch dicts, packed micro-batches and context parallel:
docs/design.md#the-loss-contract-with-megatron.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from nemo_craft.parallel.context_parallel import gather_sequence, split_micro_batch

__all__ = ["forward_only", "forward_backward", "LossFn", "ForwardFn"]

# loss_fn(micro_batch, logits [b, s, V/TP]) -> (sum of per-token losses [], num tokens [], metrics)
LossFn = Callable[[dict, torch.Tensor], tuple]
# value_fn(micro_batch, logits [b, s, V/TP]) -> per-token values [b, s] (detached)
ForwardFn = Callable[[dict, torch.Tensor], torch.Tensor]


def _model_forward(model, mb: dict) -> torch.Tensor:
    """The logits of a micro-batch (of this CP rank's part of it)."""
    return model(mb["input_ids"], mb["position_ids"], None, packed_seq_params=mb.get("packed_seq_params"))


def _schedule_args(model_chunks, micro_batches: Sequence[dict]) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    b, s = micro_batches[0]["input_ids"].shape
    for i, mb in enumerate(micro_batches):
        if tuple(mb["input_ids"].shape) != (b, s):
            raise ValueError(
                f"micro-batch {i} has shape {tuple(mb['input_ids'].shape)}, micro-batch 0 has {(b, s)}: "
                "the pipeline schedule needs one shape; pad the step's sequences to one length"
            )
    n_chunks = len(model_chunks)
    iterators = [iter(micro_batches) for _ in range(n_chunks)]  # one per VPP chunk
    return dict(
        forward_backward_func=get_forward_backward_func(),
        data_iterator=iterators if n_chunks > 1 else iterators[0],
        model=list(model_chunks) if n_chunks > 1 else model_chunks[0],
        num_microbatches=len(micro_batches),
        seq_length=s,
        micro_batch_size=b,
    )


def forward_only(
    model_chunks: Sequence[torch.nn.Module], micro_batches: Sequence[dict], value_fn: ForwardFn
) -> torch.Tensor:
    """Per-token values ``[n_mb * b, s]`` of a no-grad pass, on every rank of the pipeline."""
    from megatron.core import parallel_state as ps

    def forward_step(data_iterator, model):
        mb = split_micro_batch(next(data_iterator))
        output = _model_forward(model, mb)
        return output, partial(_value_loss, mb)

    def _value_loss(mb, logits):
        values = value_fn(mb, logits).detach()
        return torch.zeros((), device=logits.device), {"values": values}

    args = _schedule_args(model_chunks, micro_batches)
    fb = args.pop("forward_backward_func")
    for chunk in model_chunks:
        chunk.eval()
    try:
        with torch.no_grad():
            outputs = fb(forward_step_func=forward_step, forward_only=True, **args)
    finally:
        for chunk in model_chunks:
            chunk.train()
    b, s = micro_batches[0]["input_ids"].shape
    s_local = s // ps.get_context_parallel_world_size()  # this CP rank's columns
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        values = torch.cat([o["values"] for o in outputs], dim=0).float()
    else:
        values = torch.empty(
            len(micro_batches) * b, s_local, dtype=torch.float32, device=micro_batches[0]["input_ids"].device
        )
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(
            values, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    return gather_sequence(values, dim=1)  # [n_mb * b, S] at any CP size


def forward_backward(
    model_chunks: Sequence[torch.nn.Module], micro_batches: Sequence[dict], loss_fn: LossFn, optimizer=None
) -> tuple[torch.Tensor, list[dict]]:
    """Forward and backward over the micro-batches; gradients end as the global token mean.

    Returns the token-mean loss (all-reduced over DP, broadcast over PP, the same on every rank)
    and the metrics dicts of the last pipeline stage (empty elsewhere): one per micro-batch, or per
    sequence of a packed micro-batch (each from one ``loss_fn`` call).
    Needs ``config.calculate_per_token_loss=True`` on the model (see module docstring).
    ``optimizer``: its ``zero_grad`` runs first, as Megatron-LM's train step does: after a step
    the fp32 optimizer leaves ``param.grad`` aliasing ``main_grad``, and a backward into that
    alias would add this step's gradient twice.
    """
    from megatron.core import parallel_state as ps

    config = model_chunks[0].config
    if not config.calculate_per_token_loss:
        raise ValueError(
            "forward_backward needs the model built with calculate_per_token_loss=True "
            "(transformer_config_overrides); see nemo_craft.trainer.megatron_step"
        )

    def forward_step(data_iterator, model):
        mb = split_micro_batch(next(data_iterator))
        return _model_forward(model, mb), partial(_train_loss, mb)

    def _train_loss(mb, logits):
        if "pack" not in mb:
            loss_sum, num_tokens, metrics = loss_fn(mb, logits)
            metrics = dict(metrics, loss_sum=loss_sum.detach().float(), num_tokens=num_tokens)
            return loss_sum, num_tokens.to(torch.int), metrics
        per_seq, loss_sum, num_tokens = [], 0, 0
        for mb_i, logits_i in mb["pack"].sequences(mb, logits):
            loss_i, tokens_i, metrics_i = loss_fn(mb_i, logits_i)
            per_seq.append(dict(metrics_i, loss_sum=loss_i.detach().float(), num_tokens=tokens_i))
            loss_sum, num_tokens = loss_sum + loss_i, num_tokens + tokens_i
        return loss_sum, num_tokens.to(torch.int), {"sequences": per_seq}

    args = _schedule_args(model_chunks, micro_batches)
    fb = args.pop("forward_backward_func")
    for chunk in model_chunks:
        if hasattr(chunk, "zero_grad_buffer"):
            chunk.zero_grad_buffer()
    if optimizer is not None:
        optimizer.zero_grad()
    outputs = fb(forward_step_func=forward_step, forward_only=False, **args)
    outputs = [m for o in outputs for m in o.get("sequences", [o])]  # a pack's metrics, per sequence
    device = micro_batches[0]["input_ids"].device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        for o in outputs:
            totals[0] += o["loss_sum"].double()
            totals[1] += float(o["num_tokens"])
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(
            totals, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    torch.distributed.all_reduce(totals, group=ps.get_data_parallel_group(with_context_parallel=True))
    loss = (totals[0] / totals[1].clamp(min=1)).float()
    return loss, list(outputs) if ps.is_pipeline_last_stage(ignore_virtual=True) else []


def target_logprobs_fn() -> ForwardFn:
    """A value_fn giving log pi(target) per token ``[b, s]`` from vocab-sharded logits."""
    from megatron.core import tensor_parallel

    def value_fn(mb: dict, logits: torch.Tensor) -> torch.Tensor:
        # vocab_parallel_cross_entropy takes [s, b, V/TP] or [b, s, V/TP] alike (last dim vocab)
        return -tensor_parallel.vocab_parallel_cross_entropy(logits.float(), mb["targets"])

    return value_fn
