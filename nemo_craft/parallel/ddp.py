"""megatron's DistributedDataParallel, (distributed) optimizer and lr schedule for model chunks.

model = wrap_ddp(chunks, parallel_cfg)
optimizer, scheduler = build_optimizer(model, OptimConfig(lr=1e-6), parallel_cfg, total_steps=150)
"""

from __future__ import annotations

import torch

from nemo_craft.parallel.config import OptimConfig

__all__ = ["wrap_ddp", "build_optimizer", "grads_are_finite"]


def wrap_ddp(chunks: list, parallel_cfg) -> list:
    """Wrap each chunk in megatron's DDP (fp32 gradient buffers, reduced over DP x CP)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel_cfg.overlap_grad_reduce,
        overlap_param_gather=parallel_cfg.overlap_param_gather,
        use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        wrapped.append(
            DistributedDataParallel(
                config=chunk.config,
                ddp_config=ddp_cfg,
                module=chunk,
                # Megatron-LM turns bucketing off for all but the first VPP chunk: their grads are
                # ready only at the very end of the backward pass anyway.
                disable_bucketing=i > 0,
            )
        )
    _hand_sync_to_schedule(wrapped)
    return wrapped


def _hand_sync_to_schedule(wrapped: list) -> None:
    """Give megatron's schedules the DDP chunks' gradient-sync controls, as Megatron-LM's
    ``train()`` does. With ``overlap_grad_reduce`` the bucket reduce is started by gradient
    hooks; only ``no_sync_func`` tells them which micro-batch is the last, so without it a
    bucket is reduced as soon as its first micro-batch's gradients are in, and the later
    micro-batches add to a buffer already being reduced (wrong gradients whenever a step has
    more than one micro-batch; silently different ones when the count changes between steps).
    ``grad_sync_func`` lets the pipelined schedules start a chunk's reduce after its last
    backward. The parameter all-gather of ``overlap_param_gather`` stays on DDP's forward
    pre-hooks (Megatron-LM's default without ``--align-param-gather``)."""
    config = wrapped[0].config
    if not wrapped[0].ddp_config.overlap_grad_reduce:
        config.no_sync_func = config.grad_sync_func = None
        return

    def one_or_list(fns):
        return fns[0] if len(fns) == 1 else fns

    config.no_sync_func = one_or_list([chunk.no_sync for chunk in wrapped])
    config.grad_sync_func = one_or_list([chunk.start_grad_sync for chunk in wrapped])


def grads_are_finite(model: list, device: torch.device) -> torch.Tensor:
    """[] float32 on ``device``: 1 when every gradient this rank holds (the DDP buffers) is
    finite, else 0. The caller reduces it (MIN) over the ranks with its own flags in one
    collective. Megatron's bf16 / fp32 optimizers have no such check (only the fp16 loss
    scaler looks for inf), and clipping by a NaN norm scales nothing: Adam would write NaN into
    every weight."""
    finite = torch.ones((), dtype=torch.bool, device=device)
    for chunk in model:
        for buffer in list(chunk.buffers) + list(chunk.expert_parallel_buffers):
            finite &= torch.isfinite(buffer.grad_data).all()
    return finite.float()


def build_optimizer(model: list, cfg: OptimConfig, parallel_cfg, total_steps: int):
    """megatron's optimizer (distributed when ``parallel_cfg`` says so) and its lr schedule."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    mc = model[0].config
    opt_cfg = OptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=min(cfg.min_lr, cfg.lr),
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad,
        bf16=mc.params_dtype == torch.bfloat16,
        params_dtype=mc.params_dtype,
        use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
        overlap_param_gather=parallel_cfg.overlap_param_gather,
    )
    optimizer = get_megatron_optimizer(opt_cfg, model)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=cfg.lr if cfg.lr_warmup_steps == 0 else 0.0,
        max_lr=cfg.lr,
        min_lr=min(cfg.min_lr, cfg.lr),
        lr_warmup_steps=cfg.lr_warmup_steps,
        lr_decay_steps=max(total_steps, cfg.lr_warmup_steps + 1),
        lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=max(total_steps, 1),
        wd_incr_style="constant",
    )
    return optimizer, scheduler
