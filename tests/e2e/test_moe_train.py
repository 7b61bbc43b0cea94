"""Qwen3-MoE through ``torchrun -m nemo_craft train``: one RL step with expert parallel (EP2)
equals the same step at EP1 on the same two ranks to 1e-5 in fp32 (loss, gradient norm, every
loss term), starting from the same tiny random Hugging Face checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from tests.e2e import _launch

RTOL = 1e-5


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    path = tmp_path_factory.mktemp("hf") / "tiny_moe"
    return make_tiny_hf_checkpoint(
        str(path),
        "qwen3_moe",
        num_layers=4,
        hidden_size=128,
        intermediate_size=384,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=128,
        tied=True,
        moe_intermediate_size=64,
    )


def _overrides(path) -> list[str]:
    return [
        "model=from_hf",
        f"model.hf_path={path}",
        "model.tokenizer=char",
        "model.make_vocab_size_divisible_by=16",
        "trainer.max_steps=1",
        "checkpoint.save_every=0",
    ]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-8)


def test_ep2_step_equals_ep1(tiny_moe, tmp_path):
    rows = {}
    for ep in (1, 2):
        run = tmp_path / f"ep{ep}"
        _launch.train(2, run, [*_overrides(tiny_moe), f"parallel.expert_model_parallel_size={ep}"])
        (rows[ep],) = _launch.metrics(run)
    ep1, ep2 = rows[1], rows[2]
    assert sorted(ep1) == sorted(ep2)
    checked = [k for k in ep1 if k.startswith(("train/", "loss/", "credit/", "rollout/reward", "moe/"))]
    assert {"train/loss", "train/grad_norm", "loss/pg", "loss/entropy"} <= set(checked)
    for key in checked:
        assert _close(ep1[key], ep2[key]), f"{key}: EP1 {ep1[key]!r} vs EP2 {ep2[key]!r}"
    assert ep1["train/grad_norm"] > 0
    # Expert load of the training forward, and (replay off) how often its top-k set equals the old pass's.
    assert ep1["moe/tokens_per_expert_max"] >= ep1["moe/tokens_per_expert_mean"] > 0
    assert 0.0 <= ep1["moe/topk_agreement"] <= 1.0


STEPS = ["trainer.max_steps=2", "checkpoint.save_every=1", "checkpoint.keep_last=null"]


def test_stop_resume_at_ep2_bit_for_bit(tiny_moe, tmp_path):
    """Stopped after step 1 at EP2 (stop file) and resumed in a fresh launch: step 2 is the
    uninterrupted run's bit for bit (weights, experts, optimizer, pi_ref, every metric)."""
    ep2 = [*_overrides(tiny_moe)[:-2], "parallel.expert_model_parallel_size=2", *STEPS]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    _launch.train(2, straight, ep2)
    _launch.train(2, cut, ep2, stop_after_first_step=True)
    assert not (cut / "checkpoints" / "step_000002").exists()
    _launch.train(2, cut, [*ep2, "checkpoint.resume=auto"])
    a, b = _launch.checkpoint(straight, 2), _launch.checkpoint(cut, 2)
    assert any("experts" in k for k in a)
    _launch.assert_same_bits(a, b)
    assert _launch.metrics(straight) == _launch.metrics(cut)


def test_switch_contract_and_a_frozen_router_with_experts(tiny_moe, tmp_path):
    """At EP2: CRAFT with its three pillars switched off is SDAR, bit for bit (weights, experts,
    optimizer, every loss term), as for a dense model; CRAFT with them on is not (the comparison
    can fail). During the RL step the routers get no gradient: after it they equal pi_ref's (the
    initial weights) bit for bit and have no optimizer state, while the experts have moved."""
    base = [*_overrides(tiny_moe)[:-1], "checkpoint.save_every=1", "parallel.expert_model_parallel_size=2"]
    off = ["method=craft", "loss.counterfactual=false", "loss.controller=false", "loss.polarized_kl=false"]
    runs = {"off": off, "sdar": ["method=sdar"], "craft": ["method=craft"]}
    ckpt, rows = {}, {}
    for name, method in runs.items():
        _launch.train(2, tmp_path / name, [*base, *method])
        ckpt[name], (rows[name],) = _launch.checkpoint(tmp_path / name, 1), _launch.metrics(tmp_path / name)
    weights = sorted(k for k in ckpt["sdar"] if k.startswith("dist/"))
    _launch.assert_same_bits(ckpt["off"], ckpt["sdar"], keys=weights)
    terms = [k for k in rows["sdar"] if k.startswith(("train/", "loss/", "moe/"))]
    assert {"train/loss", "train/grad_norm"} <= set(terms)
    assert all(rows["off"][k] == rows["sdar"][k] for k in terms), {k: (rows["off"][k], rows["sdar"][k]) for k in terms}
    assert any(not torch.equal(ckpt["craft"][k], ckpt["sdar"][k]) for k in weights)

    a = ckpt["craft"]
    routers = [k for k in weights if ".router." in k and "optimizer" not in k]
    experts = [k for k in weights if "experts" in k and "optimizer" not in k]
    assert routers and experts
    for k in routers:
        assert torch.equal(a[k], a["reference/" + k[len("dist/") :]]), k
    assert not [k for k in weights if "optimizer" in k and ".router." in k]
    assert any(not torch.equal(a[k], a["reference/" + k[len("dist/") :]]) for k in experts)
