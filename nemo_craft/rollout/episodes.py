"""Multi-turn rollouts: N tasks x G siblings, all episodes batched together every turn.

    runner = EpisodeRunner(generator, tokenizer, env_factory("sokoban"), RolloutConfig(group_size=8))
    trajectories = runner.run(task_seeds=[11, 12, 13, 14], seed=step)    # 32 Trajectory objects

Per turn one batched ``generate`` call samples every running episode's action and the environments
step together (``EnvPool``). Every rank of a model-parallel group runs the runner in lockstep and
builds identical trajectories. One turn, when an episode ends, and the seeds across data-parallel
ranks: docs/rollout.md#episodes-and-conversations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional, Protocol

import torch.distributed as dist

from nemo_craft.envs.pool import EnvPool, EnvResult, PoolConfig
from nemo_craft.rollout.config import GenerationConfig, RolloutConfig
from nemo_craft.rollout.conversation import ChatFormat
from nemo_craft.rollout.generation import GenerationResult
from nemo_craft.rollout.trajectory import Trajectory, TurnRecord
from nemo_craft.seeds import turn_sampling_seed

__all__ = ["RolloutConfig", "EpisodeRunner", "Policy"]


class Policy(Protocol):
    """What the runner needs of a generator (``Generator``, or a scripted stand-in in tests)."""

    max_sequence_length: int

    def generate(
        self,
        prompts_token_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: Sequence[int],
        seed: int,
        config: GenerationConfig,
    ) -> list[GenerationResult]: ...


class EpisodeRunner:
    """Rolls out tasks with a policy and environments; returns one Trajectory per episode.

    Args:
        policy: the generator (shared by every episode; one batched call per turn).
        tokenizer: the policy's tokenizer (chat template, encode/decode, ``stop_ids``).
        env_factory: zero-argument callable building an environment (``envs.env_factory``).
        config: rollout settings.
        pool_config: how environments run in parallel (timeouts, threads or processes).
    """

    def __init__(
        self,
        policy: Policy,
        tokenizer,
        env_factory: Callable,
        config: RolloutConfig | None = None,
        pool_config: PoolConfig | None = None,
    ):
        self.policy = policy
        self.tokenizer = tokenizer
        self.config = config if config is not None else RolloutConfig()
        self.format = ChatFormat(tokenizer, system_prompt=self.config.system_prompt, end_of_turn_ids=tokenizer.stop_ids)
        self._envs = _EnvDriver(env_factory, pool_config)

    def close(self) -> None:
        self._envs.close()

    def run(
        self,
        task_seeds: Sequence[int],
        *,
        seed: int,
        group_size: int | None = None,
        group_offset: int = 0,
        validation: bool = False,
        dp_rank: Optional[int] = None,
    ) -> list[Trajectory]:
        """Roll out every task ``group_size`` times (default ``config.group_size``).

        Returns N * G trajectories, task-major (task n's siblings are n*G .. n*G+G-1), with
        group ids ``group_offset + n``. ``seed`` seeds the sampling (with the turn and the
        data-parallel rank); ``validation`` samples at ``config.validation.temperature``.
        ``dp_rank``: the data-parallel rank whose rollouts these are (None: this process's; a
        generation rank rolls out for the training ranks).
        """
        G = self.config.group_size if group_size is None else group_size
        trajectories = [
            Trajectory(task_seed=int(s), group_id=group_offset + n, sibling_index=g)
            for n, s in enumerate(task_seeds)
            for g in range(G)
        ]
        gen_config = self.config.generation_config(validation=validation)
        running = self._start(trajectories)
        used = [0] * len(trajectories)
        pending: dict[int, tuple[list[int], str]] = {}  # next user message of running episodes
        turn = 0
        while running:
            running = self._next_turn(trajectories, running, used, pending)
            if not running:
                break
            budgets = [
                min(
                    self.config.generation.max_new_tokens,
                    self.config.max_tokens_per_episode - used[i],
                    self.policy.max_sequence_length - len(trajectories[i]),
                )
                for i in running
            ]
            results = self.policy.generate(
                [trajectories[i].token_ids for i in running],
                max_new_tokens=budgets,
                seed=_turn_seed(seed, turn, dp_rank),
                config=gen_config,
            )
            actions: list[Optional[str]] = [None] * len(trajectories)
            for i, result in zip(running, results):
                trajectories[i].append(result.token_ids, turn=turn, logprobs=result.logprobs)
                used[i] += len(result.token_ids)
                actions[i] = self.format.action_text(result.token_ids)
            steps = self._envs.step(actions)
            running = [
                i
                for i, result in zip(running, results)
                if self._record_step(trajectories[i], steps[i], result, actions[i], turn, pending, i)
            ]
            turn += 1
        return trajectories

    # -- pieces of run ---------------------------------------------------------------------------

    def _start(self, trajectories: list[Trajectory]) -> list[int]:
        resets = self._envs.reset([tr.task_seed for tr in trajectories])
        running = []
        for i, (tr, r) in enumerate(zip(trajectories, resets)):
            tr.privileged_context = r.privileged
            tr.info = r.info
            prompt = self.format.prompt_ids(r.prompt)
            tr.append(prompt)
            tr.prompt_length = len(prompt)
            tr.teacher_prompt_ids = self.format.teacher_prompt_ids(r.prompt, r.privileged_prompt)
            tr.turns.append(TurnRecord(user=r.prompt, action=""))
            if r.error is not None:
                tr.finish_reason, tr.error = "env_error", r.error
            else:
                running.append(i)
        return running

    def _next_turn(self, trajectories, running, used, pending) -> list[int]:
        """Episodes that can take another turn, with their next user message appended; the
        others end here (their sequence ends with their last action)."""
        keep = []
        for i in running:
            tr = trajectories[i]
            continuation, user = pending.pop(i, ([], None))
            if used[i] >= self.config.max_tokens_per_episode:
                tr.finish_reason = "token_budget"
            elif len(tr) + len(continuation) >= self.policy.max_sequence_length:
                tr.finish_reason = "context"
            else:
                tr.append(continuation)
                if user is not None:
                    tr.turns.append(TurnRecord(user=user, action=""))
                keep.append(i)
        return keep

    def _record_step(
        self, tr: Trajectory, r: EnvResult, result: GenerationResult, action: str, turn: int, pending: dict, index: int
    ) -> bool:
        """Book the environment's answer to one action; True when the episode goes on (then its
        next user message waits in ``pending``)."""
        record = tr.turns[-1]
        record.action, record.finish_reason = action, result.finish_reason
        record.reward, record.invalid = r.reward, bool(r.info.get("invalid", False))
        tr.reward += r.reward
        tr.n_invalid += int(record.invalid)
        tr.num_turns = turn + 1
        tr.info = r.info
        tr.success = bool(r.info.get("success", False))
        tr.score = float(r.info.get("score", 0.0))
        if r.error is not None:
            tr.finish_reason, tr.error = "env_error", r.error
            return False
        if r.done:
            tr.finish_reason = "done"
            return False
        if self.config.max_turns is not None and turn + 1 >= self.config.max_turns:
            tr.finish_reason = "max_turns"
            return False
        user = r.observation if self.config.observation_message == "observation" else r.prompt
        pending[index] = (self.format.continuation_ids(result.token_ids, user), user)
        return True


def _turn_seed(seed: int, turn: int, dp_rank: Optional[int] = None) -> int:
    """The sampling seed of one turn: distinct per (seed, data-parallel rank, turn)."""
    if dp_rank is not None:
        return turn_sampling_seed(seed, dp_rank, turn)
    dp_rank = 0
    if dist.is_available() and dist.is_initialized():
        from megatron.core import parallel_state as ps

        dp_rank = ps.get_data_parallel_rank() if ps.model_parallel_is_initialized() else 0
    return turn_sampling_seed(seed, dp_rank, turn)


class _EnvDriver:
    """Environments on the model-parallel group's first rank; results broadcast to the group."""

    def __init__(self, env_factory: Callable, pool_config: PoolConfig | None):
        self.env_factory = env_factory
        self.pool_config = pool_config
        self.pool: EnvPool | None = None
        self.group, self.src = _model_parallel_group()

    def reset(self, seeds: Sequence[int]) -> list[EnvResult]:
        return self._call("reset", list(seeds))

    def step(self, actions: Sequence[Optional[str]]) -> list[Optional[EnvResult]]:
        return self._call("step", list(actions))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _call(self, cmd: str, arg: list):
        out = None
        if self.group is None or dist.get_rank() == self.src:
            if self.pool is None or self.pool.num_slots < len(arg):
                self.close()
                self.pool = EnvPool(self.env_factory, len(arg), self.pool_config)
            out = getattr(self.pool, cmd)(arg)
        if self.group is not None:
            box = [out]
            dist.broadcast_object_list(box, src=self.src, group=self.group)
            out = box[0]
        return out


def _model_parallel_group():
    """(group, source rank) of the model-parallel group, or (None, None) when it is one rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return None, None
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return None, None
    if ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size() == 1:
        return None, None
    return ps.get_model_parallel_group(), ps.get_model_parallel_src_rank()
