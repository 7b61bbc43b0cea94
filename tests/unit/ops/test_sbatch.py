"""scripts/slurm/train.sbatch: valid bash, the directives a preemptible multi-node job needs, and
a requeue decision that matches the trainer's exit code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from nemo_craft.trainer.preemption import (
    EXIT_MARKER_ENV,
    PREEMPTION_EXIT_CODE,
    SIGNAL_LEAD_ENV,
    STOP_FILE_ENV,
    LeadTimeWatch,
    lead_time_warning,
)

REPO = Path(__file__).resolve().parents[3]
SBATCH = (REPO / "scripts" / "slurm" / "train.sbatch").read_text()


def test_it_is_valid_bash():
    for script in ("train.sbatch", "sweep_array.sbatch", "launch.sh", "env.sh", "container.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / "slurm" / script)], check=True)


def test_directives_for_requeue_on_preemption():
    directives = re.findall(r"^#SBATCH (\S+)", SBATCH, flags=re.M)
    for needed in ("--requeue", "--ntasks-per-node=1", "--open-mode=append"):
        assert needed in directives


def test_the_warning_lead_covers_a_step_and_a_save_and_the_trainer_knows_it():
    """The lead of SLURM's warning signal must outlast one RL step plus one checkpoint save of
    the recipes (a 2-minute lead was shorter than one step); the template hands the same value
    to the trainer, which warns when its measured step + save times exceed it."""
    for script in ("train.sbatch", "sweep_array.sbatch"):
        text = (REPO / "scripts" / "slurm" / script).read_text()
        lead = int(re.search(r"^#SBATCH --signal=B:USR1@(\d+)$", text, flags=re.M).group(1))
        assert lead >= 900, script
        assert f'export {SIGNAL_LEAD_ENV}="${{SIGNAL_LEAD_S:-{lead}}}"' in text, script


def test_lead_time_warning(monkeypatch):
    monkeypatch.delenv(SIGNAL_LEAD_ENV, raising=False)
    assert lead_time_warning(5000.0, 5000.0) is None  # no lead known: nothing to say
    monkeypatch.setenv(SIGNAL_LEAD_ENV, "1200")
    assert lead_time_warning(600.0, 300.0) is None
    warning = lead_time_warning(900.0, 500.0)
    assert "1200" in warning and "--signal=B:USR1@2160" in warning


def test_it_runs_launch_sh_in_the_container_and_requeues_on_the_trainers_exit_code():
    assert f"PREEMPTION_EXIT_CODE={PREEMPTION_EXIT_CODE}" in SBATCH
    for needed in (
        'container_setup "$@" || exit 2',
        '"${SRUN_CONTAINER[@]}"',
        "scripts/slurm/launch.sh",
        "scontrol show hostnames",
        "scontrol requeue",
        "trap on_usr1 USR1",
        f"export {STOP_FILE_ENV}=",
        f"export {EXIT_MARKER_ENV}=",
        'source "${CODE_DIR}/scripts/slurm/env.sh"',
    ):
        assert needed in SBATCH, needed


def test_nccl_environment():
    env = (REPO / "scripts" / "slurm" / "env.sh").read_text()
    for name in (
        "CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "NCCL_IB_TIMEOUT",
    ):
        assert name in env


def test_dockerfile_builds_on_a_nemo_image_and_installs_the_package():
    docker = (REPO / "containers" / "Dockerfile").read_text()
    # NeMo 26.04 ships megatron-core 0.17.0 (docs/compatibility.md); the build refuses one outside the range
    assert re.search(r"^ARG NEMO_IMAGE=nvcr\.io/nvidia/nemo:26\.04$", docker, flags=re.M)
    assert "FROM ${NEMO_IMAGE}" in docker
    # the users' install path (a wheel), with the image's own torch build pinned
    assert "PIP_CONSTRAINT=/tmp/image-constraints.txt NEMO_CRAFT_EDITABLE=0 bash scripts/install.sh" in docker
    assert "print(f'torch=={torch.__version__}')\" > /tmp/image-constraints.txt" in docker
    assert "megatron-core==${MEGATRON_CORE_VERSION}" in docker and "require_supported()" in docker
    # scripts/gpu_check.sh runs pytest in the container as built
    assert 'PIP_CONSTRAINT=/tmp/image-constraints.txt python -m pip install ".[hf,test]"' in docker


def test_the_trainer_warns_once_when_a_step_and_a_save_outgrow_the_lead(monkeypatch, capsys):
    monkeypatch.setenv(SIGNAL_LEAD_ENV, "100")
    watch = LeadTimeWatch(show=True)
    watch.record(step_s=60.0, save_s=30.0)
    assert capsys.readouterr().out == ""
    watch.record(step_s=50.0, save_s=45.0)  # the longest step (60) and save (45) together: 105 > 100
    watch.record(step_s=70.0)
    out = capsys.readouterr().out
    assert out.count("[nemo_craft] warning") == 1 and "SIGNAL_LEAD_S=217" in out
