"""The RL loop (NeMo-Aligner style): ``RLTrainer(run).fit()`` trains any method (the method is
only the loss config).

Per step: draw N tasks (split over data-parallel ranks), roll out G siblings each (all episodes
batched per turn), prepare experience (old / teacher / reference log-probs, GRPO advantages,
credits), train one optimizer step over micro-batches through megatron's schedule
(``step.py``), update the controller from the step's global gate activity, log (``metrics.py``),
validate every ``val_every`` steps, checkpoint every ``save_every`` steps. An optional warm
start (``warm_start.py``) runs first. docs/design.md#one-rl-step has the data flow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from nemo_craft.core.collectives import all_ranks
from nemo_craft.losses import ControllerState
from nemo_craft.models.moe import Routing
from nemo_craft.models.refit import check_refit_layout, full_hf_weights
from nemo_craft.parallel.ddp import build_optimizer, wrap_ddp
from nemo_craft.parallel.initialize import resolve_backend
from nemo_craft.runtime.checkpoint import CheckpointManager
from nemo_craft.runtime.disaggregated import split_world, step_tasks
from nemo_craft.runtime.generation_worker import serve_generation
from nemo_craft.runtime.policy_stack import PolicyStack
from nemo_craft.runtime.reference import ReferenceWeights
from nemo_craft.seeds import step_sampling_seed
from nemo_craft.trainer.async_link import AsyncLink, staleness_stats
from nemo_craft.trainer.experience import make_experience
from nemo_craft.trainer.logger import MetricsLogger, plot_curves
from nemo_craft.trainer.megatron_step import forward_backward
from nemo_craft.trainer.metrics import episode_means, loss_terms
from nemo_craft.trainer.packing import check_packing
from nemo_craft.trainer.preemption import LeadTimeWatch, PreemptionHandler
from nemo_craft.trainer.step import GuardedUpdate, NonFiniteLossError, training_loss_fn
from nemo_craft.trainer.warm_start import WarmStartCache, warm_start_steps

if TYPE_CHECKING:
    from nemo_craft.config import RunConfig

__all__ = ["RLTrainer", "NonFiniteLossError", "check_training"]


def check_training(run: RunConfig, world_size: int) -> int:
    """What training needs beyond ``RunConfig.validate``, before any process group: sampling
    the trainer's log-probs can score, a warm start that may touch the weights, and a batch that
    splits over the data-parallel ranks and micro-batches. Returns the data-parallel size."""
    run.trainer.warm_start.check_pretrained(run.model.hf_path)
    run.rollout.check_trainable()
    world_size = run.rollout.check_placement(world_size)  # the ranks that train
    dp_size = run.parallel.data_parallel_size(world_size)
    if run.rollout.placement == "disaggregated":
        check_refit_layout(run.parallel, what="rollout.placement=disaggregated")
        if run.rollout.generation_ranks > dp_size:
            raise ValueError(
                f"rollout.generation_ranks={run.rollout.generation_ranks} > the {dp_size} data-parallel ranks that "
                f"train: each generation rank serves whole data-parallel ranks; allowed: 1 to {dp_size}"
            )
    r, t = run.rollout, run.trainer
    if r.tasks_per_step % dp_size:
        raise ValueError(
            f"rollout.tasks_per_step={r.tasks_per_step} does not split over {dp_size} "
            f"data-parallel ranks; use a multiple of {dp_size}"
        )
    per_rank = r.tasks_per_step // dp_size * r.group_size
    if t.max_tokens_per_microbatch is not None:
        check_packing(
            run.model, t.max_tokens_per_microbatch, run.parallel.sequence_multiple, run.parallel.context_parallel_size
        )
    elif per_rank % t.micro_batch_size:
        raise ValueError(
            f"{per_rank} trajectories per data-parallel rank (tasks_per_step/DP * group_size) "
            f"do not split into trainer.micro_batch_size={t.micro_batch_size}"
        )
    return dp_size


class RLTrainer:
    """Builds everything from the run config; ``fit()`` runs the loop."""

    def __init__(self, run: RunConfig, *, init_method: Optional[str] = None):
        """``run`` comes validated (``load_run``); the training checks run here, before any
        process group, model or weight exists."""
        self.run = run
        self.dp_size = check_training(run, int(os.environ.get("WORLD_SIZE", "1")))
        self._init_method = init_method
        self.run_dir = Path(run.run_dir)
        self.sides = None  # disaggregated: this rank's side of the world (fit() splits it)
        self.link = None

    # -- set-up -------------------------------------------------------------------------------------

    def setup(self) -> None:
        run = self.run
        stack = PolicyStack.build(run, seed=run.seed, init_method=self._init_method, for_training=True)
        self.dp_size, self.dp_group, self.rank, self.device = stack.dp_size, stack.dp_group, stack.rank, stack.device
        self.tokenizer, self.vocab_size = stack.tokenizer, stack.vocab_size
        self.chunks = stack.chunks
        self.model = wrap_ddp(stack.chunks, run.parallel)
        self.reference = ReferenceWeights(self.model)
        self.routing = Routing(stack.chunks, run.model) if run.model.num_experts else None
        self.optimizer, self.scheduler = self._rl_optimizer()
        # Generation runs the bare chunks (megatron's inference wrapper calls set_input_tensor on them);
        # they hold the same parameters as the DDP-wrapped training model.
        self.runner = stack.start_episodes(run, validation=False)
        self.generator = stack.generator
        self.controller = ControllerState.initial(run.loss)
        self.ckpt = CheckpointManager(run.checkpoint)
        self.step = 0
        self.update = GuardedUpdate(run.trainer.max_nan_steps, rank=self.rank)
        self.resumed = self._maybe_resume()
        if self.sides is not None:
            self.link = AsyncLink(run, self.sides, dp_rank=ps.get_data_parallel_rank(), dp_size=self.dp_size)
        self.logger = MetricsLogger(
            run.logging,
            self.run_dir,
            rank=self.rank,
            total_steps=run.trainer.max_steps,
            start_step=self.step,
            resumed=self.resumed,
            config_dict=run.to_dict(),
        )

    def _rl_optimizer(self):
        return build_optimizer(self.model, self.run.trainer.optim, self.run.parallel, self.run.trainer.max_steps)

    def _maybe_resume(self) -> bool:
        state = self.ckpt.load(self.model, self.optimizer, self.scheduler, reference=self.reference)
        if state is None:
            return False
        self.step = int(state["step"])
        self.generator.weights_changed()
        self.controller.load_state_dict(state["controller"])
        self.update.nan_steps = int(state.get("nan_steps", 0))
        return True

    # -- the loop -----------------------------------------------------------------------------------

    def fit(self) -> dict:
        if self.run.rollout.placement == "disaggregated":
            self.sides = split_world(
                self.run.rollout.generation_ranks,
                backend=resolve_backend(self.run.parallel.backend),
                timeout_minutes=self.run.parallel.distributed_timeout_minutes,
            )
            if self.sides.role == "generate":  # this rank runs the engine and the environments
                serve_generation(self.run, self.sides)
                return {}
        self.setup()
        preempt = PreemptionHandler(signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGINT))
        tcfg = self.run.trainer
        last_val: dict = {}
        if not self.resumed and tcfg.warm_start.steps:
            self._warm_start()
        if not self.resumed and tcfg.val_every:
            last_val = self.validate()
        if self.link is not None:
            with self._params_gathered():  # the initial, warm-started or resumed weights
                self.link.start(self.step, full_hf_weights(self.chunks, self.run.model))
        lead = LeadTimeWatch(show=self.rank == 0)  # does a stop asked for by SLURM still fit?
        while self.step < tcfg.max_steps:
            t0 = time.perf_counter()
            metrics = self.train_step()
            self.step += 1
            self.logger.log(self.step, metrics)
            self.logger.progress(self.step, metrics)
            if tcfg.val_every and (self.step % tcfg.val_every == 0 or self.step == tcfg.max_steps):
                last_val = self.validate()
            t1 = time.perf_counter()
            if self.ckpt.should_save(self.step) or self.step == tcfg.max_steps:
                self.save()
            lead.record(step_s=t1 - t0, save_s=time.perf_counter() - t1)
            if preempt.should_stop():
                if not self.ckpt.should_save(self.step):
                    self.save()
                self.close()
                if self.rank == 0:
                    print(
                        f"[nemo_craft] stopped after step {self.step} ({preempt.reason}), checkpoint in "
                        f"{self.ckpt.config.dir}; continue with checkpoint.resume=auto (exit code 75)",
                        flush=True,
                    )
                preempt.exit(self.step)
        self.close()
        return last_val

    def save(self) -> None:
        if self.ckpt.config.dir is None:
            return
        extra = {"step": self.step, "controller": self.controller.state_dict(), "nan_steps": self.update.nan_steps}
        with self._params_gathered():  # the weights of the last update, not those before it
            self.ckpt.save(
                self.step,
                self.model,
                self.optimizer,
                self.scheduler,
                extra,
                self.run.to_yaml(),
                reference=self.reference,
            )

    def close(self) -> None:
        if self.link is not None:
            self.link.close(self.step)
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
        dp_rank = ps.get_data_parallel_rank()
        return step_tasks(self.run.seed, self.step, self.run.rollout.tasks_per_step, dp_rank, self.dp_size)

    def train_step(self) -> dict:
        run, tcfg = self.run, self.run.trainer
        temperature = run.rollout.generation.temperature
        t0 = time.perf_counter()
        seeds, first = self._task_seeds()
        if self.link is not None:  # disaggregated: the generation ranks rolled this batch out
            trajs, rollout_stats = self.link.batch(self.step)
            rollout_stats.update(staleness_stats(trajs, self.step, self.dp_group, self.device))
        else:
            with self._params_gathered():
                trajs = self.runner.run(seeds, seed=step_sampling_seed(run.seed, self.step), group_offset=first)
            rollout_stats = self._generation_stats()
        t1 = time.perf_counter()
        exp = make_experience(
            self.model,
            self.reference,
            trajs,
            run.loss,
            pad_id=self.tokenizer.pad_id,
            micro_batch_size=tcfg.micro_batch_size,
            pad_to_multiple_of=run.parallel.sequence_multiple,
            max_tokens_per_microbatch=tcfg.max_tokens_per_microbatch,
            dp_group=self.dp_group,
            sample_offset=first * run.rollout.group_size,
            device=self.device,
            vocab_size=self.vocab_size,
            temperature=temperature,
            routing=self.routing,
        )
        t2 = time.perf_counter()
        batch = exp.batch
        mbs = exp.train_micro_batches(
            tcfg.micro_batch_size, tcfg.max_tokens_per_microbatch, run.parallel.sequence_multiple
        )
        loss_fn = training_loss_fn(
            batch,
            exp.targets,
            run.loss,
            self.controller,
            tp_group=self._tp_group(),
            vocab_size=self.vocab_size,
            temperature=temperature,
        )
        with self._routed(exp):
            loss, mb_metrics = forward_backward(self.model, mbs.items, loss_fn, self.optimizer)
        ok, grad_norm = self.update.step(
            self.model, self.optimizer, self.scheduler, loss, self.device, step=self.step + 1
        )
        if ok:
            self.generator.weights_changed()  # a backend with its own copy (vllm) refits before the next rollout
        if self.link is not None and self.link.needs(self.step + 1):
            self._send_weights(self.step + 1)
        t3 = time.perf_counter()
        gate_activity = float(batch.stats.get("gate_activity", 0.0))
        self.controller = self.controller.update(gate_activity)
        metrics = self._step_metrics(trajs, batch, loss, grad_norm, ok, mb_metrics)
        n_tokens = sum(len(t.token_ids) for t in trajs)
        metrics.update(exp.timings)
        metrics.update(rollout_stats)
        if self.routing is not None:
            metrics.update(self.routing.metrics(self._routing_groups()))
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

    def _step_metrics(self, trajs, batch, loss, grad_norm, ok, mb_metrics) -> dict:
        rollout = episode_means(trajs, ("reward", "success", "turns", "invalid"), self.dp_group, self.device)
        out = {
            "rollout/reward_mean": rollout["reward"],
            "rollout/success_rate": rollout["success"],
            "rollout/turns_mean": rollout["turns"],
            "rollout/invalid_per_episode": rollout["invalid"],
            "train/loss": loss.item(),
            "train/grad_norm": grad_norm,
            "train/step_ok": float(ok),
            "train/nan_steps": self.update.nan_steps,
            "train/lr": self.optimizer.param_groups[0]["lr"],
        }
        out.update(loss_terms(mb_metrics, self._dp_cp_group(), self.device, batch.num_global_tokens))
        out.update({f"credit/{k}": v for k, v in batch.stats.items() if isinstance(v, (int, float))})
        out.update(self.controller.metrics())
        return out

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

    def _routed(self, exp):
        """The training forward of a mixture of experts: the old pass's routes replayed (R2), or
        measured against them; expert load counted either way."""
        if self.routing is None:
            return contextlib.nullcontext()
        if exp.batch.logp_old is not None:
            return self.routing.replay(measure=True)
        return self.routing.measure()

    def _routing_groups(self) -> list:
        """Groups whose ranks route different tokens or layers (expert load sums over them)."""
        groups = [ps.get_data_parallel_group(with_context_parallel=True)]
        if self.run.parallel.sequence_parallel:
            groups.append(ps.get_tensor_model_parallel_group())
        if ps.get_pipeline_model_parallel_world_size() > 1:
            groups.append(ps.get_pipeline_model_parallel_group())
        return groups

    def _send_weights(self, version: int) -> None:
        """The weights of ``version`` to the generation ranks (the update's, gathered first)."""
        with self._params_gathered():
            self.link.send_weights(full_hf_weights(self.chunks, self.run.model), version=version)

    def _tp_group(self):
        return ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None

    def _dp_cp_group(self):
        if self.run.parallel.context_parallel_size == 1:
            return self.dp_group
        return ps.get_data_parallel_group(with_context_parallel=True)

    # -- validation and warm start ----------------------------------------------------------------

    def validate(self) -> dict:
        n_local = max(self.run.trainer.val_tasks // self.dp_size, 1)
        base = self.run.trainer.val_seed_offset + ps.get_data_parallel_rank() * n_local
        with self._params_gathered():
            trajs = self.runner.run(
                [base + i for i in range(n_local)], seed=self.run.seed, group_size=1, validation=True
            )
        self.generator.release_memory()
        means = episode_means(trajs, ("success", "reward", "score", "turns"), self.dp_group, self.device)
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
        ws = self.run.trainer.warm_start
        cache = WarmStartCache(ws.cache_dir, self.run, dist.get_world_size(), self.rank) if ws.cache_dir else None
        if cache is not None and all_ranks(cache.path.exists(), self.device) and cache.load(self.model):
            if self.rank == 0:
                print(f"[nemo_craft] warm start: loaded {ws.steps} steps' weights from {cache.dir}", flush=True)
        else:
            warm_start_steps(
                self.model,
                self.run,
                self.tokenizer,
                vocab_size=self.vocab_size,
                dp_size=self.dp_size,
                device=self.device,
                log=self._log_warm_start,
            )
        # RL starts from the warm-started weights: pi_ref is them, and the RL optimizer is built
        # afresh (a mixed-precision optimizer holds its own fp32 copy of the weights). With the
        # overlapped param gather, the last update reaches the other DP ranks' copies only in the
        # next forward's pre-hooks: gather it before anything snapshots the weights.
        with self._params_gathered():
            if cache is not None and not cache.path.exists():
                cache.save(self.model)
            self.reference = ReferenceWeights(self.model)
            self.generator.weights_changed()
            self.optimizer, self.scheduler = self._rl_optimizer()

    def _log_warm_start(self, metrics: dict, step: int, steps: int) -> None:
        self.logger.log(0, metrics)
        if self.rank == 0 and step % max(steps // 5, 1) == 0:
            print(f"[nemo_craft] warm start {step}/{steps}: nll {metrics['warm_start/nll']:.4f}", flush=True)
