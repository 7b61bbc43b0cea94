"""Parameters of each pipeline position, counted on models built on the meta device.

For every pipeline rank ``p`` (and each of its virtual-pipeline chunks) the planner builds the
same megatron ``GPTModel`` the trainer builds (``nemo_craft.models.provider``'s
``make_transformer_config`` and ``gpt_model``), with its tensors on the meta device: shapes and
dtypes, no memory, no GPU, no initialisation. No process group of the planned size exists, so
the model is given a :class:`ProcessGroupCollection` of stand-in groups that answer ``size()``
and ``rank()`` for the planned TP/PP position; megatron's layer counting reads the pipeline rank
from ``parallel_state``, which is pointed at the same position for the duration of the build.

Every TP rank of a pipeline stage holds tensors of the same shapes, so one build per pipeline
rank covers every (tp, pp, vpp) position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

from nemo_craft.parallel.config import ParallelConfig

__all__ = ["ChunkParams", "StageParams", "count_stage_params", "count_all_stages", "estimate_stages"]


@dataclass
class ChunkParams:
    """One model chunk (one virtual-pipeline stage) of a pipeline rank, per TP rank."""

    vp_stage: Optional[int]
    first_layer: int
    """1-based number of its first transformer layer (0 when it holds none)."""
    num_layers: int
    params: int
    """Parameters on one TP rank."""
    embedding_params: int
    """Of which: the word embedding and/or the output layer (vocabulary-sized)."""
    sharded_params: int
    """Of which: tensors split over TP (the rest is replicated on every TP rank)."""
    duplicate_params: int
    """Of which: the last stage's copy of a tied embedding (counted once in the model total)."""
    pre_process: bool
    post_process: bool
    expert_params: int = 0
    """Of which: this rank's experts (``num_experts / EP`` per MoE layer); not in sharded_params."""
    expert_sharded_params: int = 0
    """Of which: expert tensors split over ETP (the rest of the experts' is replicated over ETP)."""
    router_params: int = 0
    """Of which: the routers (replicated on every rank; frozen during RL by default)."""


@dataclass
class StageParams:
    """A pipeline rank: its chunks and their sums (per TP rank)."""

    pp_rank: int
    chunks: list[ChunkParams] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(c.params for c in self.chunks)

    @property
    def num_layers(self) -> int:
        return sum(c.num_layers for c in self.chunks)

    @property
    def embedding_params(self) -> int:
        return sum(c.embedding_params for c in self.chunks)

    @property
    def expert_params(self) -> int:
        return sum(c.expert_params for c in self.chunks)

    @property
    def router_params(self) -> int:
        return sum(c.router_params for c in self.chunks)

    def expert_share(self, ep: int = 1, etp: int = 1) -> int:
        """This stage's experts in the whole model (all EP and ETP ranks)."""
        sharded = sum(c.expert_sharded_params for c in self.chunks)
        return (sharded * etp + self.expert_params - sharded) * ep

    def model_share(self, tp: int, ep: int = 1, etp: int = 1) -> int:
        """This stage's contribution to the whole model's count (all TP, EP and ETP ranks,
        duplicates once)."""
        sharded = sum(c.sharded_params for c in self.chunks)
        replicated = self.params - sharded - self.expert_params
        duplicate = sum(c.duplicate_params for c in self.chunks)
        return (sharded - duplicate) * tp + replicated + self.expert_share(ep, etp)


class _StandInGroup:
    """Answers what megatron's constructors ask a process group: its size and this rank."""

    def __init__(self, size: int, rank: int) -> None:
        self._size, self._rank = size, rank

    def size(self) -> int:
        return self._size

    def rank(self) -> int:
        return self._rank

    def __repr__(self) -> str:
        return f"_StandInGroup(size={self._size}, rank={self._rank})"


@contextlib.contextmanager
def _planned_position(
    tp: int, pp: int, pp_rank: int, vpp: Optional[int], ep: int = 1, etp: Optional[int] = None
) -> Iterator[object]:
    """A ProcessGroupCollection of stand-in groups for (tp rank 0, ``pp_rank``), with megatron's
    parallel_state pointed at the same pipeline position; everything restored afterwards."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.process_groups_config import ProcessGroupCollection

    # megatron's get_pg_size()/get_pg_rank() answer 1/0 unless torch.distributed is initialised.
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    names = (
        "_MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE",
        "_MPU_TENSOR_MODEL_PARALLEL_RANK",
        "_MPU_PIPELINE_MODEL_PARALLEL_WORLD_SIZE",
        "_MPU_PIPELINE_MODEL_PARALLEL_RANK",
        "_VIRTUAL_PIPELINE_MODEL_PARALLEL_WORLD_SIZE",
    )
    saved = {name: getattr(ps, name) for name in names}
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher as dispatcher

    # The all-to-all dispatcher makes a class-wide CUDA stream on construction; a meta build
    # never dispatches, so a stand-in keeps the planner free of CUDA (and of the CPU mode).
    saved_stream = dispatcher.cuda_dtoh_stream
    if saved_stream is None:
        dispatcher.cuda_dtoh_stream = _StandInGroup(1, 0)
    try:
        ps._MPU_TENSOR_MODEL_PARALLEL_WORLD_SIZE = tp
        ps._MPU_TENSOR_MODEL_PARALLEL_RANK = 0
        ps._MPU_PIPELINE_MODEL_PARALLEL_WORLD_SIZE = pp
        ps._MPU_PIPELINE_MODEL_PARALLEL_RANK = pp_rank
        ps._VIRTUAL_PIPELINE_MODEL_PARALLEL_WORLD_SIZE = vpp
        groups = ProcessGroupCollection()
        groups.tp = _StandInGroup(tp, 0)
        groups.pp = _StandInGroup(pp, pp_rank)
        groups.cp = _StandInGroup(1, 0)
        # The MoE layer's groups (megatron's moe_utils names): experts split over EP, each
        # expert's matrices over ETP; data parallel sizes do not change any parameter's shape.
        etp = etp or tp
        groups.ep = _StandInGroup(ep, 0)
        groups.expt_tp = _StandInGroup(etp, 0)
        groups.tp_ep = _StandInGroup(etp * ep, 0)
        groups.expt_dp = _StandInGroup(1, 0)
        groups.tp_cp = _StandInGroup(tp, 0)
        groups.tp_dp_cp = _StandInGroup(tp, 0)
        # No embedding group: the constructor's tied-embedding all-reduce is skipped.
        groups.embd = None
        groups.pos_embd = None
        yield groups
    finally:
        for name, value in saved.items():
            setattr(ps, name, value)
        dispatcher.cuda_dtoh_stream = saved_stream
        if own_group:
            dist.destroy_process_group()


def count_stage_params(model_cfg, parallel_cfg, pp_rank: int) -> StageParams:
    """Build pipeline rank ``pp_rank``'s chunks on the meta device and count their parameters.

    ``model_cfg`` is a :class:`~nemo_craft.models.config.ModelConfig`, ``parallel_cfg`` a
    :class:`~nemo_craft.parallel.config.ParallelConfig`; the layout must already be valid
    (``nemo_craft.planner.layout.check_layout``). Context parallel and sequence parallel do not
    change any parameter and are left out of the build.
    """
    vpp = parallel_cfg.virtual_pipeline_model_parallel_size
    pp = parallel_cfg.pipeline_model_parallel_size
    stage = StageParams(pp_rank=pp_rank)
    for vp_stage in range(vpp) if vpp else [None]:
        pre = pp_rank == 0 and vp_stage in (None, 0)
        post = pp_rank == pp - 1 and (vp_stage is None or vp_stage == vpp - 1)
        model = _build_chunk(model_cfg, parallel_cfg, pp_rank, vp_stage, pre=pre, post=post)
        stage.chunks.append(_count_chunk(model, vp_stage, pre, post))
    return stage


def _build_chunk(model_cfg, parallel_cfg, pp_rank: int, vp_stage: Optional[int], *, pre: bool, post: bool):
    """One GPTModel chunk of pipeline rank ``pp_rank`` (TP rank 0) on the meta device."""
    import torch

    from nemo_craft.models.provider import (  # lazy: megatron only when a plan builds the model
        gpt_model,
        make_transformer_config,
    )

    tp = parallel_cfg.tensor_model_parallel_size
    # With experts, TP needs sequence parallel (the dispatcher's tokens); it changes no shape.
    sp = parallel_cfg.sequence_parallel and model_cfg.num_experts is not None
    build_cfg = dataclasses.replace(parallel_cfg, context_parallel_size=1, sequence_parallel=sp)
    with (
        _planned_position(
            tp,
            build_cfg.pipeline_model_parallel_size,
            pp_rank,
            build_cfg.virtual_pipeline_model_parallel_size,
            build_cfg.expert_model_parallel_size,
            build_cfg.expert_tensor_size,
        ) as groups,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        # CPU initialisation on meta tensors costs nothing, and it is what marks the TP-split
        # weights (``tensor_model_parallel``): without it they carry no attribute.
        config = make_transformer_config(model_cfg, build_cfg, use_cpu_initialization=True, perform_initialization=True)
        with torch.device("meta"):
            return gpt_model(
                config,
                model_cfg,
                tp,
                vp_stage=vp_stage,
                pre_process=pre,
                post_process=post,
                use_te=False,
                pg_collection=groups,
            )


def count_all_stages(model_cfg, parallel_cfg) -> list[StageParams]:
    """:func:`count_stage_params` for every pipeline rank, in order."""
    return [count_stage_params(model_cfg, parallel_cfg, r) for r in range(parallel_cfg.pipeline_model_parallel_size)]


def _count_chunk(model, vp_stage, pre: bool, post: bool) -> ChunkParams:
    params = sharded = embedding = duplicate = experts = experts_sharded = router = 0
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        params += n
        if _is_expert(name):
            experts += n
            experts_sharded += n if getattr(p, "tensor_model_parallel", False) else 0
            continue
        if ".mlp.router." in name:
            router += n
        if getattr(p, "tensor_model_parallel", False):
            sharded += n
        if name.startswith(("embedding.word_embeddings", "output_layer")):
            embedding += n
        if getattr(p, "shared", False) and getattr(p, "shared_embedding", False) and not pre:
            duplicate += n
    layers = list(model.decoder.layers)
    return ChunkParams(
        vp_stage=vp_stage,
        first_layer=layers[0].layer_number if layers else 0,
        num_layers=len(layers),
        params=params,
        embedding_params=embedding,
        sharded_params=sharded,
        duplicate_params=duplicate,
        pre_process=pre,
        post_process=post,
        expert_params=experts,
        expert_sharded_params=experts_sharded,
        router_params=router,
    )


def _is_expert(name: str) -> bool:
    """A parameter of an MoE layer's experts (megatron: ``mlp.experts.local_experts.i`` when
    sequential, ``mlp.experts.weight*`` when grouped)."""
    return ".mlp.experts." in name


# ---------------------------------------------------------------- quick estimate for the search

_PIECES: dict = {}


def estimate_stages(model_cfg, parallel_cfg) -> list[StageParams]:
    """The same StageParams as :func:`count_all_stages`, assembled from the pieces of one small
    meta build per (TP, EP, ETP) (a dense layer, an MoE layer, the word embedding, the final
    norm, the output layer), so that the layout search does not build every candidate in full.
    A test checks that both agree."""
    tp = parallel_cfg.tensor_model_parallel_size
    pp = parallel_cfg.pipeline_model_parallel_size
    vpp = parallel_cfg.virtual_pipeline_model_parallel_size or 1
    ep, etp = parallel_cfg.expert_model_parallel_size, parallel_cfg.expert_tensor_size
    key = (repr(model_cfg), tp, ep, etp)
    if key not in _PIECES:
        _PIECES[key] = _pieces(model_cfg, tp, ep, etp)
    pieces = _PIECES[key]
    tied = model_cfg.tie_word_embeddings
    pattern = model_cfg.moe_layer_pattern()
    per_chunk = model_cfg.num_layers // (pp * vpp)
    stages = []
    for r in range(pp):
        stage = StageParams(pp_rank=r)
        for v in range(vpp):
            pre, post = r == 0 and v == 0, r == pp - 1 and v == vpp - 1
            first = (v * pp + r) * per_chunk
            parts = [pieces["moe_layer" if pattern[i] else "layer"] for i in range(first, first + per_chunk)]
            embedding = duplicate = 0
            if pre:
                parts.append(pieces["embedding"])
                embedding += pieces["embedding"][0]
            if post:
                parts.append(pieces["final_norm"])
                # Tied: the last stage keeps a copy of the embedding as its output layer.
                output = pieces["embedding"] if tied and not pre else pieces["output"]
                parts.append(output)
                embedding += output[0]
                duplicate = output[0] if tied and not pre else 0
            total = [sum(part[i] for part in parts) for i in range(5)]
            stage.chunks.append(
                ChunkParams(
                    vp_stage=v if vpp > 1 else None,
                    first_layer=first + 1,
                    num_layers=per_chunk,
                    params=total[0],
                    embedding_params=embedding,
                    sharded_params=total[1],
                    duplicate_params=duplicate,
                    pre_process=pre,
                    post_process=post,
                    expert_params=total[2],
                    expert_sharded_params=total[3],
                    router_params=total[4],
                )
            )
        stages.append(stage)
    return stages


_PIECE_NAMES = ("layer", "moe_layer", "embedding", "final_norm", "output")


def _pieces(model_cfg, tp: int, ep: int = 1, etp: Optional[int] = None) -> dict[str, tuple[int, ...]]:
    """(params, TP-sharded, expert, ETP-sharded expert, router params) per rank of: a dense
    layer, an MoE layer ((0, ...) for a dense model), the word embedding, the final norm, the
    untied output layer ((0, ...) when tied)."""
    if model_cfg.num_experts is None:
        small = dataclasses.replace(model_cfg, num_layers=1)
    else:  # layer 1 dense, layer 2 with experts
        small = dataclasses.replace(model_cfg, num_layers=2, decoder_sparse_step=1, mlp_only_layers=(0,))
    parallel = ParallelConfig(
        tensor_model_parallel_size=tp,
        sequence_parallel=tp > 1 and model_cfg.num_experts is not None,
        expert_model_parallel_size=ep,
        expert_tensor_parallel_size=etp,
    )
    model = _build_chunk(small, parallel, 0, None, pre=True, post=True)
    out = {name: [0] * 5 for name in _PIECE_NAMES}
    for name, p in model.named_parameters():
        if name.startswith("embedding."):
            part = "embedding"
        elif name.startswith("output_layer"):
            part = "output"
        elif name.startswith("decoder.final_layernorm"):
            part = "final_norm"
        else:
            part = "moe_layer" if name.startswith("decoder.layers.1.") else "layer"
        n, split = p.numel(), getattr(p, "tensor_model_parallel", False)
        counts = out[part]
        counts[0] += n
        if _is_expert(name):
            counts[2] += n
            counts[3] += n if split else 0
            continue
        counts[1] += n if split else 0
        counts[4] += n if ".mlp.router." in name else 0
    return {k: tuple(v) for k, v in out.items()}
