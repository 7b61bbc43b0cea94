"""EnvPool: many episodes stepped in parallel, each behind a timeout.

One *slot* holds one episode. ``reset(seeds)`` starts an episode per seed, ``step(actions)``
advances every slot that was given an action; both return one ``EnvResult`` per slot, with the
prompt for the next turn already rendered by the environment. A failed or timed-out call ends its
episode with ``failure_reward``; the pool adds no randomness of its own. The ``thread`` and
``process`` backends and what each does with a hung call: docs/environments.md#envpool-parallel-steps-and-timeouts.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as mp_wait
from typing import Any, Literal, get_args

from nemo_craft.envs.base import TextEnv

logger = logging.getLogger(__name__)

EnvFactory = Callable[[], TextEnv]
PoolBackend = Literal["thread", "process"]
_BACKENDS = get_args(PoolBackend)
_POLL_S = 0.02


@dataclasses.dataclass
class PoolConfig:
    """How episodes are run in parallel."""

    backend: PoolBackend = "thread"
    """"thread" (in-process) or "process" (one killable worker process per slot)."""
    max_workers: int = 8
    """Concurrent calls for the thread backend."""
    reset_timeout_s: float = 120.0
    """Seconds a reset (including building the environment) may take."""
    step_timeout_s: float = 30.0
    """Seconds a step may take."""
    start_timeout_s: float = 120.0
    """Process backend: seconds a new worker may take to start (interpreter and imports); not
    counted against the reset timeout."""
    failure_reward: float = 0.0
    """Reward of the step that ends an episode because the environment failed."""
    start_method: str = "spawn"
    """multiprocessing start method for the process backend (spawn is safe with threads/JVMs)."""

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers!r}")
        for name in ("reset_timeout_s", "step_timeout_s", "start_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.start_method not in mp.get_all_start_methods():
            raise ValueError(f"start_method {self.start_method!r} is not one of {mp.get_all_start_methods()}")


@dataclasses.dataclass
class EnvResult:
    """What one slot returned from reset or step."""

    slot: int
    observation: str
    reward: float
    done: bool
    info: dict[str, Any]
    prompt: str
    """The student prompt for the next turn (empty once done)."""
    privileged: str = ""
    """Privileged context (reset only)."""
    privileged_prompt: str = ""
    """The privileged context as the teacher's system message (reset only)."""

    @property
    def error(self) -> str | None:
        return self.info.get("error")


# -- what runs next to the environment (thread or worker process) ------------------------------


def _do_reset(env: TextEnv, seed: int) -> tuple:
    observation, privileged, info = env.reset(seed)
    return (
        observation,
        0.0,
        False,
        info,
        env.render_prompt(),
        privileged,
        env.render_privileged(privileged),
    )


def _do_step(env: TextEnv, action: str) -> tuple:
    observation, reward, done, info = env.step(action)
    prompt = "" if done else env.render_prompt()
    return observation, reward, done, info, prompt, "", ""


def _worker_main(conn, factory: EnvFactory) -> None:
    env = None
    conn.send(("ready", None))
    while True:
        try:
            cmd, arg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if cmd == "close":
            break
        try:
            if env is None:
                env = factory()
            reply = ("ok", _do_reset(env, arg) if cmd == "reset" else _do_step(env, arg))
        except BaseException:  # report every failure to the parent, which ends the episode
            reply = ("error", traceback.format_exc(limit=8))
        conn.send(reply)
    if env is not None:
        env.close()


# -- the pool ----------------------------------------------------------------------------------


class EnvPool:
    """``num_slots`` episodes of environments made by ``factory``, stepped in parallel."""

    def __init__(self, factory: EnvFactory, num_slots: int, config: PoolConfig | None = None):
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots!r}")
        self.factory = factory
        self.num_slots = num_slots
        self.config = config if config is not None else PoolConfig()
        self.failures: list[dict[str, Any]] = []
        self._done = [True] * num_slots
        self._seeds: list[int | None] = [None] * num_slots
        self._turns = [0] * num_slots
        self._envs: list[TextEnv | None] = [None] * num_slots
        self._procs: list[Any] = [None] * num_slots
        self._conns: list[Any] = [None] * num_slots
        self._generation = [0] * num_slots

    # -- public --------------------------------------------------------------------------------

    @property
    def done(self) -> list[bool]:
        return list(self._done)

    def reset(self, seeds: Sequence[int]) -> list[EnvResult]:
        """Start one episode per seed in slots 0..len(seeds)-1; the other slots go idle."""
        if len(seeds) > self.num_slots:
            raise ValueError(f"{len(seeds)} seeds for a pool of {self.num_slots} slots")
        for slot in range(len(seeds), self.num_slots):
            self._done[slot] = True
        calls = {slot: ("reset", int(seed)) for slot, seed in enumerate(seeds)}
        for slot, seed in enumerate(seeds):
            self._seeds[slot], self._turns[slot] = int(seed), 0
        results = self._run(calls, self.config.reset_timeout_s)
        return [results[slot] for slot in range(len(seeds))]

    def step(self, actions: Sequence[str | None]) -> list[EnvResult | None]:
        """Advance each slot given an action (None: skip it, e.g. a finished episode)."""
        if len(actions) > self.num_slots:
            raise ValueError(f"{len(actions)} actions for a pool of {self.num_slots} slots")
        calls = {}
        for slot, action in enumerate(actions):
            if action is None:
                continue
            if self._done[slot]:
                raise ValueError(f"slot {slot} has no running episode; pass None for it or reset")
            calls[slot] = ("step", action)
            self._turns[slot] += 1
        results = self._run(calls, self.config.step_timeout_s)
        return [results.get(slot) for slot in range(len(actions))]

    def close(self) -> None:
        for slot in range(self.num_slots):
            self._drop_worker(slot, graceful=True)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- dispatch ------------------------------------------------------------------------------

    def _run(self, calls: dict[int, tuple[str, Any]], timeout: float) -> dict[int, EnvResult]:
        if not calls:
            return {}
        if self.config.backend == "thread":
            raw = self._run_threads(calls, timeout)
        else:
            raw = self._run_processes(calls, timeout)
        results = {}
        for slot, (status, payload) in raw.items():
            if status == "ok":
                observation, reward, done, info, prompt, privileged, privileged_prompt = payload
                results[slot] = EnvResult(
                    slot,
                    observation,
                    float(reward),
                    bool(done),
                    info,
                    prompt,
                    privileged,
                    privileged_prompt,
                )
            else:
                results[slot] = self._fail(slot, calls[slot][0], payload)
                done = True
            self._done[slot] = done
        return results

    def _fail(self, slot: int, cmd: str, reason: str) -> EnvResult:
        record = {
            "slot": slot,
            "seed": self._seeds[slot],
            "turn": self._turns[slot],
            "call": cmd,
            "reason": reason,
        }
        self.failures.append(record)
        logger.warning(
            "environment failed in %s (slot %d, seed %s, turn %d); episode ended, worker replaced: %s",
            cmd,
            slot,
            record["seed"],
            record["turn"],
            reason,
        )
        self._drop_worker(slot, graceful=False)
        info = {
            "success": False,
            "score": 0.0,
            "invalid": False,
            "admissible_actions": [],
            "turn": self._turns[slot],
            "error": reason,
        }
        return EnvResult(slot, "", self.config.failure_reward, True, info, "")

    # -- thread backend ------------------------------------------------------------------------

    def _thread_call(self, slot: int, token: int, cmd: str, arg: Any, done: queue.Queue) -> None:
        try:
            env = self._envs[slot]
            if env is None:
                env = self.factory()
                if token == self._generation[slot]:  # a timed-out call must not install its env
                    self._envs[slot] = env
            reply = ("ok", _do_reset(env, arg) if cmd == "reset" else _do_step(env, arg))
        except Exception:
            reply = ("error", traceback.format_exc(limit=8))
        done.put((slot, token, reply))

    def _run_threads(self, calls, timeout):
        """Each call on its own daemon thread (at most max_workers at once); a hung thread is
        abandoned, and being a daemon it does not hold up the interpreter's exit."""
        done: queue.Queue = queue.Queue()
        todo = list(calls.items())
        running: dict[int, float] = {}  # slot -> start time
        out: dict[int, tuple[str, Any]] = {}
        while todo or running:
            while todo and len(running) < self.config.max_workers:
                slot, (cmd, arg) = todo.pop(0)
                running[slot] = time.monotonic()
                threading.Thread(
                    target=self._thread_call,
                    daemon=True,
                    name=f"nemo-craft-env-{slot}",
                    args=(slot, self._generation[slot], cmd, arg, done),
                ).start()
            try:
                slot, token, reply = done.get(timeout=_POLL_S)
                if slot in running and token == self._generation[slot]:
                    del running[slot]
                    out[slot] = reply
            except queue.Empty:
                pass
            now = time.monotonic()
            for slot in [s for s, t0 in running.items() if now - t0 > timeout]:
                del running[slot]
                out[slot] = ("error", f"timed out after {timeout:g} s")
                self._envs[slot] = None  # abandoned with its thread
                self._generation[slot] += 1
        return out

    # -- process backend -----------------------------------------------------------------------

    def _start_workers(self, slots) -> dict[int, str]:
        """Start the missing workers of ``slots`` together; {slot: reason} for those that fail."""
        ctx = mp.get_context(self.config.start_method)
        starting = {}
        for slot in slots:
            if self._procs[slot] is not None and self._procs[slot].is_alive():
                continue
            self._drop_worker(slot, graceful=False)
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(child, self.factory),
                daemon=True,
                name=f"nemo-craft-env-{slot}",
            )
            proc.start()
            child.close()
            self._procs[slot], self._conns[slot] = proc, parent
            starting[parent] = slot
        failed = {}
        deadline = time.monotonic() + self.config.start_timeout_s
        while starting:
            ready = mp_wait(list(starting), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for conn in ready:
                slot = starting.pop(conn)
                try:
                    conn.recv()
                except (EOFError, OSError):
                    failed[slot] = "worker process died while starting"
        for slot in starting.values():
            failed[slot] = f"worker did not start within {self.config.start_timeout_s:g} s"
        return failed

    def _run_processes(self, calls, timeout):
        out: dict[int, tuple[str, Any]] = {
            slot: ("error", reason) for slot, reason in self._start_workers(calls).items()
        }
        waiting = {}
        deadline = time.monotonic() + timeout
        for slot, call in calls.items():
            if slot in out:
                continue
            try:
                self._conns[slot].send(call)
                waiting[self._conns[slot]] = slot
            except Exception:
                out[slot] = ("error", traceback.format_exc(limit=4))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                for slot in waiting.values():
                    out[slot] = ("error", f"timed out after {timeout:g} s")
                break
            for conn in mp_wait(list(waiting), timeout=left):
                slot = waiting.pop(conn)
                try:
                    out[slot] = conn.recv()
                except (EOFError, OSError):
                    code = self._procs[slot].exitcode if self._procs[slot] else None
                    out[slot] = ("error", f"worker process died (exit code {code})")
        return out

    def _drop_worker(self, slot: int, *, graceful: bool) -> None:
        env, self._envs[slot] = self._envs[slot], None
        self._generation[slot] += 1
        if env is not None and graceful:
            try:
                env.close()
            except Exception:  # closing a broken engine must not break the pool
                logger.debug("close() failed for slot %d", slot, exc_info=True)
        proc, conn = self._procs[slot], self._conns[slot]
        self._procs[slot] = self._conns[slot] = None
        if proc is None:
            return
        if graceful and proc.is_alive():
            try:
                conn.send(("close", None))
                proc.join(timeout=2.0)
            except (OSError, BrokenPipeError):
                pass
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=2.0)
        conn.close()
