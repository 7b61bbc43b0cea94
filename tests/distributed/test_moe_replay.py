"""Routing replay (R2) on a tiny random Qwen3-MoE at EP1 and EP2.

- weights unchanged: the replayed forward's logits equal the recorded pass's bit for bit;
- routers perturbed (the negative control first: without replay the routing changes): with replay
  the routing maps equal the recorded ones, and the router still gets a gradient through the
  replayed experts' scores; a second model built in the same process (megatron's process-wide
  registry of routers then holds both) does not disturb the first one's replay.
"""

from __future__ import annotations

import pytest
import torch

from nemo_craft.testing.distributed import run_distributed
from tests.distributed.test_models_hf import _portable
from tests.distributed.test_moe_hf import _parallel_cfg


def _forward(chunk, tokens_BS):
    positions = torch.arange(tokens_BS.shape[1]).unsqueeze(0)
    return chunk(tokens_BS, positions, None)


def body_replay(path: str, tokens_BS):
    from nemo_craft.models.hf import load_hf_model
    from nemo_craft.models.moe import Routing

    model_cfg, (chunk,) = load_hf_model(path, _parallel_cfg(), moe_routing_replay="r2")
    load_hf_model(path, _parallel_cfg(), moe_routing_replay="r2")  # a second model: more routers in megatron's registry
    chunk.eval()
    routing = Routing([chunk], model_cfg)
    with torch.no_grad(), routing.record():
        recorded = _forward(chunk, tokens_BS)
    recorded_maps = [q[0].clone() for q in routing.recorded_maps]
    with torch.no_grad(), routing.replay():
        replayed = _forward(chunk, tokens_BS)
    same_bits = torch.equal(recorded, replayed)

    # Perturb every router; without replay the routes change (else the check below proves nothing).
    with torch.no_grad():
        for router in routing.routers:
            router.weight.add_(torch.randn(router.weight.shape, generator=torch.Generator().manual_seed(0)) * 2.0)
    free = Routing([chunk], model_cfg)
    free.replay_enabled = False
    with torch.no_grad(), free.record():
        _forward(chunk, tokens_BS)
    changed = [not torch.equal(a, q[0]) for a, q in zip(recorded_maps, free.recorded_maps)]

    for router in routing.routers:
        router.weight.requires_grad_(True)
    seen_maps = []
    hooks = [r.register_forward_hook(lambda m, a, out: seen_maps.append(out[1].detach())) for r in routing.routers]
    with routing.replay():
        _forward(chunk, tokens_BS).float().pow(2).mean().backward()
    for h in hooks:
        h.remove()
    replay_maps_equal = [torch.equal(a, b) for a, b in zip(recorded_maps, seen_maps)]
    router_grads = [float(r.weight.grad.abs().sum()) for r in routing.routers]
    return _portable(
        dict(same_bits=same_bits, changed=changed, replay_maps_equal=replay_maps_equal, router_grads=router_grads)
    )


def body_replay_refuses_other_tokens(path: str, tokens_BS):
    from nemo_craft.models.hf import load_hf_model
    from nemo_craft.models.moe import Routing

    model_cfg, (chunk,) = load_hf_model(path, _parallel_cfg(), moe_routing_replay="r2")
    routing = Routing([chunk], model_cfg)
    with torch.no_grad(), routing.record():
        _forward(chunk, tokens_BS)
    try:
        with torch.no_grad(), routing.replay():
            _forward(chunk, tokens_BS[:, :-2])
    except RuntimeError as err:
        return str(err)
    return None


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    path = tmp_path_factory.mktemp("hf") / "qwen3_moe"
    return make_tiny_hf_checkpoint(str(path), "qwen3_moe", num_layers=2, head_dim=16)


TOKENS_BS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("ep", [1, 2])
def test_replay_is_exact_and_does_not_silently_do_nothing(ep, moe_checkpoint):
    for r in run_distributed(body_replay, world_size=ep, ep=ep, args=(moe_checkpoint, TOKENS_BS), timeout=300):
        assert r["same_bits"], "replayed forward differs from the recorded one with unchanged weights"
        assert all(r["changed"]), f"perturbed routers did not change the routing: {r['changed']}"
        assert all(r["replay_maps_equal"]), f"replay did not reproduce the recorded routes: {r['replay_maps_equal']}"
        assert all(g > 0 for g in r["router_grads"]), f"no gradient through the replayed scores: {r['router_grads']}"


def test_replay_of_other_tokens_is_refused(moe_checkpoint):
    (message,) = run_distributed(body_replay_refuses_other_tokens, world_size=1, args=(moe_checkpoint, TOKENS_BS))
    assert message is not None and "the record has" in message
