"""The megatron-core fixes: settings and wrappers without which megatron-core gives wrong numbers,
or fails, with no error of ours (docs/megatron_notes.md). All apply on every machine, GPUs included:
the bugs are in megatron-core's schedules, gradient finalisation and distributed optimizer, not in
the CPU mode. One home, under ``parallel/`` (it needs megatron-core only, nothing of the models):

- bugs 1 and 2, model-config settings the schedules read: :func:`use_unbatched_p2p_for_interleaved_pipeline`,
  :func:`use_finalize_model_grads`, applied by ``nemo_craft.models.provider`` to every TransformerConfig;
- bug 3, the distributed optimizer's resume without TE or apex: :func:`apply_optimizer_fixes`,
  installed by the checkpoint manager
  (docs/megatron_notes.md#3-resuming-the-distributed-optimizer-without-te-or-apex);
- the mixture-of-experts layers without TE or on gloo: :func:`apply_moe_fixes`, installed by
  ``nemo_craft.models.provider`` when a model has experts (docs/moe.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = [
    "use_unbatched_p2p_for_interleaved_pipeline",
    "use_finalize_model_grads",
    "apply_optimizer_fixes",
    "remove_optimizer_fixes",
    "optimizer_fixes_applied",
    "init_empty_adam_state",
    "give_each_param_its_own_step",
    "apply_moe_fixes",
]

# -- bugs 1 and 2: model-config settings --------------------------------------------------------


def use_unbatched_p2p_for_interleaved_pipeline(config) -> None:
    """Bug 1: the interleaved (virtual pipeline) 1F1B schedule at PP=2 with megatron-core's default
    ``batch_p2p_comm=True`` mismatches the forward and backward sends between the two ranks, and
    the losses of later micro-batches come out wrong. Megatron-LM's argument checks force
    ``overlap_p2p_comm=True, batch_p2p_comm=False`` for any virtual pipeline; megatron-core does
    not. Set the same here whenever VPP is on (PP=4 is correct either way; this keeps one rule).
    ``config`` is the model's TransformerConfig, which the schedules read.
    """
    if config.virtual_pipeline_model_parallel_size is not None and config.pipeline_model_parallel_size > 1:
        config.overlap_p2p_comm = True
        config.batch_p2p_comm = False


def use_finalize_model_grads(config) -> None:
    """Bug 2: without ``config.finalize_model_grads_func``, the schedules never all-reduce the
    gradients of parameters replicated over TP whose gradients are partial per rank: the norm
    weights under sequence parallel (marked ``sequence_parallel``), Qwen3's q/k norm weights,
    and the tied embedding copies across pipeline stages. The replicas then drift apart across
    ranks. ``finalize_model_grads`` does those reductions (plus the data-parallel one) at the end
    of ``forward_backward_func``; it needs the model chunks wrapped in megatron's
    DistributedDataParallel, which the trainer does.
    """
    from megatron.core.distributed import finalize_model_grads

    config.finalize_model_grads_func = finalize_model_grads


# -- mixture of experts ---------------------------------------------------------------------------

_MOE_FIXED = False


def _split_sizes_as_ints(all_to_all: Callable) -> Callable:
    """The all-to-all token dispatcher passes its split sizes as numpy arrays (moved to the host
    for NCCL); ``torch.distributed.all_to_all_single`` on gloo takes only a list of Python ints."""

    @functools.wraps(all_to_all)
    def all_to_all_with_int_splits(group, input_, output_split_sizes=None, input_split_sizes=None):
        def as_ints(sizes):
            return None if sizes is None else [int(n) for n in sizes]

        return all_to_all(group, input_, as_ints(output_split_sizes), as_ints(input_split_sizes))

    return all_to_all_with_int_splits


def _is_gloo(group) -> bool:
    import torch.distributed as dist

    return dist.get_backend(group) == "gloo"


def _uneven_gather_on_gloo(gather: Callable) -> Callable:
    """gloo's all_gather takes equal sizes only; the dispatcher gathers uneven token counts over
    the expert-tensor-parallel group. Pad every rank's rows to the largest, gather, cut."""

    @functools.wraps(gather)
    def gather_along_first_dim(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or group.size() == 1 or not _is_gloo(group):
            return gather(input_, group, output_split_sizes, use_global_buffer)
        import torch.distributed as dist

        sizes = [int(n) for n in output_split_sizes]
        padded_RH = input_.new_zeros((max(sizes), *input_.shape[1:]))
        padded_RH[: input_.shape[0]] = input_
        parts = [torch.empty_like(padded_RH) for _ in sizes]
        dist.all_gather(parts, padded_RH.contiguous(), group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)

    return gather_along_first_dim


def _uneven_reduce_scatter_on_gloo(reduce_scatter: Callable) -> Callable:
    """gloo has no reduce_scatter of uneven splits: all-reduce the whole tensor and keep this
    rank's rows (more traffic, the same sum)."""

    @functools.wraps(reduce_scatter)
    def reduce_scatter_along_first_dim(input_, group, input_split_sizes=None, use_global_buffer=False):
        if input_split_sizes is None or group.size() == 1 or not _is_gloo(group):
            return reduce_scatter(input_, group, input_split_sizes, use_global_buffer)
        import torch.distributed as dist

        summed = input_.contiguous().clone()
        dist.all_reduce(summed, group=group)
        sizes = [int(n) for n in input_split_sizes]
        start = sum(sizes[: group.rank()])
        return summed[start : start + sizes[group.rank()]].clone()

    return reduce_scatter_along_first_dim


def apply_moe_fixes() -> None:
    """Make megatron-core's MoE layers run without Transformer Engine and on gloo (idempotent;
    both are no-ops where TE and NCCL are used):

    - ``moe_utils`` names ``te_general_gemm`` only when TE imports, and the router's gating
      linear reads it unconditionally (NameError): define it as None, megatron's own "absent";
    - the all-to-all dispatcher's split sizes become Python ints (:func:`_split_sizes_as_ints`);
    - with expert tensor parallel, its uneven gather and reduce-scatter over the ETP group run on
      gloo (:func:`_uneven_gather_on_gloo`, :func:`_uneven_reduce_scatter_on_gloo`).
    """
    global _MOE_FIXED
    if _MOE_FIXED:
        return
    from megatron.core.tensor_parallel import mappings
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    token_dispatcher.all_to_all = _split_sizes_as_ints(token_dispatcher.all_to_all)
    mappings._gather_along_first_dim = _uneven_gather_on_gloo(mappings._gather_along_first_dim)
    mappings._reduce_scatter_along_first_dim = _uneven_reduce_scatter_on_gloo(mappings._reduce_scatter_along_first_dim)
    _MOE_FIXED = True


# -- bug 3: the distributed optimizer's resume -------------------------------------------------

# method name on DistributedOptimizer -> the original function (filled while the fixes are on)
_ORIGINALS: dict[str, Callable] = {}


def _is_torch_adam(inner: object) -> bool:
    return isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))


def init_empty_adam_state(optimizer) -> bool:
    """Fix 1. Give a torch Adam/AdamW inside ``optimizer`` (a megatron ``DistributedOptimizer``)
    the state its first ``step()`` would create, when it has none yet: per parameter
    ``step = 0`` (its own scalar tensor, on the device torch's Adam puts it) and zero
    ``exp_avg``/``exp_avg_sq`` like the (fp32 main) parameter.

    Needed before ``sharded_state_dict`` on a fresh optimizer because megatron's
    ``DistributedOptimizer.state_dict`` asserts that exactly one step value exists. The values
    are what Adam starts from, so an optimizer initialised this way and never loaded still
    steps exactly like an untouched one. Returns whether anything was initialised.
    """
    inner = optimizer.optimizer
    if not _is_torch_adam(inner) or len(inner.state) > 0:
        return False
    from torch.optim.optimizer import _get_scalar_dtype

    for group in inner.param_groups:
        on_device = group.get("capturable", False) or group.get("fused", False)
        for param in group["params"]:
            step = (
                torch.zeros((), dtype=_get_scalar_dtype(), device=param.device)
                if on_device
                else torch.tensor(0.0, dtype=_get_scalar_dtype())
            )
            inner.state[param] = {
                "step": step,
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            }
    return True


def give_each_param_its_own_step(optimizer) -> int:
    """Fix 3. Replace a ``state["step"]`` tensor that several parameters share by a private
    copy per parameter (same value, dtype and device). Returns how many were copied.

    megatron's ``DistributedOptimizer.load_state_dict`` assigns one step tensor to every
    parameter; torch's Adam increments ``state["step"]`` in place once per parameter, so a
    shared tensor advances by the number of parameters per ``step()``.
    """
    seen: set[int] = set()
    copied = 0
    for state in optimizer.optimizer.state.values():
        step = state.get("step")
        if not isinstance(step, torch.Tensor):
            continue
        if id(step) in seen:
            state["step"] = step.detach().clone()
            copied += 1
        seen.add(id(step))
    return copied


def _sharded_state_dict(original: Callable) -> Callable:
    """``DistributedOptimizer.sharded_state_dict`` after :func:`init_empty_adam_state` (fix 1)."""

    @functools.wraps(original)
    def sharded_state_dict(self, *args, **kwargs):
        init_empty_adam_state(self)
        return original(self, *args, **kwargs)

    return sharded_state_dict


def _load_state_dict(original: Callable) -> Callable:
    """``DistributedOptimizer.load_state_dict`` followed by :func:`give_each_param_its_own_step`
    (fix 3). Covers both megatron's own call in ``sharded_state_dict(is_loading=True)`` and
    the caller's load of the checkpoint."""

    @functools.wraps(original)
    def load_state_dict(self, state_dict):
        result = original(self, state_dict)
        give_each_param_its_own_step(self)
        return result

    return load_state_dict


def _load_parameter_state_from_fully_reshardable(original: Callable) -> Callable:
    """Fix 2. ``DistributedOptimizer.load_parameter_state_from_fully_reshardable`` with the
    live ``state["step"]`` entries set aside while it runs, so that
    ``_set_main_param_and_optimizer_states`` copies only what the checkpoint holds per
    parameter (main param, ``exp_avg``, ``exp_avg_sq``). The step itself was already restored
    from the checkpoint's param groups by ``load_state_dict``; it is put back unchanged."""

    @functools.wraps(original)
    def load_parameter_state_from_fully_reshardable(self, state_dict):
        states = self.optimizer.state
        steps = {param: state.pop("step") for param, state in states.items() if "step" in state}
        try:
            return original(self, state_dict)
        finally:
            for param, step in steps.items():
                states[param]["step"] = step

    return load_parameter_state_from_fully_reshardable


_WRAPPERS = {
    "sharded_state_dict": _sharded_state_dict,
    "load_state_dict": _load_state_dict,
    "load_parameter_state_from_fully_reshardable": _load_parameter_state_from_fully_reshardable,
}


def apply_optimizer_fixes() -> None:
    """Install fixes 1-3 on megatron's ``DistributedOptimizer`` class (idempotent). Call once
    per process before building or loading an optimizer; the checkpoint manager does."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if _ORIGINALS:
        return
    for name, wrap in _WRAPPERS.items():
        original = getattr(DistributedOptimizer, name)
        _ORIGINALS[name] = original
        setattr(DistributedOptimizer, name, wrap(original))


def remove_optimizer_fixes() -> None:
    """Restore megatron's original methods (for tests that show the bug)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for name, original in _ORIGINALS.items():
        setattr(DistributedOptimizer, name, original)
    _ORIGINALS.clear()


def optimizer_fixes_applied() -> bool:
    return bool(_ORIGINALS)
