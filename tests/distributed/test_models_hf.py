"""Hugging Face <-> megatron-core on every layout: logits equal HF's, import then export is
bit-exact, and under sequence parallel the norm gradients (after finalize_model_grads) equal HF's.

Checkpoints are tiny random models built here (no downloads): Qwen2 with qkv bias and a vocab
that needs padding, Qwen3 with q/k norm, head_dim != hidden/heads and tied embeddings, Llama
with GQA and Llama 3 RoPE scaling, and a bf16 Qwen2 for the bf16 round trip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re

import pytest
import torch

from nemo_craft.models.config import ModelConfig
from nemo_craft.testing.distributed import run_distributed

SEQ = 24
BATCH = 2
LOGITS_ATOL = 1e-4

CHECKPOINTS = {
    # name: (architecture, dtype, config kwargs)
    # 4 query groups: two per rank at TP=2, so a wrong per-group q/k/v interleave shows there too.
    "qwen2": ("qwen2", torch.float32, dict(num_layers=4, vocab_size=300, num_attention_heads=8, num_key_value_heads=4)),
    "qwen3_tied": ("qwen3", torch.float32, dict(num_layers=4, tied=True, head_dim=32)),
    "llama": (
        "llama",
        torch.float32,
        dict(num_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=16, llama3_rope_scaling=8.0),
    ),
    "qwen2_bf16": ("qwen2", torch.bfloat16, dict(num_layers=4)),
}


# ---------------------------------------------------------------- rank bodies (run in spawned ranks)


def _portable(obj):
    """Tensors as numpy arrays: a tensor put on the harness's result queue travels as shared
    memory whose file descriptor the parent fetches from the rank, which may have exited by then
    (ConnectionResetError)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, dict):
        return {k: _portable(v) for k, v in obj.items()}
    return obj


def _parallel_cfg():
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.distributed import current_layout

    layout = current_layout()
    return ParallelConfig(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
        sequence_parallel=layout.sp,
    )


def _pipeline_logits(chunks, tokens):
    """Full-vocab logits ``[b, s, Vp]`` on the last pipeline stage (None elsewhere), through
    megatron's schedule, one micro-batch per sample."""
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    b, s = tokens.shape
    positions = torch.arange(s).unsqueeze(0)

    def forward_step(data_iterator, model):
        sample = next(data_iterator)
        output = model(sample, positions, None)

        def collect(output_tensor, non_loss_data=True):
            return gather_from_tensor_model_parallel_region(output_tensor).detach()

        return output, collect

    iterators = [iter([tokens[i : i + 1] for i in range(b)]) for _ in chunks]
    for chunk in chunks:
        chunk.eval()
    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=chunks,
            num_microbatches=b,
            seq_length=s,
            micro_batch_size=1,
            forward_only=True,
            collect_non_loss_data=True,
        )
    return torch.cat(out, dim=0) if out else None


def _describe(name, param):
    return (
        name,
        tuple(param.shape),
        param.dtype,
        getattr(param, "tensor_model_parallel", None),
        getattr(param, "sequence_parallel", None),
    )


@contextlib.contextmanager
def _recording_reads():
    """The names of the checkpoint tensors this rank reads."""
    from nemo_craft.models.hf import SafetensorsReader

    names, original = set(), SafetensorsReader.read

    def read(self, name, rows=None, cols=None):
        names.add(name)
        return original(self, name, rows, cols)

    SafetensorsReader.read = read
    try:
        yield names
    finally:
        SafetensorsReader.read = original


def body_logits_and_roundtrip(checkpoints: dict, tokens, out_root: str, max_shard_bytes: int):
    """Per checkpoint: import, logits, export; plus a meta-device build's parameter shapes."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from nemo_craft.models.hf import load_hf_model, save_hf_checkpoint
    from nemo_craft.models.provider import build_model, parameter_count

    parallel = _parallel_cfg()
    result = {}
    for name, path in checkpoints.items():
        with _recording_reads() as read:
            model_cfg, chunks = load_hf_model(path, parallel, params_dtype="bf16" if name.endswith("bf16") else "fp32")
        logits = _pipeline_logits(chunks, tokens)
        save_hf_checkpoint(chunks, model_cfg, os.path.join(out_root, name), max_shard_bytes=max_shard_bytes)
        meta = build_model(model_cfg, parallel, device="meta")
        result[name] = dict(
            logits=None
            if logits is None or ps.get_tensor_model_parallel_rank() != 0
            else logits[..., : model_cfg.vocab_size].float(),
            real_shapes=[_describe(n, p) for c in chunks for n, p in c.named_parameters()],
            meta_shapes=[_describe(n, p) for c in meta for n, p in c.named_parameters()],
            meta_is_meta=all(p.is_meta for c in meta for p in c.parameters()),
            count=parameter_count(chunks),
            meta_count=parameter_count(meta),
            read=sorted(read),
            layers=sorted(layer.layer_number - 1 for c in chunks for layer in c.decoder.layers),
        )
    result["rank"] = dist.get_rank()
    return _portable(result)


def body_sequence_parallel_grads(path: str, tokens, weights, with_finalize: bool):
    """TP2 + sequence parallel, DDP-wrapped: main_grads of the replicated (norm) parameters after
    one forward/backward of ``sum(logits * weights)``."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_craft.models.hf import load_hf_weights
    from nemo_craft.models.hf_mapping import global_named_parameters
    from nemo_craft.models.provider import build_model

    parallel = _parallel_cfg()
    model_cfg = ModelConfig.from_hf_config(path)
    (chunk,) = build_model(model_cfg, parallel)
    load_hf_weights([chunk], model_cfg)
    config = chunk.config
    if not with_finalize:
        config.finalize_model_grads_func = None
    ddp = DistributedDataParallel(config=config, ddp_config=DistributedDataParallelConfig(), module=chunk)
    tp_rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    padded = model_cfg.padded_vocab_size(tp)
    w = torch.nn.functional.pad(weights, (0, padded - weights.shape[-1]))
    w_local = w[..., tp_rank * padded // tp : (tp_rank + 1) * padded // tp]
    positions = torch.arange(tokens.shape[1]).unsqueeze(0)

    def forward_step(data_iterator, model):
        output = model(next(data_iterator), positions, None)

        def loss(output_tensor):
            value = (output_tensor * w_local).sum()
            return value, {"loss": value.detach()}

        return output, loss

    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([tokens]),
        model=[ddp],
        num_microbatches=1,
        seq_length=tokens.shape[1],
        micro_batch_size=tokens.shape[0],
        forward_only=False,
    )
    return _portable(
        {
            name: p.main_grad
            for name, p in global_named_parameters(chunk)
            if not getattr(p, "tensor_model_parallel", False)
        }
    )


# ---------------------------------------------------------------- parent side


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("hf")
    return {
        name: make_tiny_hf_checkpoint(str(root / name), arch, dtype=dtype, seed=i, **kwargs)
        for i, (name, (arch, dtype, kwargs)) in enumerate(CHECKPOINTS.items())
    }


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 256, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def hf_logits(checkpoints, tokens):
    from transformers import AutoModelForCausalLM

    out = {}
    for name, path in checkpoints.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()
        with torch.no_grad():
            out[name] = model(tokens).logits.float()
    return out


def _tensor_bytes(path: str) -> dict:
    from safetensors import safe_open

    from nemo_craft.models.hf import SafetensorsReader

    reader = SafetensorsReader(path)
    out = {}
    for key in sorted(reader.keys()):
        with safe_open(os.path.join(path, reader.weight_map[key]), framework="pt") as f:
            t = f.get_tensor(key)
        out[key] = (t.dtype, tuple(t.shape), t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return out


LAYOUTS = {
    "tp1": dict(world_size=1),  # world_size, tp, pp, vpp, sp of run_distributed
    "tp2": dict(world_size=2, tp=2),
    "pp2": dict(world_size=2, pp=2),
    "tp2_pp2": dict(world_size=4, tp=2, pp=2),
    "pp2_vpp2": dict(world_size=2, pp=2, vpp=2),
    "tp2_sp": dict(world_size=2, tp=2, sp=True),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_logits_match_hf_and_export_is_bit_exact(layout, checkpoints, tokens, hf_logits, tmp_path):
    # One layout exports in many small safetensors files (with an index), the others in one.
    max_shard_bytes = 32 * 1024 if layout == "tp2_pp2" else 5 * 2**30
    results = run_distributed(
        body_logits_and_roundtrip,
        **LAYOUTS[layout],
        args=(checkpoints, tokens, str(tmp_path), max_shard_bytes),
        timeout=300,
    )
    for name, path in checkpoints.items():
        reports = [r[name] for r in results]
        _check_logits(f"{name} {layout}", reports, hf_logits[name], bf16=name.endswith("bf16"))
        _check_export(f"{name} {layout}", path, str(tmp_path / name), sharded=layout == "tp2_pp2")
        _check_rank_reports(f"{name} {layout}", reports)


def _check_logits(what, reports, reference, *, bf16):
    with_logits = [r["logits"] for r in reports if r["logits"] is not None]
    assert len(with_logits) == 1, f"{what}: expected logits from exactly the last stage's TP rank 0"
    diff = (torch.from_numpy(with_logits[0]) - reference).abs().max().item()
    if bf16:  # bf16 rounding in different kernels: only a coarse check
        scale = reference.abs().max().item()
        assert diff <= 0.05 * scale, f"{what}: bf16 logits differ by {diff} (scale {scale})"
    else:
        assert diff <= LOGITS_ATOL, f"{what}: max |megatron - HF| logits = {diff}"


def _check_export(what, original_dir, exported_dir, *, sharded):
    original, exported = _tensor_bytes(original_dir), _tensor_bytes(exported_dir)
    assert os.path.exists(os.path.join(exported_dir, "model.safetensors.index.json")) == sharded, what
    assert sorted(exported) == sorted(original), f"{what}: exported tensor names differ"
    for key in original:
        assert exported[key] == original[key], f"{what}: {key} not bit-identical after import/export"
    assert ModelConfig.from_hf_config(exported_dir) == dataclasses.replace(
        ModelConfig.from_hf_config(original_dir), hf_path=exported_dir
    )


def _check_rank_reports(what, reports):
    for r in reports:
        assert r["meta_is_meta"] and r["meta_shapes"] == r["real_shapes"], what
        assert r["meta_count"] == r["count"] > 0, what
        # A rank reads the tensors of its own layers only (plus embedding / final norm / head).
        layers = [re.match(r"model\.layers\.(\d+)\.", n) for n in r["read"]]
        read_layers = sorted({int(m.group(1)) for m in layers if m})
        assert read_layers == r["layers"], (what, read_layers, r["layers"])


def _hf_norm_grads(path, tokens, weights):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    (model(tokens).logits * weights).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if "norm" in n}


def test_sequence_parallel_norm_grads_match_hf_only_with_finalize(checkpoints, tokens):
    from nemo_craft.models.hf_mapping import weight_rule

    path = checkpoints["qwen3_tied"]  # q/k norms and the final norm under SP
    model_cfg = ModelConfig.from_hf_config(path)
    weights = torch.randn(BATCH, SEQ, model_cfg.vocab_size, generator=torch.Generator().manual_seed(3))
    ref = _hf_norm_grads(path, tokens, weights)
    layout = dict(world_size=2, tp=2, sp=True)
    fixed = run_distributed(body_sequence_parallel_grads, **layout, args=(path, tokens, weights, True))
    broken = run_distributed(body_sequence_parallel_grads, **layout, args=(path, tokens, weights, False))
    assert set(fixed[0]) and set(fixed[0]) == set(fixed[1])
    mismatched_without_fix = []
    for name in fixed[0]:
        (hf_name,) = weight_rule(name, model_cfg).hf_names
        expected = ref[hf_name]
        tol = 1e-4 * expected.abs().max().item() + 1e-5
        for rank in (0, 1):
            diff = (torch.from_numpy(fixed[rank][name]) - expected).abs().max().item()
            assert diff <= tol, f"{name} rank {rank}: grad differs from HF by {diff} (tol {tol})"
        if (torch.from_numpy(broken[0][name]) - expected).abs().max().item() > tol:
            mismatched_without_fix.append(name)
    # Without finalize_model_grads each TP rank keeps only its part of these gradients.
    assert any("input_layernorm" in n for n in mismatched_without_fix), mismatched_without_fix
    assert any("q_layernorm" in n for n in mismatched_without_fix), mismatched_without_fix
