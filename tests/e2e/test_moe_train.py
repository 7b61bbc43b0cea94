"""Qwen3-MoE through ``torchrun -m nemo_craft train``: one RL step with expert parallel (EP2)
equals the same step at EP1 on the same two ranks to 1e-5 in fp32 (loss, gradient norm, every
loss term), starting from the same tiny random Hugging Face checkpoint."""

from __future__ import annotations

import math

import pytest

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
