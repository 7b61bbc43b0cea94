"""The RL loop (NeMo-Aligner style): a trainer object with ``fit()``.

Per step: draw N tasks (split over data-parallel ranks), roll out G siblings each (all episodes
batched per turn), score them, prepare experience (old / teacher / reference log-probs, GRPO
advantages, credits), train one optimizer step over micro-batches through megatron's schedule,
update the controller from the step's global gate activity, log, validate every
``val_every`` steps, checkpoint every ``save_every`` steps. The method is only the loss config.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from nemo_craft.config import RunConfig, rollout_config, to_dataclass
from nemo_craft.losses import ControllerState, policy_loss
from nemo_craft.losses.policy import check_targets
from nemo_craft.parallel.ddp import OptimConfig
from nemo_craft.seeds import WARM_START_FIRST_TASK, step_sampling_seed, train_task_seed0
from nemo_craft.trainer.packing import select_sequences
from nemo_craft.trainer.warm_start import WarmStartConfig

__all__ = ["TrainerConfig", "CraftTrainer", "NonFiniteLossError", "training_loss_fn"]


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainerConfig:
    max_steps: int = 150
    micro_batch_size: int = 1
    """Sequences per micro-batch, padded to the step's longest (when not packing)."""
    max_tokens_per_microbatch: Optional[int] = None
    """Pack sequences into micro-batches of at most this many tokens instead (every pass: old,
    teacher, reference log-probs and training); ``micro_batch_size`` is then not used. Needs
    model.core_attention=sdpa or Transformer Engine. None: padded micro-batches."""
    lr: float = 1e-6
    """Peak learning rate of RL (the paper's, for pretrained models; the CPU demo sets its own)."""
    min_lr: float = 1e-6
    lr_warmup_steps: int = 0
    lr_decay_style: str = "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    clip_grad: float = 1.0
    val_every: int = 10
    """Validate every this many steps (and before the first and after the last); 0: never."""
    val_tasks: int = 128
    val_seed_offset: int = 1_000_000
    """Validation task seeds start here, so they never overlap training tasks."""
    max_nan_steps: int = 3
    """A step whose loss or gradient is not finite is skipped and counted; this many in a row stop the run."""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)

    def __post_init__(self) -> None:
        if isinstance(self.warm_start, dict):
            self.warm_start = WarmStartConfig(**self.warm_start)
        if self.max_tokens_per_microbatch is not None and self.max_tokens_per_microbatch < 1:
            raise ValueError(f"trainer.max_tokens_per_microbatch={self.max_tokens_per_microbatch}: need >= 1 or null")
        if self.max_steps < 0 or self.micro_batch_size < 1 or self.max_nan_steps < 1:
            raise ValueError(
                f"trainer.max_steps={self.max_steps}, micro_batch_size={self.micro_batch_size}, "
                f"max_nan_steps={self.max_nan_steps}: need >= 0, >= 1, >= 1"
            )

    def optim(self, lr: Optional[float] = None) -> OptimConfig:
        return OptimConfig(
            lr=lr or self.lr,
            min_lr=min(self.min_lr, lr or self.lr),
            lr_warmup_steps=self.lr_warmup_steps,
            lr_decay_style=self.lr_decay_style,
            weight_decay=self.weight_decay,
            adam_beta1=self.adam_beta1,
            adam_beta2=self.adam_beta2,
            clip_grad=self.clip_grad,
        )


def training_loss_fn(batch, targets_BS, cfg, state, *, tp_group=None, vocab_size=None, temperature=1.0):
    """The loss function of a step's training pass (``megatron_step.forward_backward``'s
    ``loss_fn``): (micro-batch with its "index" into ``batch`` and its "targets", logits) ->
    (sum of its per-token losses, its valid tokens, metrics as device tensors).

    The checks run here, once per step: the step batch was checked when built, the targets are
    checked now; each micro-batch then runs without a host synchronisation
    (docs/design.md#no-host-sync-in-the-micro-batch-loop). Logits that are not finite make the
    loss not finite, which ``CraftTrainer._optimizer_step`` catches once per step.
    """
    check_targets(targets_BS, batch.loss_mask, vocab_size)

    def loss_fn(mb, logits):
        # a packed sequence: its length; context parallel: this rank's columns
        columns = mb.get("cp_columns")
        sub = select_sequences(batch, mb["index"], mb["targets"].shape[1], columns)
        loss_sum, metrics = policy_loss(
            logits,
            mb["targets"],
            sub,
            cfg,
            state,
            tp_group=tp_group,
            num_global_tokens=1,
            vocab_size=vocab_size,
            temperature=temperature,
            validate=False,
            positions_S=columns,
        )
        return loss_sum, sub.loss_mask.sum(), metrics

    return loss_fn


_EPISODE_FIELDS = {
    "reward": lambda t: t.reward,
    "success": lambda t: float(t.success),
    "score": lambda t: t.score,
    "turns": lambda t: t.num_turns,
    "invalid": lambda t: t.n_invalid,
}
"""Per-episode numbers the trainer averages over the data-parallel ranks' episodes, by name."""


def _read_on_host(*named: dict) -> list[dict]:
    """The dicts of 0-d tensors as dicts of floats, read in one host sync (once per step)."""
    keys = [(i, k) for i, d in enumerate(named) for k in sorted(d)]
    values = torch.stack([named[i][k].double().reshape(()) for i, k in keys]).tolist() if keys else []
    out = [{} for _ in named]
    for (i, k), v in zip(keys, values):
        out[i][k] = v
    return out


class CraftTrainer:
    """Builds everything from the composed config; ``fit()`` runs the loop."""

    def __init__(self, cfg, *, init_method: Optional[str] = None):
        """Builds and validates every section of the config: a bad value is refused here, before
        any process group, model or weight exists."""
        from nemo_craft.envs import env_factory
        from nemo_craft.trainer.checkpoint import CheckpointConfig
        from nemo_craft.trainer.logger import LoggingConfig

        self.cfg = cfg
        self.run = RunConfig.from_omegaconf(cfg)
        self.tcfg = to_dataclass(TrainerConfig, cfg.trainer, "trainer")
        self.rollout_cfg = rollout_config(cfg)
        self.ckpt_cfg = to_dataclass(CheckpointConfig, cfg.checkpoint, "checkpoint")
        self.log_cfg = to_dataclass(LoggingConfig, cfg.logging, "logging")
        self.tcfg.warm_start.check_pretrained(self.run.model.hf_path)
        self.rollout_cfg.check_trainable()
        # the environment's config, engine and data checked here: inside the pool a failure only ends episodes
        env_factory(self.run.env_name, **dict(self.run.env_kwargs).get("config", {}))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.run.model.validate_layout(self.run.parallel)
        self.run.parallel.check_generation()
        from nemo_craft.rollout.backends import check_run

        check_run(self.rollout_cfg.backend, self.run.parallel, self.run.model)  # the backend's start-up refusals
        self.dp_size = self.run.parallel.data_parallel_size(world_size)
        self._check_batch_layout()
        self._init_method = init_method
        self.run_dir = Path(cfg.run_dir)

    # -- set-up -------------------------------------------------------------------------------------

    def setup(self) -> None:
        from nemo_craft.parallel.ddp import build_optimizer, wrap_ddp
        from nemo_craft.trainer.checkpoint import CheckpointManager
        from nemo_craft.trainer.logger import MetricsLogger
        from nemo_craft.trainer.policy_stack import PolicyStack
        from nemo_craft.trainer.reference import ReferenceWeights

        run, cfg = self.run, self.cfg
        stack = PolicyStack.build(run, seed=int(cfg.seed), init_method=self._init_method, for_training=True)
        self.dp_size, self.dp_group, self.rank, self.device = stack.dp_size, stack.dp_group, stack.rank, stack.device
        self.tokenizer, self.vocab_size = stack.tokenizer, stack.vocab_size
        self.model = wrap_ddp(stack.chunks, run.parallel)
        self.reference = ReferenceWeights(self.model)
        total = self.tcfg.max_steps
        self.optimizer, self.scheduler = build_optimizer(self.model, self.tcfg.optim(), run.parallel, total)
        self.env_cfg = dict(run.env_kwargs).get("config", {})
        # Generation runs the bare chunks (megatron's inference wrapper calls set_input_tensor on them);
        # they hold the same parameters as the DDP-wrapped training model.
        self.runner = stack.start_episodes(run, self.rollout_cfg, self.env_cfg, validation=False)
        self.generator = stack.generator
        self.controller = ControllerState.initial(run.loss)
        self.ckpt = CheckpointManager(self.ckpt_cfg)
        self.step = 0
        self.nan_in_a_row = 0
        self.nan_steps = 0
        resumed = self._maybe_resume()
        self.logger = MetricsLogger(
            self.log_cfg,
            self.run_dir,
            rank=self.rank,
            total_steps=total,
            start_step=self.step,
            config_dict=OmegaConf.to_container(cfg, resolve=True),
        )
        self.resumed = resumed

    def _check_batch_layout(self) -> None:
        r, t = self.rollout_cfg, self.tcfg
        if r.tasks_per_step % self.dp_size:
            raise ValueError(
                f"rollout.tasks_per_step={r.tasks_per_step} does not split over {self.dp_size} "
                f"data-parallel ranks; use a multiple of {self.dp_size}"
            )
        per_rank = r.tasks_per_step // self.dp_size * r.group_size
        if t.max_tokens_per_microbatch is not None:
            from nemo_craft.trainer.packing import check_packing

            cp = self.run.parallel.context_parallel_size
            check_packing(self.run.model, t.max_tokens_per_microbatch, self._pad_multiple(), cp)
        elif per_rank % t.micro_batch_size:
            raise ValueError(
                f"{per_rank} trajectories per data-parallel rank (tasks_per_step/DP * group_size) "
                f"do not split into trainer.micro_batch_size={t.micro_batch_size}"
            )

    def _maybe_resume(self) -> bool:
        state = self.ckpt.load(self.model, self.optimizer, self.scheduler, reference=self.reference)
        if state is None:
            return False
        self.step = int(state["step"])
        self.generator.weights_changed()
        self.controller.load_state_dict(state["controller"])
        self.nan_steps = int(state.get("nan_steps", 0))
        return True

    # -- the loop -----------------------------------------------------------------------------------

    def fit(self) -> dict:
        from nemo_craft.trainer.preemption import LeadTimeWatch, PreemptionHandler

        self.setup()
        preempt = PreemptionHandler()
        last_val: dict = {}
        if not self.resumed and self.tcfg.warm_start.steps:
            self._warm_start()
        if not self.resumed and self.tcfg.val_every:
            last_val = self.validate()
        lead = LeadTimeWatch(show=self.rank == 0)  # does a stop asked for by SLURM still fit?
        while self.step < self.tcfg.max_steps:
            t0 = time.perf_counter()
            metrics = self.train_step()
            self.step += 1
            self.logger.log(self.step, metrics)
            self.logger.progress(self.step, metrics)
            if self.tcfg.val_every and (self.step % self.tcfg.val_every == 0 or self.step == self.tcfg.max_steps):
                last_val = self.validate()
            t1 = time.perf_counter()
            if self.ckpt.should_save(self.step) or self.step == self.tcfg.max_steps:
                self.save()
            lead.record(step_s=t1 - t0, save_s=time.perf_counter() - t1)
            if preempt.should_stop():
                if not self.ckpt.should_save(self.step):
                    self.save()
                self.close()
                preempt.exit(self.step)
        self.close()
        return last_val

    def save(self) -> None:
        if self.ckpt.config.dir is None:
            return
        extra = {"step": self.step, "controller": self.controller.state_dict(), "nan_steps": self.nan_steps}
        with self._params_gathered():  # the weights of the last update, not those before it
            self.ckpt.save(
                self.step,
                self.model,
                self.optimizer,
                self.scheduler,
                extra,
                OmegaConf.to_yaml(self.cfg, resolve=True),
                reference=self.reference,
            )

    def close(self) -> None:
        from nemo_craft.trainer.logger import plot_curves

        self.runner.close()
        self.logger.close()
        if self.rank == 0 and self.logger.cfg.plot and self.logger.jsonl_path.exists():
            png = plot_curves(
                self.logger.jsonl_path,
                self.run_dir / "curves.png",
                title=f"{self.run.loss.name} on {self.run.env_name}",
            )
            print(
                f"[nemo_craft] metrics: {self.logger.jsonl_path}\n[nemo_craft] tensorboard: "
                f"{self.logger.tb_dir}\n[nemo_craft] plot: {png}",
                flush=True,
            )

    # -- one step -----------------------------------------------------------------------------------

    def _task_seeds(self) -> tuple[list[int], int]:
        from megatron.core import parallel_state as ps

        n_local = self.rollout_cfg.tasks_per_step // self.dp_size
        first = self.step * self.rollout_cfg.tasks_per_step + ps.get_data_parallel_rank() * n_local
        seed0 = train_task_seed0(self.cfg.seed)
        return [seed0 + first + i for i in range(n_local)], first

    def train_step(self) -> dict:
        from nemo_craft.trainer.experience import make_experience
        from nemo_craft.trainer.megatron_step import forward_backward

        t0 = time.perf_counter()
        seeds, first = self._task_seeds()
        with self._params_gathered():
            trajs = self.runner.run(seeds, seed=step_sampling_seed(self.cfg.seed, self.step), group_offset=first)
        rollout_stats = self._generation_stats()
        t1 = time.perf_counter()
        exp = make_experience(
            self.model,
            self.reference,
            trajs,
            self.run.loss,
            pad_id=self.tokenizer.pad_id,
            micro_batch_size=self.tcfg.micro_batch_size,
            pad_to_multiple_of=self._pad_multiple(),
            max_tokens_per_microbatch=self.tcfg.max_tokens_per_microbatch,
            dp_group=self.dp_group,
            sample_offset=first * self.rollout_cfg.group_size,
            device=self.device,
            vocab_size=self.vocab_size,
            temperature=self.rollout_cfg.temperature,
        )
        t2 = time.perf_counter()
        batch = exp.batch
        mbs = exp.train_micro_batches(
            self.tcfg.micro_batch_size, self.tcfg.max_tokens_per_microbatch, self._pad_multiple()
        )
        loss_fn = training_loss_fn(
            batch,
            exp.targets,
            self.run.loss,
            self.controller,
            tp_group=self._tp_group(),
            vocab_size=self.vocab_size,
            temperature=self.rollout_cfg.temperature,
        )
        loss, mb_metrics = forward_backward(self.model, mbs.items, loss_fn, self.optimizer)
        ok, grad_norm = self._optimizer_step(loss)
        t3 = time.perf_counter()
        gate_activity = float(batch.stats.get("gate_activity", 0.0))
        self.controller = self.controller.update(gate_activity)
        metrics = self._step_metrics(trajs, batch, loss, grad_norm, ok, mb_metrics)
        n_tokens = sum(len(t.token_ids) for t in trajs)
        metrics.update(exp.timings)
        metrics.update(rollout_stats)
        metrics.update(exp.padding, **{"perf/pad_frac_train": mbs.pad_fraction})
        metrics.update(
            {
                "time/rollout_s": t1 - t0,
                "time/experience_s": t2 - t1,
                "time/train_s": t3 - t2,
                "perf/tokens_per_s": n_tokens * self.dp_size / max(t3 - t0, 1e-9),
            }
        )
        return metrics

    def _generation_stats(self) -> dict:
        """The generator's memory back to training (vllm on CUDA) and its counters of the rollout:
        the prefix-cache hit rate over the data-parallel ranks (vllm; absent elsewhere)."""
        self.generator.release_memory()
        stats = self.generator.read_stats()
        if "rollout/prefix_cache_queries" not in stats:
            return {}
        counts = torch.tensor(
            [stats["rollout/prefix_cache_queries"], stats["rollout/prefix_cache_hits"]], device=self.device
        )
        if self.dp_group is not None:
            dist.all_reduce(counts, group=self.dp_group)
        return {"rollout/prefix_cache_hit_rate": float(counts[1] / counts[0].clamp(min=1))}

    def _optimizer_step(self, loss: torch.Tensor) -> tuple[bool, float]:
        """The update, unless the loss or any gradient on any rank is not finite (then nothing
        changes: weights, optimizer state and lr schedule stay; the step is counted)."""
        from nemo_craft.parallel.ddp import grads_are_finite

        finite = torch.stack([torch.isfinite(loss).float(), grads_are_finite(self.model, self.device)])
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite.min() == 1.0):
            ok, grad_norm, _ = self.optimizer.step()
            self.generator.weights_changed()  # a backend with its own copy (vllm) refits before the next rollout
            ok = bool(ok) and (grad_norm is None or math.isfinite(grad_norm))
            grad_norm = float("nan") if grad_norm is None else grad_norm
        else:
            ok, grad_norm = False, float("nan")
        if ok:
            self.scheduler.step(1)
            self.nan_in_a_row = 0
            return True, float(grad_norm)
        self.optimizer.zero_grad()
        self.nan_steps += 1
        self.nan_in_a_row += 1
        if self.rank == 0:
            print(
                f"[nemo_craft] step {self.step + 1}: non-finite loss or gradient ({loss.item()}); "
                f"step skipped ({self.nan_in_a_row} in a row, {self.nan_steps} in all)",
                flush=True,
            )
        if self.nan_in_a_row >= self.tcfg.max_nan_steps:
            raise NonFiniteLossError(
                f"{self.nan_in_a_row} steps in a row had a non-finite loss or gradient (trainer.max_nan_steps="
                f"{self.tcfg.max_nan_steps}); stopping. Lower trainer.lr, check the reward scale, or resume "
                "from the last checkpoint"
            )
        return False, float("nan")

    def _step_metrics(self, trajs, batch, loss, grad_norm, ok, mb_metrics) -> dict:
        from nemo_craft.parallel.reductions import reduce_named

        sums, maxes = {}, {}  # device tensors: the micro-batches' metrics are added up without a host read
        for m in mb_metrics:
            for k, v in m.items():
                if k.startswith("loss/") or k == "rollout/logprob_diff_mean":
                    sums[k] = sums[k] + v if k in sums else v
                elif k == "rollout/logprob_diff_max":
                    maxes[k] = torch.maximum(maxes[k], v) if k in maxes else v
        sums, maxes = _read_on_host(sums, maxes)
        sums, maxes = self._from_last_stage((sums, maxes))  # only the last pipeline stage computed the loss
        rollout = self._episode_means(trajs, ("reward", "success", "turns", "invalid"))
        # each context-parallel rank computed the loss on its part of the tokens: add over DP x CP
        loss_group = self._dp_cp_group()
        loss_terms = reduce_named(sums, loss_group, device=self.device)
        max_terms = reduce_named(maxes, loss_group, op="max", device=self.device)
        n_global = max(float(batch.num_global_tokens or 1), 1.0)
        out = {
            "rollout/reward_mean": rollout["reward"],
            "rollout/success_rate": rollout["success"],
            "rollout/turns_mean": rollout["turns"],
            "rollout/invalid_per_episode": rollout["invalid"],
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            "train/step_ok": float(ok),
            "train/nan_steps": self.nan_steps,
            "train/lr": self.optimizer.param_groups[0]["lr"],
        }
        out.update({k: v / n_global for k, v in loss_terms.items()})
        out.update(max_terms)
        out.update({f"credit/{k}": v for k, v in batch.stats.items() if isinstance(v, (int, float))})
        out.update(self.controller.metrics())
        return out

    def _episode_means(self, trajs, fields: tuple[str, ...]) -> dict[str, float]:
        """Means over every data-parallel rank's episodes of the named per-episode fields (and
        "episodes": how many there were)."""
        from nemo_craft.parallel.reductions import reduce_named

        local = {f: sum(_EPISODE_FIELDS[f](t) for t in trajs) for f in fields}
        total = reduce_named(dict(local, episodes=len(trajs)), self.dp_group, device=self.device)
        return dict({f: total[f] / total["episodes"] for f in fields}, episodes=total["episodes"])

    @staticmethod
    def _from_last_stage(obj):
        from megatron.core import parallel_state as ps

        if ps.get_pipeline_model_parallel_world_size() == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(
            box, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
        return box[0]

    @contextlib.contextmanager
    def _params_gathered(self):
        """With the distributed optimizer's overlapped param gather, the updated parameters
        arrive through DDP's forward pre-hooks of the next training forward; generation runs the
        bare chunks, so gather them first (as Megatron-LM does before evaluation)."""
        overlap = self.run.parallel.overlap_param_gather
        if overlap:
            for chunk in self.model:
                chunk.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            if overlap:
                for chunk in self.model:
                    chunk.enable_forward_pre_hook()

    def _tp_group(self):
        from megatron.core import parallel_state as ps

        return ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None

    def _pad_multiple(self) -> int:
        return self.run.parallel.sequence_multiple  # 2 CP under context parallel, TP under sequence parallel

    def _dp_cp_group(self):
        from megatron.core import parallel_state as ps

        if self.run.parallel.context_parallel_size == 1:
            return self.dp_group
        return ps.get_data_parallel_group(with_context_parallel=True)

    # -- validation and warm start ----------------------------------------------------------------

    def validate(self) -> dict:
        from megatron.core import parallel_state as ps

        n_local = max(self.tcfg.val_tasks // self.dp_size, 1)
        base = self.tcfg.val_seed_offset + ps.get_data_parallel_rank() * n_local
        with self._params_gathered():
            trajs = self.runner.run(
                [base + i for i in range(n_local)], seed=int(self.cfg.seed), group_size=1, validation=True
            )
        self.generator.release_memory()
        means = self._episode_means(trajs, ("success", "reward", "score", "turns"))
        out = {
            "val/success_rate": means["success"],
            "val/reward_mean": means["reward"],
            "val/score_mean": means["score"],
            "val/turns_mean": means["turns"],
        }
        self.logger.log(self.step, out)
        if self.rank == 0:
            print(
                f"[nemo_craft] step {self.step}: validation success {out['val/success_rate']:.3f} "
                f"reward {out['val/reward_mean']:.3f} ({int(means['episodes'])} tasks)",
                flush=True,
            )
        return out

    def _warm_start(self) -> None:
        from nemo_craft.parallel.ddp import build_optimizer
        from nemo_craft.trainer.warm_start import WarmStartCache

        ws = self.tcfg.warm_start
        cache = WarmStartCache(ws.cache_dir, self.cfg, dist.get_world_size(), self.rank) if ws.cache_dir else None
        if cache is not None and self._all_ranks(cache.path.exists()) and cache.load(self.model):
            if self.rank == 0:
                print(f"[nemo_craft] warm start: loaded {ws.steps} steps' weights from {cache.dir}", flush=True)
        else:
            self._warm_start_steps(ws)
        # RL starts from the warm-started weights: pi_ref is them, and the RL optimizer is built
        # afresh (a mixed-precision optimizer holds its own fp32 copy of the weights). With the
        # overlapped param gather, the last update reaches the other DP ranks' copies only in the
        # next forward's pre-hooks: gather it before anything snapshots the weights.
        from nemo_craft.trainer.reference import ReferenceWeights

        with self._params_gathered():
            if cache is not None and not cache.path.exists():
                cache.save(self.model)
            self.reference = ReferenceWeights(self.model)
            self.generator.weights_changed()
            self.optimizer, self.scheduler = build_optimizer(
                self.model, self.tcfg.optim(), self.run.parallel, self.tcfg.max_steps
            )

    def _all_ranks(self, flag: bool) -> bool:
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.item() == 1.0

    def _warm_start_steps(self, ws) -> None:
        from megatron.core import parallel_state as ps

        from nemo_craft.parallel.ddp import build_optimizer
        from nemo_craft.rollout.conversation import ChatFormat
        from nemo_craft.rollout.trajectory import collate_trajectories
        from nemo_craft.trainer.experience import micro_batches
        from nemo_craft.trainer.megatron_step import forward_backward
        from nemo_craft.trainer.warm_start import demonstrations, sft_loss_fn

        optimizer, _ = build_optimizer(self.model, self.tcfg.optim(ws.lr), self.run.parallel, ws.steps)
        fmt = ChatFormat(
            self.tokenizer, system_prompt=self.rollout_cfg.system_prompt, end_of_turn_ids=self.tokenizer.stop_ids
        )
        per_rank = ws.batch_size // self.dp_size
        mbs_size = math.gcd(per_rank, self.tcfg.micro_batch_size)
        for s in range(ws.steps):
            first = WARM_START_FIRST_TASK + (s * self.dp_size + ps.get_data_parallel_rank()) * per_rank
            demos = demonstrations(
                self.run.env_name,
                self.env_cfg,
                fmt,
                self.tokenizer,
                list(range(first, first + per_rank)),
                ws.privileged_fraction,
                self.rollout_cfg.observation_message,
            )
            sb = collate_trajectories(demos, pad_id=self.tokenizer.pad_id, pad_to_multiple_of=self._pad_multiple())
            tensors = {
                "input_ids": sb.input_ids.to(self.device),
                "targets": sb.targets.to(self.device),
                "loss_mask": sb.loss_mask.to(self.device),
            }
            loss, _ = forward_backward(
                self.model,
                micro_batches(tensors, mbs_size),
                sft_loss_fn(self.run.loss.chunk_size, self.vocab_size),
                optimizer,
            )
            optimizer.step()
            self.logger.log(0, {"warm_start/nll": loss.item(), "warm_start/step": s + 1})
            if self.rank == 0 and (s + 1) % max(ws.steps // 5, 1) == 0:
                print(f"[nemo_craft] warm start {s + 1}/{ws.steps}: nll {loss.item():.4f}", flush=True)
