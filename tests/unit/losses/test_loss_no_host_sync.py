"""No host synchronisation in the training loss's micro-batch loop
(docs/design.md#no-host-sync-in-the-micro-batch-loop).

On a GPU every read of a device value on the host (``.item()``, ``float(t)``, ``bool(t)``, a
boolean-mask index, ...) waits for the queued kernels and stalls the pipeline schedule's
run-ahead. The loss function the trainer hands to ``megatron_step.forward_backward`` is run here,
forward and backward, for every method, with those calls counted; the only one allowed is the
compaction of a micro-batch's valid tokens (one ``nonzero``, whose size the host must know).
"""

import collections
import contextlib
import dataclasses

import pytest
import torch

from nemo_craft.losses import PRESETS, ControllerState, LossConfig, compute_credits
from nemo_craft.trainer import packing
from nemo_craft.trainer.packing import split_micro_batches
from nemo_craft.trainer.step import training_loss_fn
from tests.unit.losses._reference import make_batch

V = 37
VOCAB = 34  # below the logits' width: the padding columns' path runs too
SEQ = 16
MICRO = 3

CONFIGS = {name: LossConfig.preset(name) for name in PRESETS}
CONFIGS.update(
    {
        "craft_turn_mean": LossConfig.preset("craft", align="turn_mean"),
        "pillar_counterfactual": LossConfig.preset("sdar", counterfactual=True),
        "pillar_controller": LossConfig.preset("sdar", controller=True),
        "pillar_polarized_kl": LossConfig.preset("sdar", polarized_kl=True),
    }
)

_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _is_bool_tensor(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


@contextlib.contextmanager
def _host_reads(monkeypatch):
    """Count the calls that read a device value on the host (or make torch do it)."""
    calls = collections.Counter()
    with monkeypatch.context() as m:
        for name in _READS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _name=name, _original=original, **kwargs):
                calls[_name] += 1
                return _original(self, *args, **kwargs)

            m.setattr(torch.Tensor, name, counted)
        getitem, setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

        def counted_getitem(self, index):
            if _is_bool_tensor(index):
                calls["boolean-mask index"] += 1
            return getitem(self, index)

        def counted_setitem(self, index, value):
            if _is_bool_tensor(index):
                calls["boolean-mask index"] += 1
            return setitem(self, index, value)

        m.setattr(torch.Tensor, "__getitem__", counted_getitem)
        m.setattr(torch.Tensor, "__setitem__", counted_setitem)
        nonzero, tensor_nonzero = torch.nonzero, torch.Tensor.nonzero

        def counted_nonzero(*args, **kwargs):
            calls["nonzero"] += 1
            return nonzero(*args, **kwargs)

        def counted_tensor_nonzero(self, *args, **kwargs):
            calls["nonzero"] += 1
            return tensor_nonzero(self, *args, **kwargs)

        m.setattr(torch, "nonzero", counted_nonzero)
        m.setattr(torch.Tensor, "nonzero", counted_tensor_nonzero)
        m.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.update(["cuda.synchronize"]))
        yield calls


def _step(cfg: LossConfig, seed: int = 0):
    """The step's batch as the trainer has it after make_experience (built, checked, credits in),
    its targets and logits; no teacher / old pass where the method does not read them."""
    raw = make_batch(n_groups=3, group_size=4, seq=SEQ, seed=seed, singleton=True)
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(raw.batch_size, SEQ, V, generator=gen)
    targets = torch.randint(0, VOCAB, (raw.batch_size, SEQ), generator=gen)
    lp = torch.log_softmax(logits[..., :VOCAB], -1).gather(-1, targets[..., None])[..., 0]
    noisy = [lp + s * torch.randn(lp.shape, generator=gen) for s in (0.2, 0.5, 1.0, 1e-3)]
    raw = dataclasses.replace(
        raw,
        logp_old=noisy[0] if cfg.uses_teacher else None,
        logp_ref=noisy[1],
        logp_teacher=noisy[2] if cfg.uses_teacher else None,
        logp_rollout=noisy[3],
        sample_ids=torch.arange(raw.batch_size) + 100,
    )
    return compute_credits(raw, cfg), targets, logits


def _micro_batches(targets):
    return [{"index": idx, "targets": targets[idx]} for idx in torch.arange(targets.shape[0]).split(MICRO)]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_training_loss_reads_nothing_on_the_host(name, monkeypatch):
    cfg = CONFIGS[name]
    batch, targets, logits = _step(cfg)
    state = ControllerState.initial(cfg).update(0.9)
    loss_fn = training_loss_fn(batch, targets, cfg, state, vocab_size=VOCAB, temperature=0.7)  # per step: may read
    mbs = _micro_batches(targets)
    leaves = [logits[mb["index"]].clone().requires_grad_(True) for mb in mbs]
    outputs = []
    with _host_reads(monkeypatch) as calls:
        for mb, leaf in zip(mbs, leaves):
            loss_sum, num_tokens, metrics = loss_fn(mb, leaf)
            loss_sum.backward()
            outputs.append((loss_sum, num_tokens, metrics))
    assert dict(calls) == {"nonzero": len(mbs)}, f"{name}: host reads in the micro-batch loop: {dict(calls)}"
    # it did the work: a gradient in every micro-batch, device-tensor metrics (read once per step)
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves)
    for _, num_tokens, metrics in outputs:
        assert isinstance(num_tokens, torch.Tensor)
        assert all(isinstance(v, torch.Tensor) for k, v in metrics.items() if k.startswith(("loss/", "rollout/")))


@pytest.mark.parametrize("name", ["craft", "grpo", "adaptive_cringe"])
def test_the_packed_training_loss_reads_nothing_on_the_host(name, monkeypatch):
    """Packed micro-batches (trainer.max_tokens_per_microbatch): megatron_step calls the loss once
    per sequence of a pack, on its piece of the pack's logits; one nonzero per sequence."""
    cfg = CONFIGS[name]
    batch, targets, logits = _step(cfg)
    state = ControllerState.initial(cfg)
    loss_fn = training_loss_fn(batch, targets, cfg, state, vocab_size=VOCAB)
    B = targets.shape[0]
    lengths = SEQ - batch.loss_mask.flip(1).int().argmax(1)  # up to the last action token
    tensors = {"input_ids": targets, "targets": targets, "index": torch.arange(B)}
    # two sequences a pack (the planner would keep these similar lengths one a pack: less padding)
    pairs = [list(range(i, min(i + 2, B))) for i in range(0, B, 2)]
    monkeypatch.setattr(packing, "plan_packs", lambda lengths, max_tokens: pairs)
    mbs = split_micro_batches(tensors, lengths, max_tokens=2 * SEQ)
    leaves = [torch.randn(1, mb["input_ids"].shape[1], V, requires_grad=True) for mb in mbs.items]
    with _host_reads(monkeypatch) as calls:
        for mb, leaf in zip(mbs.items, leaves):
            loss_sum = sum(loss_fn(mb_i, logits_i)[0] for mb_i, logits_i in mb["pack"].sequences(mb, leaf))
            loss_sum.backward()
    n_sequences = sum(len(mb["pack"].rows) for mb in mbs.items)
    assert len(mbs.items) < n_sequences and dict(calls) == {"nonzero": n_sequences}, f"{name}: {dict(calls)}"
    assert all(leaf.grad.abs().sum() > 0 for leaf in leaves)


def test_the_counter_sees_each_kind_of_host_read(monkeypatch):
    """The test above proves nothing if the patches do not intercept: each read counts here."""
    x, mask = torch.arange(6.0), torch.tensor([True, False] * 3)
    with _host_reads(monkeypatch) as calls:
        x.sum().item()
        float(x.sum())
        int(x[0])
        bool(x.any())
        x.tolist()
        x.cpu()
        x.numpy()
        [0, 1][torch.tensor(1)]
        x[mask]
        x[mask] = 0.0
        torch.nonzero(mask)
        mask.nonzero()
        torch.cuda.synchronize()
    assert all(calls[k] >= 1 for k in _READS), dict(calls)
    assert calls["boolean-mask index"] == 2 and calls["nonzero"] == 2 and calls["cuda.synchronize"] == 1


def test_the_step_checks_the_targets_once_in_one_line():
    cfg = LossConfig.preset("craft")
    batch, targets, _ = _step(cfg)
    bad = targets.clone()
    bad[batch.loss_mask.nonzero()[0].tolist()] = VOCAB
    with pytest.raises(ValueError, match=rf"targets must be vocabulary ids in \[0, {VOCAB}\) on valid tokens"):
        training_loss_fn(batch, bad, cfg, ControllerState.initial(cfg), vocab_size=VOCAB)
    bad[~batch.loss_mask] = -1  # padding may hold anything
    bad[batch.loss_mask] = 0
    training_loss_fn(batch, bad, cfg, ControllerState.initial(cfg), vocab_size=VOCAB)
