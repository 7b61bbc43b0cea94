"""Checkpoints on real megatron-core, several ranks (gloo): resume bit for bit, reshard TP2 -> TP1,
megatron-core bug 3 (distributed optimizer resume), atomic saves.

The rank bodies are the module-level functions below (``run_distributed`` imports them by
reference). The TP2xDP2 training runs (straight and resumed, plain and distributed optimizer)
run once and are shared between tests through a module-scoped fixture.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nemo_craft.testing.distributed import current_layout, run_distributed

VOCAB, SEQ, MBS = 64, 16, 2
STEPS, SAVE_AT = 4, 2
EXTRA = {"cursor": {"task": 17, "epoch": 0}, "controller": {"lambda": 0.25, "beta": [1.0, 2.0]}}


# ------------------------------------------------------------------ rank-side helpers
def _np(t: torch.Tensor) -> np.ndarray:
    """Results leave the ranks as NumPy arrays: torch tensors travel through the harness's
    queue as shared-memory handles, which die with the rank that sent them."""
    return t.detach().cpu().numpy().copy()


def _prepare_rank_for_torch_dist_save() -> None:
    """megatron's torch_dist writer forks worker processes and collects their results through a
    multiprocessing Manager queue. The harness starts ranks as daemonic processes, which Python
    forbids to have children (ranks under torchrun/SLURM are not daemonic), and megatron starts
    the Manager with the "spawn" method, which re-imports the test session in a new interpreter
    (~8 s a rank on 2 cores); a Manager started by fork serves the same queue in ~0.1 s."""
    import multiprocessing

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    multiprocessing.current_process()._config["daemon"] = False
    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = multiprocessing.get_context("fork").Manager().Queue()


def _chunks(dropout: float = 0.1, num_layers: int = 2) -> list:
    """This rank's bare GPTModel chunks (the project's provider) on the harness's layout."""
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.models import tiny_model_config

    layout = current_layout()
    model_cfg = tiny_model_config(
        num_layers=num_layers,
        hidden_size=32,
        ffn_hidden_size=64,
        num_query_groups=None,
        kv_channels=None,
        vocab_size=VOCAB,
        make_vocab_size_divisible_by=32,
        tie_word_embeddings=False,
        max_position_embeddings=SEQ,
        hidden_dropout=dropout,
        attention_dropout=dropout,
    )
    parallel_cfg = ParallelConfig(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
    )
    return build_model(model_cfg, parallel_cfg)


def _build(dist_opt: bool, dropout: float = 0.1):
    """DDP-wrapped chunks, megatron's Adam (distributed or not) and its LR scheduler."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    ddp_cfg = DistributedDataParallelConfig(use_distributed_optimizer=dist_opt, grad_reduce_in_fp32=True)
    model = [DistributedDataParallel(c.config, ddp_cfg, c) for c in _chunks(dropout)]
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=1e-2, min_lr=1e-3, weight_decay=0.1, clip_grad=1.0, use_distributed_optimizer=dist_opt
        ),
        model,
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=1e-2,
        min_lr=1e-3,
        lr_warmup_steps=1,
        lr_decay_steps=STEPS,
        lr_decay_style="cosine",
        start_wd=0.1,
        end_wd=0.1,
        wd_incr_steps=STEPS,
        wd_incr_style="constant",
    )
    return model, optimizer, scheduler


def _batch() -> torch.Tensor:
    """Draws from every generator a checkpoint restores (python, numpy, torch), so a wrong RNG
    restore changes the data. Same on the TP ranks of a DP rank, different across DP ranks."""
    from megatron.core import parallel_state as ps

    shift = random.randrange(VOCAB) + int(np.random.randint(VOCAB)) + ps.get_data_parallel_rank()
    return (torch.randint(0, VOCAB, (MBS, SEQ + 1)) + shift) % VOCAB


def _train_step(model, optimizer, scheduler) -> float:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    tokens = _batch()

    def forward_step(data_iterator, chunk):
        out = chunk(tokens[:, :-1], torch.arange(SEQ).unsqueeze(0), None, labels=tokens[:, 1:])
        return out, lambda per_token: (per_token.float().mean(), {"loss": per_token.float().mean().detach()})

    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=[None],
        model=model,
        num_microbatches=1,
        seq_length=SEQ,
        micro_batch_size=MBS,
        forward_only=False,
    )
    ok, _, _ = optimizer.step()
    assert ok
    scheduler.step(1)
    return losses[0]["loss"].item()


def _full_logits(model) -> np.ndarray:
    """Logits ``[b, s, v]`` gathered over TP for a fixed input; eval mode, RNG untouched."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from nemo_craft.runtime.checkpoint_state import capture_rng_state, restore_rng_state

    rng = capture_rng_state()
    tokens = torch.arange(MBS * SEQ).reshape(MBS, SEQ) % VOCAB
    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        logits = model[0](tokens, torch.arange(SEQ).unsqueeze(0), None)
    for chunk in model:
        chunk.train()
    restore_rng_state(rng)
    return _np(gather_from_tensor_model_parallel_region(logits))


def _inner_optimizers(optimizer):
    return [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]


def _snapshot(model, optimizer, scheduler) -> dict:
    params = {n: _np(p) for n, p in model[0].module.named_parameters()}
    optim = []
    for inner in _inner_optimizers(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                s = inner.state[p]
                optim.append((float(s["step"]), _np(s["exp_avg"]), _np(s["exp_avg_sq"]), _np(p)))
    return dict(
        params=params, optim=optim, lr=[g["lr"] for g in optimizer.param_groups], sched_steps=scheduler.num_steps
    )


KINDS = ("plain", "distributed")


def train_body(root: str, resume: bool) -> dict:
    """For each optimizer kind (in ``root/<kind>``), from the same seed. Straight: STEPS steps,
    saving after SAVE_AT. Resume: load (auto) in fresh processes, then the remaining steps."""
    return {kind: _train_kind(f"{root}/{kind}", kind == "distributed", resume) for kind in KINDS}


def _train_kind(ckpt_dir: str, dist_opt: bool, resume: bool) -> dict:
    from nemo_craft.parallel.initialize import set_seed
    from nemo_craft.runtime.checkpoint import CheckpointManager
    from nemo_craft.runtime.config import CheckpointConfig

    _prepare_rank_for_torch_dist_save()
    set_seed(current_layout().seed)
    model, optimizer, scheduler = _build(dist_opt)
    manager = CheckpointManager(CheckpointConfig(dir=ckpt_dir, resume="auto" if resume else None, save_every=SAVE_AT))
    out: dict = {"losses": {}}
    start = 0
    if resume:
        info = manager.find_resume()
        extra = manager.load(model, optimizer, scheduler)
        assert info.step == SAVE_AT and extra == dict(EXTRA, step=SAVE_AT), (info, extra)
        out["logits_at_save"] = _full_logits(model)
        start = info.step
    for step in range(start + 1, STEPS + 1):
        out["losses"][step] = _train_step(model, optimizer, scheduler)
        if not resume and manager.should_save(step) and step == SAVE_AT:
            manager.save(
                step,
                model,
                optimizer,
                scheduler,
                extra_state=dict(EXTRA, step=step),
                resolved_config_yaml=f"seed: 1234\ndist_opt: {dist_opt}\n",
            )
    out.update(_snapshot(model, optimizer, scheduler))
    return out


def reshard_body(ckpt_path: str) -> dict:
    """Load a TP2xDP2 distributed-optimizer checkpoint at this (TP1) layout: model and
    optimizer (fully_reshardable) both; report the logits and the optimizer's step count."""
    from nemo_craft.runtime.checkpoint import CheckpointManager
    from nemo_craft.runtime.config import CheckpointConfig

    model, optimizer, scheduler = _build(dist_opt=True)
    extra = CheckpointManager(CheckpointConfig(resume=ckpt_path)).load(model, optimizer, scheduler)
    steps = {float(s["step"]) for inner in _inner_optimizers(optimizer) for s in inner.state.values()}
    return dict(extra=extra, logits=_full_logits(model), steps=steps, sched_steps=scheduler.num_steps)


def other_kind_body(ckpt_path: str, dist_opt: bool) -> str:
    """Load a checkpoint into the other optimizer kind: the refusal's message."""
    from nemo_craft.runtime.checkpoint import CheckpointManager
    from nemo_craft.runtime.config import CheckpointConfig

    model, optimizer, scheduler = _build(dist_opt=dist_opt)
    try:
        CheckpointManager(CheckpointConfig(resume=ckpt_path)).load(model, optimizer, scheduler)
    except ValueError as err:
        return str(err)
    return ""


def _params_by_global_layer(chunks) -> dict:
    """Parameters named as in a PP1 model: each chunk's local ``layers.<i>`` renamed to the
    global layer index (megatron's 1-based ``layer_number``)."""
    out = {}
    for chunk in chunks:
        local_to_global = {str(i): str(layer.layer_number - 1) for i, layer in enumerate(chunk.decoder.layers)}
        for name, param in chunk.named_parameters():
            parts = name.split(".")
            if parts[:2] == ["decoder", "layers"]:
                parts[2] = local_to_global[parts[2]]
            out[".".join(parts)] = _np(param)
    return out


def vpp_save_body(root: str) -> dict:
    """Save randomly initialised chunks at this (PP2 x VPP2) layout: model only."""
    from nemo_craft.runtime.checkpoint import CheckpointManager
    from nemo_craft.runtime.config import CheckpointConfig

    _prepare_rank_for_torch_dist_save()
    chunks = _chunks(num_layers=4)
    assert len(chunks) == 2
    CheckpointManager(CheckpointConfig(dir=root)).save(1, chunks, None, None, extra_state={})
    return _params_by_global_layer(chunks)


def pp1_load_body(root: str) -> dict:
    from nemo_craft.runtime.checkpoint import CheckpointManager
    from nemo_craft.runtime.config import CheckpointConfig

    chunks = _chunks(num_layers=4)
    CheckpointManager(CheckpointConfig(dir=root, resume="auto")).load(chunks)
    return _params_by_global_layer(chunks)


def bug3_body(ckpt_path: str) -> dict:
    """megatron-core 0.16.1 without the fix, one symptom at a time (fresh optimizers)."""
    from megatron.core import dist_checkpointing

    from nemo_craft.parallel import megatron_fixes as fixes
    from nemo_craft.runtime.checkpoint import DIST_DIR
    from nemo_craft.runtime.checkpoint_state import SHARDED_STATE_METADATA, build_sharded_state_dict

    dist_dir = str(Path(ckpt_path) / DIST_DIR)
    fixes.remove_optimizer_fixes()
    seen = {}
    model, optimizer, scheduler = _build(dist_opt=True)
    try:  # 1. a fresh optimizer cannot even describe what it wants to load
        build_sharded_state_dict(model, optimizer, SHARDED_STATE_METADATA, is_loading=True)
    except AssertionError:
        seen["fresh_optimizer_assertion"] = True
    for dist_optimizer in getattr(optimizer, "chained_optimizers", [optimizer]):
        fixes.init_empty_adam_state(dist_optimizer)  # fix 1 by hand, to reach the next symptom
    sharded = build_sharded_state_dict(model, optimizer, SHARDED_STATE_METADATA, is_loading=True)
    loaded = dist_checkpointing.load(sharded, dist_dir)
    model[0].load_state_dict(loaded["model"])
    try:  # 2. the fully_reshardable loader copies the live "step" key from the checkpoint
        optimizer.load_state_dict(loaded["optimizer"])
    except KeyError as err:
        seen["missing_step_keyerror"] = str(err)
    states = [s for inner in _inner_optimizers(optimizer) for s in inner.state.values()]
    seen["num_params"] = len(states)
    seen["distinct_step_tensors"] = len({id(s["step"]) for s in states})
    _train_step(model, optimizer, scheduler)  # 3. Adam increments the one shared step per parameter
    seen["steps_after_one_update"] = sorted({float(s["step"]) for s in states})
    fixes.apply_optimizer_fixes()
    return seen


def atomic_body(root: str) -> dict:
    """Failure injection during save, keep_last, auto-resume past leftovers, clear errors."""
    import torch.distributed as dist

    from nemo_craft.runtime import checkpoint as ckpt
    from nemo_craft.runtime.checkpoint import CheckpointManager, CheckpointSaveError
    from nemo_craft.runtime.config import CheckpointConfig

    _prepare_rank_for_torch_dist_save()
    rank = dist.get_rank()
    model, optimizer, scheduler = _build(dist_opt=False, dropout=0.0)
    manager = CheckpointManager(CheckpointConfig(dir=root, keep_last=2, resume="auto"))
    seen: dict = {}

    def save(step):
        return manager.save(step, model, optimizer, scheduler, extra_state={"step": step})

    save(1)  # before the first step: no optimizer state to save
    _train_step(model, optimizer, scheduler)
    # a rank fails while writing its files: every rank raises, step 1 stays the latest
    real_capture = ckpt.capture_rng_state

    def failing_capture():
        if rank == 1:
            raise OSError("disk full (injected)")
        return real_capture()

    ckpt.capture_rng_state = failing_capture
    try:
        save(2)
    except CheckpointSaveError as err:
        seen["rank_failure"] = str(err)
    ckpt.capture_rng_state = real_capture
    dist.barrier()
    seen["after_rank_failure"] = sorted(os.listdir(root))
    dist.barrier()

    # the processes die after the shards are written (simulated by an exception that the
    # manager does not catch, on every rank): the .tmp- directory stays, unpublished
    real_save = ckpt.CheckpointManager._write_rank_files

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed (injected)")

    ckpt.CheckpointManager._write_rank_files = crash
    try:
        save(2)
    except KeyboardInterrupt:
        seen["crash"] = True
    ckpt.CheckpointManager._write_rank_files = real_save
    dist.barrier()
    seen["after_crash"] = sorted(os.listdir(root))
    dist.barrier()
    seen["resume_after_crash"] = manager.find_resume().path.name
    seen["extra_after_crash"] = manager.load(model, optimizer, scheduler)

    for step in (2, 3):
        save(step)
    seen["after_keep_last"] = sorted(os.listdir(root))
    dist.barrier()

    # leftovers a resume must ignore: a newer .tmp- dir (even with a marker) and an unmarked step dir
    if rank == 0:
        os.makedirs(f"{root}/step_000009.tmp-deadbeef/dist")
        Path(f"{root}/step_000009.tmp-deadbeef/COMPLETE").write_text(json.dumps({"step": 9, "files": {}}))
        os.makedirs(f"{root}/step_000007/dist")
    dist.barrier()
    seen["auto"] = manager.find_resume().path.name
    if rank == 0:
        os.remove(f"{root}/latest")
    dist.barrier()
    seen["auto_without_latest"] = manager.find_resume().path.name
    seen["auto_extra"] = manager.load(model, optimizer, scheduler)

    for name, path in (("missing", f"{root}/step_000099"), ("incomplete", f"{root}/step_000007")):
        try:
            manager.load(model, optimizer, scheduler, path=path)
        except Exception as err:  # noqa: BLE001 - the type is checked by the test
            seen[name] = (type(err).__name__, str(err))
    dist.barrier()
    if rank == 0:  # truncate one shard file of a complete checkpoint
        shard = sorted(Path(f"{root}/step_000003/dist").glob("*.distcp"))[0]
        shard.write_bytes(shard.read_bytes()[:10])
    dist.barrier()
    try:
        manager.load(model, optimizer, scheduler, path=f"{root}/step_000003")
    except Exception as err:  # noqa: BLE001
        seen["corrupt"] = (type(err).__name__, str(err))
    return seen


# ------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``resume -> (checkpoint root, per-rank results by kind)`` of the TP2xDP2 training runs,
    each run once per module; the resumed run uses the straight run's checkpoints."""
    cache = {}

    def get(resume: bool = False):
        if resume not in cache:
            root = get()[0] if resume else tmp_path_factory.mktemp("ckpt")
            cache[resume] = (root, run_distributed(train_body, world_size=4, tp=2, args=(str(root), resume)))
        return cache[resume]

    return get


def _assert_same_tensors(a, b, what):
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape and np.array_equal(x, y), f"{what}[{i}] differs: max |diff| {np.abs(x - y).max()}"


@pytest.mark.parametrize("kind", ["plain", "distributed"])
def test_resume_is_bit_identical(runs, kind):
    root, ref = runs()
    root, ref = root / kind, [r[kind] for r in ref]
    assert (root / "step_000002" / "COMPLETE").is_file()
    assert (root / "latest").read_text().strip() == "step_000002"
    assert (root / "step_000002" / "config.yaml").read_text() == f"seed: 1234\ndist_opt: {kind == 'distributed'}\n"
    resumed = [r[kind] for r in runs(resume=True)[1]]
    for rank, (r, s) in enumerate(zip(ref, resumed)):
        assert s["losses"] == {k: v for k, v in r["losses"].items() if k > SAVE_AT}, f"rank {rank} losses"
        _assert_same_tensors(list(r["params"].values()), list(s["params"].values()), f"rank {rank} params")
        assert [o[0] for o in s["optim"]] == [float(STEPS)] * len(s["optim"]), f"rank {rank} Adam step counts"
        assert [o[0] for o in r["optim"]] == [o[0] for o in s["optim"]]
        for j in (1, 2, 3):  # exp_avg, exp_avg_sq, main params
            _assert_same_tensors([o[j] for o in r["optim"]], [o[j] for o in s["optim"]], f"rank {rank} optim[{j}]")
        assert s["lr"] == r["lr"] and s["sched_steps"] == r["sched_steps"] == STEPS


def test_reshard_tp2_to_tp1(runs):
    """The TP2xDP2 distributed-optimizer checkpoint loads at TP1xDP2 (model and optimizer);
    logits equal those the TP2 resume computed right after loading."""
    root, tp2 = runs(resume=True)
    path = root / "distributed" / "step_000002"
    tp1 = run_distributed(reshard_body, world_size=2, tp=1, args=(str(path),))
    for out in tp1:
        assert out["extra"] == dict(EXTRA, step=SAVE_AT)
        assert out["steps"] == {float(SAVE_AT)} and out["sched_steps"] == SAVE_AT
        np.testing.assert_allclose(out["logits"], tp2[0]["distributed"]["logits_at_save"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["plain", "distributed"])
def test_the_other_optimizer_kind_is_refused_with_the_fix(runs, kind):
    """The two optimizers keep their state in different formats: loading one's checkpoint into
    the other is refused by name (megatron itself fails deep inside with a KeyError)."""
    root, _ = runs()
    errors = run_distributed(other_kind_body, world_size=1, args=(str(root / kind / "step_000002"), kind == "plain"))
    saved = str(kind == "distributed").lower()
    assert f"resume with parallel.use_distributed_optimizer={saved}" in errors[0]


def test_virtual_pipeline_checkpoint_loads_at_pp1(tmp_path):
    """PP2 x VPP2 chunks are saved under "model0" / "model1" with their global layer offsets;
    a PP1 model (one chunk, "model") loads the same weights."""
    saved = run_distributed(vpp_save_body, world_size=2, pp=2, vpp=2, args=(str(tmp_path),))
    loaded = run_distributed(pp1_load_body, world_size=1, args=(str(tmp_path),))[0]
    by_name = {}
    for rank_params in saved:
        for name, value in rank_params.items():
            assert name not in by_name or np.array_equal(by_name[name], value), name
            by_name[name] = value
    assert sorted(by_name) == sorted(loaded)
    for name, value in loaded.items():
        assert np.array_equal(value, by_name[name]), name


def test_megatron_bug3_still_present_without_fix(runs):
    """Canary: if this fails after a megatron-core upgrade, bug 3 may be fixed upstream; check
    megatron_fixes against the new code before removing it."""
    path = runs()[0] / "distributed" / "step_000002"
    seen = run_distributed(bug3_body, world_size=2, tp=1, args=(str(path),))
    for out in seen:
        assert out["fresh_optimizer_assertion"]
        assert out["missing_step_keyerror"] == "'step'"
        assert out["num_params"] > 1 and out["distinct_step_tensors"] == 1  # one step shared by all
        assert out["steps_after_one_update"] == [SAVE_AT + out["num_params"]]  # not SAVE_AT + 1


def test_atomic_save_keep_last_and_errors(tmp_path):
    root = tmp_path / "ckpts"
    seen = run_distributed(atomic_body, world_size=2, tp=2, args=(str(root),))
    for out in seen:
        assert "rank 1" in out["rank_failure"] and "disk full (injected)" in out["rank_failure"]
        assert out["after_rank_failure"] == ["latest", "step_000001"]
        assert out["crash"]
        assert out["after_crash"][:2] == ["latest", "step_000001"] and len(out["after_crash"]) == 3
        assert out["after_crash"][2].startswith("step_000002.tmp-")
        assert out["resume_after_crash"] == "step_000001" and out["extra_after_crash"] == {"step": 1}
        assert out["after_keep_last"] == ["latest", "step_000002", "step_000003"]
        assert out["auto"] == "step_000003" and out["auto_without_latest"] == "step_000003"
        assert out["auto_extra"] == {"step": 3}
        kind, message = out["missing"]
        assert kind == "CheckpointNotFoundError" and "step_000099' not found" in message
        assert "step_000002" in message and "step_000003" in message  # lists what is available
        kind, message = out["incomplete"]
        assert kind == "CheckpointCorruptError" and "step_000007" in message and "COMPLETE" in message
        kind, message = out["corrupt"]
        assert kind == "CheckpointCorruptError" and ".distcp" in message and "expected" in message
