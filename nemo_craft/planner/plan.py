"""A plan: parameters and memory of every pipeline position of a layout, and whether it fits.

    plan = make_plan(model_cfg, parallel_cfg, cluster, workload)
    print(plan.format())            # the table ``nemo-craft plan`` prints
    plan.to_dict()                  # the object ``nemo-craft plan --json`` prints

Every TP and DP rank of a pipeline stage holds the same tensors, so one row per pipeline rank
(with its virtual-pipeline chunks) covers every (tp, pp, vpp) position. A layout that does not
divide, or whose largest rank does not fit in the GPU, is refused with the reason and, when one
exists, the smallest layout (fewest model-parallel GPUs, then fewest pipeline stages) that fits,
on this cluster or else on the smallest larger one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.planner.config import ClusterConfig, Workload
from nemo_craft.planner.generation import GenerationMemory, generation_memory, training_cluster
from nemo_craft.planner.layout import candidate_layouts, layout_problems, layout_warnings
from nemo_craft.planner.memory import GIB, RankMemory, rank_memory
from nemo_craft.planner.meta_build import StageParams, count_all_stages, estimate_stages

__all__ = ["Plan", "RankPlan", "Suggestion", "make_plan", "fit_layout"]

_MAX_NODES_SEARCHED = 128


@dataclass
class RankPlan:
    stage: StageParams
    memory: RankMemory


@dataclass
class Suggestion:
    parallel: Any
    cluster: ClusterConfig
    peak_bytes: float
    workload: Workload
    more_nodes: bool = False
    """True when the suggestion needs a larger cluster than the one planned."""
    workload_changed: bool = False
    """True when it also needs full recomputation and micro-batches of one trajectory."""

    def overrides(self) -> list[str]:
        """The command-line overrides that select this layout."""
        p = self.parallel
        out = [
            f"parallel.tensor_model_parallel_size={p.tensor_model_parallel_size}",
            f"parallel.pipeline_model_parallel_size={p.pipeline_model_parallel_size}",
            "parallel.virtual_pipeline_model_parallel_size=null",
            f"parallel.sequence_parallel={str(p.sequence_parallel).lower()}",
            f"parallel.use_distributed_optimizer={str(p.use_distributed_optimizer).lower()}",
        ]
        if p.expert_model_parallel_size > 1 or p.expert_tensor_parallel_size is not None:
            out.append(f"parallel.expert_model_parallel_size={p.expert_model_parallel_size}")
            out.append(f"parallel.expert_tensor_parallel_size={p.expert_tensor_size}")
        if self.more_nodes:
            out.append(f"cluster.nodes={self.cluster.nodes}")
        if self.workload_changed:
            out += [
                f"parallel.recompute_granularity={self.workload.recompute}",
                "parallel.recompute_method=uniform",
                "parallel.recompute_num_layers=1",
                f"trainer.micro_batch_size={self.workload.micro_batch_size}",
            ]
        return out

    def describe(self) -> str:
        dp = self.cluster.world_size // self.parallel.model_parallel_size
        return (
            " ".join(self.overrides())
            + f"  (DP={dp}, peak {self.peak_bytes / GIB:.1f} GiB of {self.cluster.gpu_memory_gb:g})"
        )


@dataclass
class Plan:
    model_name: str
    model: Any
    parallel: Any
    cluster: ClusterConfig
    workload: Workload
    dp: Optional[int]
    padded_vocab: int
    total_params: Optional[int] = None
    expert_params: Optional[int] = None
    """Of total_params: every expert of every MoE layer (0 for a dense model)."""
    ranks: list[RankPlan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    suggestion: Optional[Suggestion] = None
    counted_vocab: Optional[int] = None
    """Padded vocabulary of the build that gave ``total_params``."""
    generation: Optional[GenerationMemory] = None
    """The GPUs that only generate (``rollout.placement=disaggregated``); None: training ranks generate."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def peak_bytes(self) -> Optional[float]:
        return max((r.memory.peak for r in self.ranks), default=None)

    @property
    def total_params_unpadded(self) -> Optional[int]:
        """The Hugging Face count: without megatron's vocabulary padding rows."""
        if self.total_params is None:
            return None
        rows = (self.counted_vocab or self.padded_vocab) - self.model.vocab_size
        copies = 1 if self.model.tie_word_embeddings else 2
        return self.total_params - rows * self.model.hidden_size * copies

    @property
    def active_params(self) -> Optional[int]:
        """Parameters a token passes through: all but the experts it is not routed to (the top-k
        of each MoE layer's experts, the dense parts whole); the total for a dense model."""
        if self.total_params is None:
            return None
        if not self.expert_params:
            return self.total_params
        unused = self.model.num_experts - self.model.moe_router_topk
        return self.total_params - self.expert_params * unused // self.model.num_experts

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict:
        budget = self.cluster.gpu_memory_gb * GIB
        ranks = []
        for r in self.ranks:
            m = r.memory
            terms = {k: v for k, v in dataclasses.asdict(m).items() if k != "microbatches_in_flight"}
            ranks.append(
                dict(
                    pp_rank=r.stage.pp_rank,
                    chunks=[
                        dict(
                            vp_stage=c.vp_stage,
                            first_layer=c.first_layer,
                            num_layers=c.num_layers,
                            params=c.params,
                            embedding_params=c.embedding_params,
                            pre_process=c.pre_process,
                            post_process=c.post_process,
                        )
                        for c in r.stage.chunks
                    ],
                    params=r.stage.params,
                    microbatches_in_flight=m.microbatches_in_flight,
                    memory_bytes=dict(terms, persistent=m.persistent, peak=m.peak),
                    memory_gib={
                        k: round(v / GIB, 3) for k, v in dict(terms, persistent=m.persistent, peak=m.peak).items()
                    },
                    peak_phase=m.phase,
                    fits=m.peak <= budget,
                )
            )
        p = self.parallel
        return dict(
            ok=self.ok,
            fits=self.ok and self.peak_bytes is not None and self.peak_bytes <= budget,
            model=dict(name=self.model_name, **dataclasses.asdict(self.model)),
            parallel=dict(dataclasses.asdict(p), data_parallel_size=self.dp),
            cluster=dict(dataclasses.asdict(self.cluster), world_size=self.cluster.world_size),
            workload=dataclasses.asdict(self.workload),
            padded_vocab_size=self.padded_vocab,
            total_params=self.total_params,
            total_params_unpadded=self.total_params_unpadded,
            active_params=self.active_params,
            expert_params=self.expert_params,
            ranks=ranks,
            peak_gib=None if self.peak_bytes is None else round(self.peak_bytes / GIB, 3),
            gpu_memory_gib=self.cluster.gpu_memory_gb,
            problems=self.problems,
            warnings=self.warnings,
            generation=None
            if self.generation is None
            else dict(
                dataclasses.asdict(self.generation),
                peak_gib=round(self.generation.peak / GIB, 3),
                fits=self.generation.peak <= budget,
            ),
            suggestion=None
            if self.suggestion is None
            else dict(
                parallel=dataclasses.asdict(self.suggestion.parallel),
                cluster=dataclasses.asdict(self.suggestion.cluster),
                peak_gib=round(self.suggestion.peak_bytes / GIB, 3),
                overrides=self.suggestion.overrides(),
            ),
        )

    def format(self) -> str:
        m, p, c, w = self.model, self.parallel, self.cluster, self.workload
        lines = []
        head = (
            f"model {self.model_name} ({m.architecture}, {m.num_layers} layers, hidden {m.hidden_size}, "
            f"{m.num_attention_heads}q/{m.num_query_groups}kv heads x {m.kv_channels}, {m.params_dtype})"
        )
        if self.total_params is not None:
            head += f": {self.total_params:,} parameters ({_b(self.total_params)})"
            if self.expert_params:
                head += (
                    f", {self.active_params:,} active ({_b(self.active_params)}: "
                    f"{m.moe_router_topk} of {m.num_experts} experts a token)"
                )
        lines.append(head)
        lines.append(
            f"cluster {c.nodes} node(s) x {c.gpus_per_node} GPUs = {c.world_size}, {c.gpu_memory_gb:g} GiB each; "
            "layout "
            f"TP={p.tensor_model_parallel_size} PP={p.pipeline_model_parallel_size} "
            f"VPP={p.virtual_pipeline_model_parallel_size or 1} CP={p.context_parallel_size} "
            f"DP={self.dp if self.dp else '-'}{_experts(m, p)}; SP {_on(p.sequence_parallel)}, "
            f"distributed optimizer {_on(p.use_distributed_optimizer)}; "
            f"vocabulary {m.vocab_size} -> {self.padded_vocab}"
        )
        lines.append(
            f"workload: {w.trajectories_per_step} trajectories/step, seq {w.seq_length} (+{w.privileged_tokens} "
            f"privileged), micro-batch {w.micro_batch_size}, recompute {w.recompute}, {w.attention} attention, "
            f"loss chunk {w.logits_chunk_tokens} tokens, generation KV cache "
            f"{_generation(w)}, "
            f"reference on GPU: {_yes(w.reference_on_gpu)}, "
            f"overhead {w.overhead_gb:g} GiB"
        )
        if self.generation is not None:
            dp = f"DP={self.dp}" if self.dp else "the layout"
            lines.append(f"training: {c.world_size - self.generation.gpus} GPU(s) ({dp}), no KV cache")
            lines.append(self.generation.format(c.gpu_memory_gb))
        if self.ranks:
            lines.append("")
            lines.extend(self._table())
        for note in self.warnings:
            lines.append(f"note: {note}")
        if self.ok and self.peak_bytes is not None:
            worst = max(self.ranks, key=lambda r: r.memory.peak)
            lines.append(
                f"fits: peak {self.peak_bytes / GIB:.1f} GiB of {c.gpu_memory_gb:g} GiB "
                f"(pipeline rank {worst.stage.pp_rank}, {worst.memory.phase} phase)"
            )
        for problem in self.problems:
            lines.append(f"error: {problem}")
        if self.suggestion is not None:
            lines.append(f"would fit: {self.suggestion.describe()}")
        return "\n".join(lines)

    def _table(self) -> list[str]:
        cols = [
            "pp",
            "layers",
            "params/GPU",
            "weights",
            "grads",
            "optim",
            "ref",
            "act/mb",
            "act/mb fullrc",
            "in-flight",
            "train-act",
            "logits+loss",
            "experience",
            "kv-cache",
            "overhead",
            "peak",
            "phase",
        ]
        moe = self.model.num_experts is not None
        if moe:  # of weights: the rank's experts; the all-to-all's buffers (in train and experience)
            cols[4:4] = ["experts", "router"]
            cols.insert(cols.index("experience") + 1, "a2a")
        rows = []
        for r in self.ranks:
            m = r.memory
            rows.append(
                [
                    str(r.stage.pp_rank),
                    _layers(r.stage),
                    _b(r.stage.params),
                    _g(m.weights),
                    _g(m.grads),
                    _g(m.optimizer),
                    _g(m.reference),
                    _g(m.activations_per_microbatch),
                    _g(m.activations_per_microbatch_full_recompute),
                    f"{m.microbatches_in_flight:g}",
                    _g(m.train_activations),
                    _g(m.logits + m.loss_chunk),
                    _g(m.experience),
                    _g(m.kv_cache),
                    _g(m.overhead),
                    _g(m.peak),
                    m.phase,
                ]
            )
            if moe:
                rows[-1][4:4] = [_g(m.expert_weights), _g(m.router_weights)]
                rows[-1].insert(cols.index("a2a"), _g(m.dispatcher_buffers))
        widths = [max(len(col), *(len(row[i]) for row in rows)) for i, col in enumerate(cols)]
        out = ["  ".join(col.rjust(wd) for col, wd in zip(cols, widths))]
        out += ["  ".join(cell.rjust(wd) for cell, wd in zip(row, widths)) for row in rows]
        out.append(
            "(memory in GiB per GPU; every TP and DP rank of a pipeline stage holds the same; "
            "act/mb = the stage's activations for one micro-batch)"
        )
        return out


def _b(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


def _g(x: float) -> str:
    return f"{x / GIB:.1f}"


def _experts(m, p) -> str:
    if m.num_experts is None:
        return ""
    return f" EP={p.expert_model_parallel_size} ETP={p.expert_tensor_size}"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _layers(stage: StageParams) -> str:
    return ",".join(f"{c.first_layer}-{c.first_layer + c.num_layers - 1}" for c in stage.chunks if c.num_layers)


# ---------------------------------------------------------------------- planning


def _memory(model, parallel, cluster, workload, stages) -> list[RankMemory]:
    dp = cluster.world_size // parallel.model_parallel_size
    padded = model.padded_vocab_size(parallel.tensor_model_parallel_size)
    return [rank_memory(model, parallel, workload, s, dp=dp, padded_vocab=padded) for s in stages]


def fit_layout(model, parallel, cluster, workload) -> Optional[Suggestion]:
    """The smallest layout (fewest model-parallel GPUs, then fewest stages) that divides and fits
    on ``cluster``; failing that, the same with full recomputation and micro-batches of one
    trajectory; failing that, on the smallest cluster with 2x, 4x, ... the nodes (up to 128).
    None if none does."""
    budget = cluster.gpu_memory_gb * GIB
    variants = [workload]
    if workload.recompute != "full" or workload.micro_batch_size > 1:
        variants.append(dataclasses.replace(workload, recompute="full", micro_batch_size=1))
    nodes = cluster.nodes
    while nodes <= _MAX_NODES_SEARCHED:
        trial = dataclasses.replace(cluster, nodes=nodes)
        for w in variants:
            for candidate in candidate_layouts(model, parallel, trial, w):
                stages = estimate_stages(model, candidate)
                peak = max(m.peak for m in _memory(model, candidate, trial, w, stages))
                if peak <= budget:
                    return Suggestion(
                        parallel=candidate,
                        cluster=trial,
                        peak_bytes=peak,
                        workload=w,
                        more_nodes=nodes != cluster.nodes,
                        workload_changed=w is not workload,
                    )
        nodes *= 2
    return None


def make_plan(
    model, parallel, cluster: ClusterConfig, workload: Workload, *, model_name: str = "model", suggest: bool = True
) -> Plan:
    """Plan ``parallel`` for ``model`` on ``cluster``: meta-built parameter counts of every
    pipeline rank, their memory, and the verdict (``plan.problems`` empty when it runs and fits)."""
    tp = parallel.tensor_model_parallel_size
    plan = Plan(
        model_name=model_name,
        model=model,
        parallel=parallel,
        cluster=cluster,
        workload=workload,
        dp=None,
        padded_vocab=model.padded_vocab_size(tp),
    )
    full_cluster = cluster
    cluster, split_problem = training_cluster(cluster, workload.generation_gpus)
    if split_problem:
        plan.problems = [split_problem]
        return plan
    plan.problems = layout_problems(model, parallel, cluster, workload)
    if not plan.problems:
        plan.dp = cluster.world_size // parallel.model_parallel_size
        plan.warnings = layout_warnings(model, parallel, cluster, workload, plan.dp)
        stages = count_all_stages(model, parallel)
        ep, etp = parallel.expert_model_parallel_size, parallel.expert_tensor_size
        plan.total_params = sum(s.model_share(tp, ep, etp) for s in stages)
        plan.expert_params = sum(s.expert_share(ep, etp) for s in stages)
        memories = _memory(model, parallel, cluster, workload, stages)
        plan.ranks = [RankPlan(stage=s, memory=m) for s, m in zip(stages, memories)]
        budget = cluster.gpu_memory_gb * GIB
        worst = max(plan.ranks, key=lambda r: r.memory.peak)
        if worst.memory.peak > budget:
            m = worst.memory
            plan.problems.append(
                f"does not fit: pipeline rank {worst.stage.pp_rank} needs {m.peak / GIB:.1f} GiB "
                f"(persistent {m.persistent / GIB:.1f} + {m.phase} "
                f"{max(m.train_activations, m.experience, m.kv_cache) / GIB:.1f} + overhead {m.overhead / GIB:.1f}) "
                f"> cluster.gpu_memory_gb={cluster.gpu_memory_gb:g}"
            )
    else:
        # The model's total does not depend on the layout: count it at TP=PP=1 (one build).
        stages = estimate_stages(model, ParallelConfig())
        plan.total_params = sum(s.model_share(1) for s in stages)
        plan.expert_params = sum(s.expert_share() for s in stages)
        plan.counted_vocab = model.padded_vocab_size(1)
    if workload.generation_gpus:
        plan.generation = generation_memory(model, workload, plan.total_params_unpadded, model.padded_vocab_size(1))
        if plan.dp and plan.generation.engines > plan.dp:
            plan.problems.append(
                f"rollout.generation_ranks={workload.generation_gpus}: {plan.generation.engines} engines > the "
                f"{plan.dp} data-parallel ranks that train; each engine serves whole data-parallel ranks, allowed: "
                f"1 to {plan.dp * workload.generation_tp} generation GPUs"
            )
        if plan.generation.peak > full_cluster.gpu_memory_gb * GIB:
            plan.problems.append(
                f"generation does not fit: {plan.generation.peak / GIB:.1f} GiB per generation GPU > "
                f"cluster.gpu_memory_gb={full_cluster.gpu_memory_gb:g}; lower rollout.generation.kv_cache_gb or "
                "widen the engines (parallel.tensor_model_parallel_size)"
            )
    else:
        problem = parallel.generation_problem()
        if problem:  # planned all the same: the memory of such a layout is still worth seeing
            plan.problems.append(problem)
    if plan.problems and suggest:
        plan.suggestion = fit_layout(model, parallel, cluster, workload)
        if plan.suggestion is None:
            plan.problems.append(f"no layout fits on up to {_MAX_NODES_SEARCHED} nodes of this kind")
    return plan


def _generation(w) -> str:
    if w.generation_gpus:
        return "on the generation GPUs (below)"
    if w.generation_kv_gb is None:
        return "static"
    if w.generation_weights_copy:
        return f"vllm {w.generation_kv_gb:g} GiB + a copy of the weights"
    return f"dynamic {w.generation_kv_gb:g} GiB"
