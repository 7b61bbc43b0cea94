"""Rank bodies for test_layouts.py: one model, one batch, every parallel layout."""

import torch
import torch.distributed as dist

SEQ, MB, N_MB = 32, 2, 4  # 4 micro-batches of [2, 32] tokens per data-parallel rank


def global_batch(vocab: int, dp: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, vocab, (dp * N_MB * MB, SEQ + 1), generator=g)


def _micro_batches(tokens: torch.Tensor, dp_rank: int) -> list[dict]:
    pos = torch.arange(SEQ).unsqueeze(0).expand(MB, -1)
    mask = torch.ones(MB, SEQ)
    mask[:, :4] = 0  # a masked prompt, as in RL
    mine = tokens[dp_rank * N_MB * MB : (dp_rank + 1) * N_MB * MB]
    return [
        dict(
            input_ids=mine[i * MB : (i + 1) * MB, :-1],
            targets=mine[i * MB : (i + 1) * MB, 1:],
            position_ids=pos,
            loss_mask=mask,
        )
        for i in range(N_MB)
    ]


def _ce_loss(mb, logits):
    from megatron.core import tensor_parallel

    nll = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), mb["targets"])
    return (nll * mb["loss_mask"]).sum(), mb["loss_mask"].sum(), {}


def _gather_fc2_grad(model) -> torch.Tensor | None:
    """Layer 0's linear_fc2 weight gradient, gathered over TP (row-parallel: dim 1)."""
    from megatron.core import parallel_state as ps

    chunk = model[0].module
    if not ps.is_pipeline_first_stage(ignore_virtual=True):
        return None
    param = chunk.decoder.layers[0].mlp.linear_fc2.weight
    grad = param.main_grad.detach().clone()
    parts = [torch.empty_like(grad) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, grad, group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=1)


def train_one_step(
    hf_dir: str, distributed_optimizer: bool = False, disable_fixes: bool = False, recompute: str | None = None
):
    """Loss, a gathered gradient and the target log-probs after one Adam step."""
    from megatron.core import parallel_state as ps

    from nemo_craft.models.config import ModelConfig
    from nemo_craft.models.hf import load_hf_weights
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import OptimConfig, ParallelConfig
    from nemo_craft.parallel.ddp import build_optimizer, wrap_ddp
    from nemo_craft.testing.distributed import current_layout
    from nemo_craft.trainer.megatron_step import forward_backward, forward_only, target_logprobs_fn

    lay = current_layout()
    pcfg = ParallelConfig(
        tensor_model_parallel_size=lay.tp,
        pipeline_model_parallel_size=lay.pp,
        virtual_pipeline_model_parallel_size=lay.vpp,
        sequence_parallel=lay.sp,
        use_distributed_optimizer=distributed_optimizer,
        recompute_granularity=recompute,
    )
    mcfg = ModelConfig.from_hf_config(hf_dir)
    chunks = build_model(mcfg, pcfg, transformer_config_overrides={"calculate_per_token_loss": True})
    if disable_fixes:  # reproduce megatron-core 0.16.1's defaults, to show the fixes matter
        for c in chunks:
            c.config.batch_p2p_comm, c.config.overlap_p2p_comm = True, False
            c.config.finalize_model_grads_func = None
    load_hf_weights(chunks, mcfg, hf_dir)
    model = wrap_ddp(chunks, pcfg)
    if disable_fixes:
        for c in model:  # without SP's layer-norm grad all-reduce but with DP's grad sync
            c.config.finalize_model_grads_func = lambda m, num_tokens=None, **_: _dp_only_finalize(m, num_tokens)
    # Adam's first step moves every parameter by about lr * sign(grad): with the default eps a
    # gradient that is 0 in one layout and reduction noise (1e-10) in another would move by lr.
    # eps = 1e-6 keeps noise-level gradients still and real ones (>= 1e-4) moving by ~lr.
    optim = OptimConfig(lr=1e-3, min_lr=0.0, lr_decay_style="constant", adam_eps=1e-6, clip_grad=1.0)
    optimizer, scheduler = build_optimizer(model, optim, pcfg, total_steps=10)
    mbs = _micro_batches(global_batch(mcfg.vocab_size, lay.dp), ps.get_data_parallel_rank())
    loss, _ = forward_backward(model, mbs, _ce_loss)
    grad = None if distributed_optimizer else _gather_fc2_grad(model)
    ok, grad_norm, _ = optimizer.step()
    scheduler.step(1)
    logp_after = forward_only(model, mbs, target_logprobs_fn())
    norms = _layernorm_weights(model)
    return dict(
        loss=loss.item(),
        grad=grad,
        grad_norm=float(grad_norm),
        ok=ok,
        logp=logp_after,
        dp_rank=ps.get_data_parallel_rank(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        norms=norms,
    )


def _dp_only_finalize(model, num_tokens):
    """finalize_model_grads without the TP all-reduce of sequence-parallel norm grads."""
    from megatron.core import parallel_state as ps

    for c in model:
        c.finish_grad_sync()
    if num_tokens is not None:
        dist.all_reduce(num_tokens, group=ps.get_data_parallel_group(with_context_parallel=True))
        for c in model:
            c.scale_gradients(1.0 / num_tokens)


def _layernorm_weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for c in model for n, p in c.named_parameters() if "layernorm" in n])
