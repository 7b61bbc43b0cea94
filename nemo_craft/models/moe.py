"""Routing of a mixture-of-experts model across passes: routing replay (R2), top-k agreement and
expert load.

    routing = Routing(chunks, model_cfg)
    with routing.record():          # the old-log-prob pass: each router's top-k indices, in call order
        forward_only(...)
    with routing.replay():          # the reference pass, the training forward: the recorded experts
        forward_backward(...)
    routing.metrics()               # moe/tokens_per_expert_*, moe/topk_agreement (replay off)

Why: the same token can be sent to different experts by two passes over the same weights (a
near tie, another kernel, a changed router), and then its log-probs disagree; RL's importance
ratio reads that as a policy change. R2 replays the old pass's experts, so the ratio of an
unchanged policy is exactly 1.

The routers are found in *this model's* modules (``mlp.router`` of every MoE layer, in layer
order) and each router's own megatron ``RouterReplay`` (``router.router_replay``) is driven, not
megatron's process-wide ``RouterReplay.global_router_replay_instances`` list, which keeps the
routers of every model ever built (the reference copy, a rebuilt model) and would feed
recorded routes to stale instances. Recorded indices are kept per router as a queue, one entry
per forward call (one per micro-batch), and each replay consumes a copy of all of them in the
same order; a replay that does not consume exactly what was recorded, or whose token count
differs, raises instead of routing silently.

Replay gathers the router's *current* scores at the recorded indices (megatron's
``REPLAY_FORWARD``), so gradients flow through the replayed experts' scores.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

__all__ = ["Routing", "routers", "replay_supported"]


def replay_supported() -> bool:
    """Whether the installed megatron-core has ``RouterReplay`` (routing replay)."""
    try:
        from megatron.core.transformer.moe import router_replay  # noqa: F401
    except ImportError:
        return False
    return True


def routers(chunks) -> list:
    """The MoE routers of ``chunks`` (megatron ``TopKRouter``), in global layer order."""
    from megatron.core.transformer.moe.router import TopKRouter

    found = []
    for chunk in chunks:
        for layer in chunk.decoder.layers:
            router = getattr(layer.mlp, "router", None)
            if isinstance(router, TopKRouter):
                found.append((layer.layer_number, router))
    return [router for _, router in sorted(found, key=lambda item: item[0])]


class Routing:
    """Record, replay and measure the routing of one model's routers (see the module doc)."""

    def __init__(self, chunks, model_cfg):
        self.routers = routers(chunks)
        self.num_experts = model_cfg.num_experts
        self.replay_enabled = model_cfg.moe_routing_replay == "r2"
        if self.replay_enabled and any(r.router_replay is None for r in self.routers):
            raise ValueError(
                "model.moe_routing_replay=r2 but the routers were built without megatron's RouterReplay "
                "(moe_enable_routing_replay); build the model with nemo_craft.models.provider"
            )
        self.recorded: list[list[torch.Tensor]] = [[] for _ in self.routers]
        """Per router, the top-k indices ``[tokens, k]`` of each forward call of the last record."""
        self.recorded_maps: list[list[torch.Tensor]] = [[] for _ in self.routers]
        """Per router, the routing maps ``[tokens, E]`` (bool) of the last record."""
        self._load_E: Optional[torch.Tensor] = None
        self._agree: list[float] = [0.0, 0.0]  # tokens whose top-k set agrees, tokens compared

    # ---------------------------------------------------------------- record / replay

    @contextlib.contextmanager
    def record(self):
        """Record every router's choices during the block (replacing the previous record)."""
        from megatron.core.transformer.moe.router_replay import RouterReplayAction

        self.recorded = [[] for _ in self.routers]
        self.recorded_maps = [[] for _ in self.routers]

        def hook(i):
            def after_forward(router, args, output):
                self.recorded_maps[i].append(output[1].detach())
                if router.router_replay is not None:
                    self.recorded[i].append(router.router_replay.get_recorded_indices().detach())

            return after_forward

        handles = [r.register_forward_hook(hook(i)) for i, r in enumerate(self.routers)]
        for r in self.routers:
            if r.router_replay is not None:
                r.router_replay.set_router_replay_action(RouterReplayAction.RECORD)
        try:
            yield self
        finally:
            self._release(handles)

    @contextlib.contextmanager
    def replay(self, *, measure: bool = False):
        """Route the block's forward calls to the recorded experts (with replay on), or, with
        replay off, leave routing alone and, with ``measure``, count how many tokens' top-k set
        agrees with the record and the tokens per expert."""
        if not self.replay_enabled:
            with self._measure(measure):
                yield self
            return
        from megatron.core.transformer.moe.router_replay import RouterReplayAction

        queues = [list(q) for q in self.recorded]
        if not any(queues):
            raise RuntimeError("routing replay: nothing was recorded; run the old-log-prob pass under record() first")

        def pre_hook(i):
            def before_forward(router, args):
                if not queues[i]:
                    raise RuntimeError(
                        f"routing replay: router {i} is called more often than in the recorded pass "
                        f"({len(self.recorded[i])} calls); the replayed pass must split its micro-batches as the "
                        "recorded one did"
                    )
                target_TK = queues[i].pop(0)
                tokens = args[0].numel() // args[0].shape[-1]  # hidden states [s, b, h]
                if tokens != target_TK.shape[0]:
                    raise RuntimeError(
                        f"routing replay: router {i} routes {tokens} tokens, the record has "
                        f"{target_TK.shape[0]}; the replayed pass must see the recorded tokens"
                    )
                router.router_replay.set_target_indices(target_TK)

            return before_forward

        handles = [r.register_forward_pre_hook(pre_hook(i)) for i, r in enumerate(self.routers)]
        for r in self.routers:
            r.router_replay.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
        try:
            with self._measure(measure):
                yield self
            left = [i for i, q in enumerate(queues) if q]
            if left:
                raise RuntimeError(
                    f"routing replay: routers {left} were called fewer times than recorded; the replayed pass "
                    "must run every recorded micro-batch"
                )
        finally:
            self._release(handles)

    def _release(self, handles) -> None:
        for h in handles:
            h.remove()
        for r in self.routers:
            if r.router_replay is not None:
                r.router_replay.clear_router_replay_action()
                r.router_replay.replay_backward_list = []

    # ---------------------------------------------------------------- measurements

    def measure(self):
        """Count the block's expert load and top-k agreement with the record, routing untouched."""
        return self._measure(True)

    @contextlib.contextmanager
    def _measure(self, on: bool):
        if not on:
            yield
            return
        calls = [0] * len(self.routers)
        self._load_E = None
        self._agree = [0.0, 0.0]

        def hook(i):
            def after_forward(router, args, output):
                map_TE = output[1].detach()
                load_E = map_TE.sum(dim=0).double()
                self._load_E = load_E if self._load_E is None else self._load_E + load_E
                recorded = self.recorded_maps[i]
                if calls[i] < len(recorded) and recorded[calls[i]].shape == map_TE.shape:
                    same_T = (recorded[calls[i]] == map_TE).all(dim=-1)
                    self._agree[0] += float(same_T.sum())
                    self._agree[1] += float(same_T.numel())
                calls[i] += 1

            return after_forward

        handles = [r.register_forward_hook(hook(i)) for i, r in enumerate(self.routers)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def metrics(self, groups=()) -> dict:
        """Of the last measured pass, summed over ``groups`` (process groups whose ranks route
        different tokens or layers: data parallel, sequence-parallel TP, pipeline):
        ``moe/tokens_per_expert_max`` / ``_mean`` (summed over MoE layers), ``moe/load_max_over_mean``
        and, with replay off, ``moe/topk_agreement`` (share of tokens whose top-k set in the
        training forward equals the old-log-prob pass's). Collective over ``groups``."""
        import torch.distributed as dist

        load_E = self._load_E if self._load_E is not None else torch.zeros(self.num_experts, dtype=torch.float64)
        packed = torch.cat([load_E.cpu(), torch.tensor(self._agree, dtype=torch.float64)])
        for group in groups:
            dist.all_reduce(packed, group=group)
        load_E, (agree, compared) = packed[:-2], packed[-2:].tolist()
        mean = float(load_E.mean())
        out = {
            "moe/tokens_per_expert_max": float(load_E.max()),
            "moe/tokens_per_expert_mean": mean,
            "moe/load_max_over_mean": float(load_E.max()) / mean if mean > 0 else 0.0,
        }
        if not self.replay_enabled and compared > 0:
            out["moe/topk_agreement"] = agree / compared
        return out
