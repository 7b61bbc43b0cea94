"""Stop cleanly when the scheduler asks: at a step boundary, on every rank at once.

    preemption = PreemptionHandler()                     # handles SIGTERM and SIGUSR1 from here on
    for step in range(start, max_steps):
        train_one_step()
        if preemption.should_stop():                     # collective: every rank calls it
            save_checkpoint(step)
            preemption.exit(step)                        # marker + SystemExit(75): the job is requeued

A signal (SIGUSR1, SIGTERM) or the stop file ``$NEMO_CRAFT_STOP_FILE`` asks for a stop; every rank
stops after the same step, and the exit status 75 tells the sbatch template to requeue. What asks,
how the ranks agree and the exit status: docs/cluster.md#preemption-and-resume.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import NoReturn, Optional

__all__ = [
    "PREEMPTION_EXIT_CODE",
    "STOP_FILE_ENV",
    "EXIT_MARKER_ENV",
    "SIGNAL_LEAD_ENV",
    "PreemptionHandler",
    "LeadTimeWatch",
    "lead_time_warning",
]

PREEMPTION_EXIT_CODE = 75
STOP_FILE_ENV = "NEMO_CRAFT_STOP_FILE"
EXIT_MARKER_ENV = "NEMO_CRAFT_EXIT_MARKER"
SIGNAL_LEAD_ENV = "NEMO_CRAFT_SIGNAL_LEAD_S"
_DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class LeadTimeWatch:
    """The longest step and save seen so far; prints :func:`lead_time_warning` once when they
    stop fitting (``show``: this rank prints)."""

    def __init__(self, show: bool):
        self.show, self.step_s, self.save_s, self.warned = show, 0.0, 0.0, False

    def record(self, step_s: float = 0.0, save_s: float = 0.0) -> None:
        self.step_s, self.save_s = max(self.step_s, step_s), max(self.save_s, save_s)
        warning = lead_time_warning(self.step_s, self.save_s)
        if warning and not self.warned:
            self.warned = True
            if self.show:
                print(f"[nemo_craft] warning: {warning}", flush=True)


def lead_time_warning(step_s: float, save_s: float) -> Optional[str]:
    """A warning when one step plus one checkpoint save outlast the scheduler's warning lead
    (``$NEMO_CRAFT_SIGNAL_LEAD_S``, set by the sbatch templates): a stop asked for then would be
    killed before its checkpoint is complete. None when they fit or no lead is known."""
    lead = os.environ.get(SIGNAL_LEAD_ENV)
    if not lead or step_s + save_s <= float(lead):
        return None
    need = int(1.5 * (step_s + save_s)) + 60
    return (
        f"one step ({step_s:.0f} s) plus one checkpoint save ({save_s:.0f} s) take longer than the SLURM "
        f"warning lead {SIGNAL_LEAD_ENV}={lead} s: a preempted run would be killed mid-save; submit with "
        f"SIGNAL_LEAD_S={need} sbatch --signal=B:USR1@{need} ..."
    )


class PreemptionHandler:
    """Records a stop request (signal or stop file) and answers ``should_stop()`` at step boundaries.

    Args:
        signals: the signals to handle (default SIGTERM and SIGUSR1).
        stop_file: a path whose existence requests a stop; default ``$NEMO_CRAFT_STOP_FILE``
            (None or empty: no stop file).
        group: the process group that must agree (default: the whole world).
        install: install the signal handlers now (main thread only); else call ``install()``.
    """

    def __init__(
        self,
        signals: Iterable[int] = _DEFAULT_SIGNALS,
        *,
        stop_file: Optional[str] = None,
        group=None,
        install: bool = True,
    ) -> None:
        self.signals = tuple(signals)
        self.stop_file = stop_file if stop_file is not None else (os.environ.get(STOP_FILE_ENV) or None)
        self.group = group
        self.received: Optional[int] = None
        """The last signal received (its number), None if none."""
        self.reason: Optional[str] = None
        """Why the run stopped, once ``should_stop()`` answered True ("SIGUSR1", "stop file", "another rank")."""
        self._previous: dict[int, object] = {}
        if install:
            self.install()

    # ------------------------------------------------------------------ install

    def install(self) -> PreemptionHandler:
        """Install the handlers (main thread only, as Python requires); returns self. Idempotent."""
        if self._previous:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "PreemptionHandler.install() must run in the main thread (Python delivers signals there)"
            )
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before ``install()``."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _on_signal(self, signum, frame) -> None:
        # Only record it: the step boundary does the rest.
        if signum == signal.SIGINT:
            if self.received == signal.SIGINT:  # the second Ctrl-C: the user does not want to wait
                raise KeyboardInterrupt
            os.write(2, b"\n[nemo_craft] Ctrl-C: checkpointing at the end of this step (Ctrl-C again to abort)\n")
        self.received = signum

    # ------------------------------------------------------------------ the step boundary

    def requested_locally(self) -> bool:
        """Whether this rank has been asked to stop (a signal, or the stop file exists)."""
        return self.received is not None or bool(self.stop_file and os.path.exists(self.stop_file))

    def should_stop(self) -> bool:
        """True on every rank if any rank was asked to stop. Under torch.distributed this is a
        collective (an all-reduce MAX): call it on every rank at the same step boundary."""
        local = self.requested_locally()
        agreed = local
        dist = _initialized_dist()
        if dist is not None:
            import torch

            device = "cpu"
            if dist.get_backend(self.group) == "nccl":
                device = torch.device("cuda", torch.cuda.current_device())
            flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            agreed = bool(flag.item())
        if agreed and self.reason is None:
            if self.received is not None:
                self.reason = signal.Signals(self.received).name
            elif local:
                self.reason = "stop file"
            else:
                self.reason = "another rank"
        return agreed

    # ------------------------------------------------------------------ after the checkpoint

    def write_exit_marker(self, step: int, checkpoint: Optional[str] = None, path: Optional[str] = None) -> None:
        """Record the preemption exit for the job script (global rank 0 writes it; others return).
        ``path`` defaults to ``$NEMO_CRAFT_EXIT_MARKER``; nothing is written when neither is set."""
        path = path or os.environ.get(EXIT_MARKER_ENV)
        if not path:
            return
        dist = _initialized_dist()
        if dist is not None and dist.get_rank() != 0:
            return
        record = dict(
            exit_code=PREEMPTION_EXIT_CODE,
            reason=self.reason,
            step=step,
            checkpoint=checkpoint,
            time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        tmp = f"{path}.tmp{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.write("\n")
        os.replace(tmp, path)

    def exit(self, step: Optional[int] = None, checkpoint: Optional[str] = None) -> NoReturn:
        """After the checkpoint: write the exit marker and leave with :data:`PREEMPTION_EXIT_CODE`
        (raises ``SystemExit(75)``, so ``finally`` blocks and atexit handlers still run)."""
        self.write_exit_marker(step if step is not None else -1, checkpoint)
        self.uninstall()
        raise SystemExit(PREEMPTION_EXIT_CODE)


def _initialized_dist():
    """``torch.distributed`` when a process group is initialised, else None (without importing
    torch in a process that never did)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None
