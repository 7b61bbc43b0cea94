"""Preemption: a real signal to a running loop stops it at a step boundary with exit code 75,
every rank stops at the same step, and the stop file works like a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_craft.testing.distributed import run_distributed
from nemo_craft.trainer.preemption import (
    EXIT_MARKER_ENV,
    PREEMPTION_EXIT_CODE,
    STOP_FILE_ENV,
    PreemptionHandler,
)
from tests.unit.ops._preemption_bodies import ranks_agree_on_stop

REPO = Path(__file__).resolve().parents[3]


def _start_loop(tmp_path: Path, **env) -> subprocess.Popen:
    environ = dict(os.environ, PYTHONPATH=str(REPO), **{EXIT_MARKER_ENV: str(tmp_path / "exit.json")})
    environ.pop(STOP_FILE_ENV, None)
    environ.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.unit.ops._preemption_bodies", "1000", "0.2"],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(prefix):
            return lines
    proc.kill()
    raise AssertionError(f"never saw {prefix!r}; output: {lines}; stderr: {proc.stderr.read()}")


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_signal_stops_at_the_next_step_boundary_with_code_75(tmp_path, sig):
    proc = _start_loop(tmp_path)
    _read_until(proc, "start 2")  # in the middle of step 2
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == PREEMPTION_EXIT_CODE == 75, err
    # step 2 ran to its end, then the boundary stopped the loop: no step 3
    assert out.splitlines()[-2:] == ["end 2", f"checkpoint 2 {sig.name}"], out
    assert "start 3" not in out
    marker = json.loads((tmp_path / "exit.json").read_text())
    assert marker["exit_code"] == 75 and marker["step"] == 2 and marker["reason"] == sig.name
    assert marker["checkpoint"] == "ckpt/step2"


def test_stop_file_stops_like_a_signal(tmp_path):
    stop = tmp_path / "stop"
    proc = _start_loop(tmp_path, **{STOP_FILE_ENV: str(stop)})
    _read_until(proc, "start 1")
    stop.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == PREEMPTION_EXIT_CODE, err
    assert out.splitlines()[-1] == "checkpoint 1 stop file"


def test_no_request_no_stop_and_handlers_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler(stop_file="") as preemption:
        assert signal.getsignal(signal.SIGUSR1) == preemption._on_signal
        assert not preemption.should_stop() and preemption.reason is None
    assert signal.getsignal(signal.SIGUSR1) == before


def test_exit_raises_system_exit_75_and_restores_the_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    preemption = PreemptionHandler(stop_file="")
    assert signal.getsignal(signal.SIGTERM) == preemption._on_signal
    with pytest.raises(SystemExit) as stop:
        preemption.exit(7)
    assert stop.value.code == PREEMPTION_EXIT_CODE
    assert signal.getsignal(signal.SIGTERM) == before


def test_exit_marker_is_not_written_without_a_path(tmp_path, monkeypatch):
    monkeypatch.delenv(EXIT_MARKER_ENV, raising=False)
    PreemptionHandler().write_exit_marker(3)  # no path: nothing to do, no error
    PreemptionHandler().write_exit_marker(3, path=str(tmp_path / "m.json"))
    assert json.loads((tmp_path / "m.json").read_text())["step"] == 3


def test_every_rank_stops_after_the_step_one_rank_was_signalled():
    results = run_distributed(ranks_agree_on_stop, world_size=2, args=(1, 3, 10), timeout=120)
    assert results == [(3, "another rank"), (3, "SIGUSR1")]
