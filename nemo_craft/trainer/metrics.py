"""A step's metrics, reduced once: the micro-batches' loss terms summed on the device and read in
one host sync, taken from the last pipeline stage, added over data x context parallel, and the
episodes' means over the data-parallel ranks. Every name is listed in docs/design.md."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from nemo_craft.parallel.reductions import reduce_named

__all__ = ["EPISODE_FIELDS", "read_on_host", "from_last_stage", "episode_means", "loss_terms"]

EPISODE_FIELDS = {
    "reward": lambda t: t.reward,
    "success": lambda t: float(t.success),
    "score": lambda t: t.score,
    "turns": lambda t: t.num_turns,
    "invalid": lambda t: t.n_invalid,
}
"""Per-episode numbers averaged over the data-parallel ranks' episodes, by name."""


def read_on_host(*named: dict) -> list[dict]:
    """The dicts of 0-d tensors as dicts of floats, read in one host sync (once per step)."""
    keys = [(i, k) for i, d in enumerate(named) for k in sorted(d)]
    values = torch.stack([named[i][k].double().reshape(()) for i, k in keys]).tolist() if keys else []
    out = [{} for _ in named]
    for (i, k), v in zip(keys, values):
        out[i][k] = v
    return out


def from_last_stage(obj):
    """``obj`` of the last pipeline stage (which alone computed the loss) on every stage."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(
        box, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
    )
    return box[0]


def episode_means(trajs, fields: tuple[str, ...], dp_group, device) -> dict[str, float]:
    """Means over every data-parallel rank's episodes of the named per-episode fields (and
    "episodes": how many there were)."""
    local = {f: sum(EPISODE_FIELDS[f](t) for t in trajs) for f in fields}
    total = reduce_named(dict(local, episodes=len(trajs)), dp_group, device=device)
    return dict({f: total[f] / total["episodes"] for f in fields}, episodes=total["episodes"])


def loss_terms(mb_metrics: list[dict], loss_group, device, num_global_tokens: float) -> dict[str, float]:
    """The step's loss terms from its micro-batches' metrics: sums per global token (each
    context-parallel rank computed the loss on its part of the tokens, so they add over
    DP x CP: ``loss_group``), and the maxima."""
    sums, maxes = {}, {}  # device tensors: the micro-batches' metrics are added up without a host read
    for m in mb_metrics:
        for k, v in m.items():
            is_max = k == "rollout/logprob_diff_max" or (k.startswith("off_policy/") and k.endswith("_max"))
            if (k.startswith(("loss/", "off_policy/")) and not is_max) or k == "rollout/logprob_diff_mean":
                sums[k] = sums[k] + v if k in sums else v
            elif is_max:
                maxes[k] = torch.maximum(maxes[k], v) if k in maxes else v
    sums, maxes = read_on_host(sums, maxes)
    sums, maxes = from_last_stage((sums, maxes))
    totals = reduce_named(sums, loss_group, device=device)
    out = {k: v / max(float(num_global_tokens or 1), 1.0) for k, v in totals.items()}
    out.update(reduce_named(maxes, loss_group, op="max", device=device))
    return out
