"""Hugging Face checkpoint import and export (the registered model families; safetensors).

    model_cfg = ModelConfig.from_hf_config(hf_dir)
    chunks = build_model(model_cfg, parallel_cfg)
    load_hf_weights(chunks, model_cfg, hf_dir)          # every rank: its PP stage, its TP shard
    save_hf_checkpoint(chunks, model_cfg, out_dir)      # collective; rank 0 writes

Import reads, on each rank, only the tensors of its pipeline stage and, of those, only the rows
or columns of its TP shard (``safe_open(...).get_slice``), so a large checkpoint never sits
whole in any rank's memory. Export gathers each parameter's TP shards inside its pipeline stage,
sends the merged Hugging Face tensors to rank 0, which writes safetensors shards of bounded size
(plus ``model.safetensors.index.json`` when there are several) and ``config.json``; vocabulary
padding is stripped. Import then export is bit-exact.

The layout conversions themselves live in :mod:`nemo_craft.models.hf_mapping`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import torch
import torch.distributed as dist

from nemo_craft.models.config import ModelConfig
from nemo_craft.models.hf_mapping import (
    REPLICATED,
    expected_names,
    global_named_parameters,
    hf_names,
    hf_tensor_names,
    is_expert_kind,
    merge_tp_shards,
    read_tp_shard,
    weight_rule,
)

__all__ = ["SafetensorsReader", "load_hf_model", "load_hf_weights", "save_hf_checkpoint", "TOKENIZER_FILES"]

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "float32": torch.float32, "bfloat16": torch.bfloat16}


class SafetensorsReader:
    """Lazy reader of a Hugging Face safetensors checkpoint (one file or an index of shards):
    ``read(name, rows, cols)`` returns only the requested rows / columns of a tensor."""

    def __init__(self, hf_dir: str):
        from safetensors import safe_open

        self._safe_open = safe_open
        self.hf_dir = hf_dir
        index = os.path.join(hf_dir, _INDEX)
        if os.path.exists(index):
            with open(index) as f:
                self.weight_map: dict[str, str] = json.load(f)["weight_map"]
        elif os.path.exists(os.path.join(hf_dir, _SINGLE)):
            with self._open(_SINGLE) as f:
                self.weight_map = {k: _SINGLE for k in f.keys()}
        else:
            raise FileNotFoundError(
                f"no {_SINGLE} or {_INDEX} in {hf_dir!r}; only safetensors checkpoints are supported "
                "(convert a .bin checkpoint with save_pretrained(safe_serialization=True))"
            )
        self._handles: dict[str, object] = {}

    def _open(self, filename: str):
        return self._safe_open(os.path.join(self.hf_dir, filename), framework="pt", device="cpu")

    def _handle(self, name: str):
        if name not in self.weight_map:
            raise KeyError(f"tensor {name!r} is not in the checkpoint {self.hf_dir!r}")
        filename = self.weight_map[name]
        if filename not in self._handles:
            self._handles[filename] = self._open(filename).__enter__()
        return self._handles[filename]

    def keys(self) -> set[str]:
        return set(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def read(
        self, name: str, rows: Optional[tuple[int, int]] = None, cols: Optional[tuple[int, int]] = None
    ) -> torch.Tensor:
        sl = self._handle(name).get_slice(name)
        r = slice(*rows) if rows is not None else slice(None)
        if cols is None:
            return sl[r]
        return sl[r, slice(*cols)]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()


def load_hf_model(hf_dir: str, parallel_cfg, **config_overrides) -> tuple[ModelConfig, list]:
    """``ModelConfig.from_hf_config(hf_dir, **config_overrides)``, this rank's chunks built for
    ``parallel_cfg`` and the checkpoint's weights loaded into them."""
    from nemo_craft.models.provider import build_model  # lazy: megatron only when a model is built

    model_cfg = ModelConfig.from_hf_config(hf_dir, **config_overrides)
    chunks = build_model(model_cfg, parallel_cfg)
    load_hf_weights(chunks, model_cfg, hf_dir)
    return model_cfg, chunks


def load_hf_weights(chunks, model_cfg: ModelConfig, hf_dir: Optional[str] = None) -> None:
    """Copy this rank's shard of every parameter of ``chunks`` from the checkpoint ``hf_dir``
    (default ``model_cfg.hf_path``). No collectives: each rank reads its own slices. Raises for
    missing tensors, shape mismatches and checkpoint tensors the model has no place for."""
    from megatron.core import parallel_state

    hf_dir = hf_dir or model_cfg.hf_path
    if hf_dir is None:
        raise ValueError("load_hf_weights: no checkpoint directory (pass hf_dir or set model.hf_path)")
    reader = SafetensorsReader(hf_dir)
    try:
        _check_checkpoint_names(reader, model_cfg)
        tp = parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()
        etp = tp
        if model_cfg.num_experts is not None:  # an expert's weights are split over ETP, not TP
            etp = (
                parallel_state.get_expert_tensor_parallel_rank(),
                parallel_state.get_expert_tensor_parallel_world_size(),
            )
        with torch.no_grad():
            for chunk in chunks:
                for name, param in global_named_parameters(chunk):
                    rule = weight_rule(name, model_cfg)
                    for hf_name, shape in zip(rule.hf_names, rule.hf_shapes):
                        if reader.shape(hf_name) != shape:
                            raise ValueError(
                                f"{hf_name} in {hf_dir!r} has shape {list(reader.shape(hf_name))}, the model "
                                f"config expects {list(shape)}; the checkpoint and model config disagree"
                            )
                    shard = read_tp_shard(rule, reader.read, model_cfg, *(etp if is_expert_kind(rule.kind) else tp))
                    if tuple(shard.shape) != tuple(param.shape):
                        raise AssertionError(f"{name}: shard {tuple(shard.shape)} vs param {tuple(param.shape)}")
                    param.copy_(shard)
    finally:
        reader.close()


def _check_checkpoint_names(reader: SafetensorsReader, cfg: ModelConfig) -> None:
    needed = hf_tensor_names(cfg)
    missing = sorted(needed - reader.keys())
    if missing:
        raise ValueError(
            f"checkpoint {reader.hf_dir!r} lacks {len(missing)} tensors the model needs, e.g. "
            f"{missing[:4]}; check architecture / qk_layernorm / add_qkv_bias / tie_word_embeddings"
        )
    names = hf_names(cfg)
    extra = sorted(
        k
        for k in reader.keys() - needed
        if not k.endswith(names.ignored_suffixes) and not (k == names.output_layer and cfg.tie_word_embeddings)
    )
    if extra:
        raise ValueError(
            f"checkpoint {reader.hf_dir!r} has {len(extra)} tensors the model has no place for, "
            f"e.g. {extra[:4]}; the model config does not describe this checkpoint"
        )


def save_hf_checkpoint(
    chunks,
    model_cfg: ModelConfig,
    out_dir: str,
    *,
    dtype: Optional[str] = None,
    template_dir: Optional[str] = None,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Write the model as a Hugging Face checkpoint to ``out_dir`` (rank 0 writes).

    Collective: every rank of the world must call it. ``dtype`` ("fp32"/"bf16"; default the
    parameters' dtype) is the dtype written. ``template_dir`` (default ``model_cfg.hf_path``):
    its ``config.json`` and tokenizer files are copied, so the output loads like the original;
    without one, ``config.json`` is written from ``model_cfg``."""
    rank = dist.get_rank()
    out_dtype = _DTYPES[dtype] if dtype is not None else None
    gather = _RankZeroGather(chunks, model_cfg)
    writer = _ShardWriter(out_dir, max_shard_bytes) if rank == 0 else None
    for name in expected_names(model_cfg):
        merged = gather(name)
        if rank == 0:
            for hf_name, tensor in merged.items():
                tensor = tensor.detach().to("cpu")
                writer.add(hf_name, tensor.to(out_dtype) if out_dtype is not None else tensor)
    if rank == 0:
        writer.finish()
        _write_config_and_tokenizer(model_cfg, out_dir, template_dir or model_cfg.hf_path, dtype)
    dist.barrier()


class _RankZeroGather:
    """``gather(name)``: the Hugging Face tensors of one megatron parameter, on rank 0 (None
    elsewhere). The parameter's pipeline stage (its DP-rank-0 replica) all-gathers the TP shards,
    its TP rank 0 merges them and sends them to rank 0. Every rank calls it for every name, in
    the same order; ranks outside the stage only pass through."""

    def __init__(self, chunks, cfg: ModelConfig):
        from megatron.core import parallel_state as ps

        self.cfg = cfg
        self.rank = dist.get_rank()
        self.owners = _owners(chunks, cfg)
        self.local = {name: param for chunk in chunks for name, param in global_named_parameters(chunk)}
        self.in_dp_replica_zero = ps.get_data_parallel_rank(with_context_parallel=True) == 0
        self.tp_group, self.tp_size = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size()
        self.in_expert_dp_replica_zero, self.etp_group, self.etp_size = self.in_dp_replica_zero, None, 1
        if cfg.num_experts is not None:  # experts: one owner per EP rank, shards over ETP
            self.in_expert_dp_replica_zero = ps.get_expert_data_parallel_rank() == 0
            self.etp_group = ps.get_expert_tensor_parallel_group()
            self.etp_size = ps.get_expert_tensor_parallel_world_size()
        self.pp_rank = ps.get_pipeline_model_parallel_rank()
        self.device = next(p.device for chunk in chunks for p in chunk.parameters())

    def __call__(self, name: str) -> Optional[dict[str, torch.Tensor]]:
        owner, owner_pp = self.owners[name]
        rule = weight_rule(name, self.cfg)
        merged = None
        expert = is_expert_kind(rule.kind)
        holds = name in self.local if expert else True  # only its EP rank's stage holds an expert
        in_replica_zero = self.in_expert_dp_replica_zero if expert else self.in_dp_replica_zero
        if in_replica_zero and self.pp_rank == owner_pp and holds:
            shard = self.local[name].detach().contiguous()
            if rule.kind == REPLICATED:
                shards = [shard]  # every TP rank holds the same tensor
            else:
                group, size = (self.etp_group, self.etp_size) if expert else (self.tp_group, self.tp_size)
                shards = [torch.empty_like(shard) for _ in range(size)]
                dist.all_gather(shards, shard, group=group)
            if self.rank == owner:
                merged = merge_tp_shards(rule, shards, self.cfg)
                if owner != 0:
                    for hf_name in rule.hf_names:
                        dist.send(merged[hf_name].contiguous(), dst=0)
        if self.rank == 0 and owner != 0:
            merged = {}
            for hf_name, shape in zip(rule.hf_names, rule.hf_shapes):
                merged[hf_name] = torch.empty(shape, dtype=_DTYPES[self.cfg.params_dtype], device=self.device)
                dist.recv(merged[hf_name], src=owner)
        return merged if self.rank == 0 else None


def _owners(chunks, cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """canonical name -> (global rank, pp rank) of the TP-rank-0, DP-rank-0 holder."""
    from megatron.core import parallel_state as ps

    mine: list[str] = []
    if ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank(with_context_parallel=True) == 0:
        mine = [
            name
            for chunk in chunks
            for name, _ in global_named_parameters(chunk)
            if not is_expert_kind(weight_rule(name, cfg).kind)
        ]
    if (
        cfg.num_experts is not None
        and ps.get_expert_tensor_parallel_rank() == 0
        and ps.get_expert_data_parallel_rank() == 0
    ):
        mine += [
            name
            for chunk in chunks
            for name, _ in global_named_parameters(chunk)
            if is_expert_kind(weight_rule(name, cfg).kind)
        ]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (ps.get_pipeline_model_parallel_rank(), mine))
    owners: dict[str, tuple[int, int]] = {}
    for rank, (pp_rank, names) in enumerate(gathered):
        for name in names:
            if name == "output_layer.weight" and cfg.tie_word_embeddings:
                continue  # the last stage's copy of the tied embedding; exported from the first stage
            owners.setdefault(name, (rank, pp_rank))
    missing = [n for n in expected_names(cfg) if n not in owners]
    if missing:
        raise AssertionError(f"no rank holds {missing[:4]}")
    return owners


class _ShardWriter:
    """Accumulates tensors and writes safetensors files of at most ``max_bytes`` each."""

    def __init__(self, out_dir: str, max_bytes: int):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.current and self.current_bytes + size > self.max_bytes:
            self._flush()
        self.current[name] = tensor.contiguous()
        self.current_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        tmp = f"part-{len(self.files):05d}.safetensors.tmp"
        save_file(self.current, os.path.join(self.out_dir, tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def finish(self) -> None:
        if self.current:
            self._flush()
        n = len(self.files)
        weight_map = {}
        for i, (tmp, names) in enumerate(self.files):
            final = _SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.out_dir, tmp), os.path.join(self.out_dir, final))
            weight_map.update({name: final for name in names})
        if n > 1:
            with open(os.path.join(self.out_dir, _INDEX), "w") as f:
                json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f, indent=2)


def _write_config_and_tokenizer(
    cfg: ModelConfig, out_dir: str, template_dir: Optional[str], dtype: Optional[str]
) -> None:
    config_path = os.path.join(out_dir, "config.json")
    if template_dir and os.path.exists(os.path.join(template_dir, "config.json")):
        with open(os.path.join(template_dir, "config.json")) as f:
            config = json.load(f)
    else:
        config = cfg.to_hf_config()
    written = _DTYPES[dtype or cfg.params_dtype]
    config["torch_dtype"] = config["dtype"] = "bfloat16" if written == torch.bfloat16 else "float32"
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    if template_dir:
        for name in TOKENIZER_FILES:
            src = os.path.join(template_dir, name)
            if os.path.exists(src) and os.path.abspath(src) != os.path.abspath(os.path.join(out_dir, name)):
                shutil.copy(src, os.path.join(out_dir, name))
