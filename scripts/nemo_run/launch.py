"""Submit a nemo_craft training run to SLURM with NeMo-Run (the alternative to train.sbatch).

    python scripts/nemo_run/launch.py --account ACC --partition batch --nodes 2 \\
        --container-image /lustre/containers/nemo_craft.sqsh --mount /lustre/ckpt:/lustre/ckpt \\
        -- +recipe=qwen3_8b_2nodes env=search_qa method=craft

Runs ``torchrun ... -m nemo_craft train checkpoint.resume=auto <overrides>`` on every node in
the container, with the environment of ``scripts/slurm/env.sh``, through
``nemo_run.SlurmExecutor`` (pyxis) and its torchrun launcher (one agent per node, c10d
rendezvous). ``--dryrun`` prints what would be submitted. From a laptop, ``--ssh-host`` submits
through an SSH tunnel; on a login node the local tunnel is used.

NeMo-Run (``pip install nemo-run``) is imported only when submitting; everything before that
(argument parsing, the command, the environment) works without it. Requeue on preemption is the
sbatch template's job (scripts/slurm/train.sbatch); with NeMo-Run, use its own ``retries``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = REPO / "scripts" / "slurm" / "env.sh"
CONTAINER_WORKDIR = "/workspace/nemo_craft"
_EXPORT = re.compile(r"^export\s+([A-Za-z_][A-Za-z0-9_]*)=\$\{\1:-(.*)\}\s*$")


def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """The ``export NAME=${NAME:-value}`` defaults of scripts/slurm/env.sh (comments skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        match = _EXPORT.match(line.strip())
        if match:
            env[match.group(1)] = match.group(2)
    return env


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--account", required=True)
    parser.add_argument("--partition", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--time", default="04:00:00")
    parser.add_argument("--container-image", required=True, help="squashfs path or registry image")
    parser.add_argument("--code-dir", default=str(REPO), help="checkout mounted at " + CONTAINER_WORKDIR)
    parser.add_argument("--mount", action="append", default=[], help="extra src:dst mount (repeatable)")
    parser.add_argument("--job-dir", default=str(REPO / "nemo_run_jobs"), help="NeMo-Run's job directory")
    parser.add_argument("--ssh-host", help="submit over SSH to this login node (else: locally)")
    parser.add_argument("--ssh-user", help="user for --ssh-host")
    parser.add_argument("--name", default="nemo-craft")
    parser.add_argument("--retries", type=int, default=0, help="NeMo-Run retries of a failed job")
    parser.add_argument("--dryrun", action="store_true", help="print what would be submitted, submit nothing")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of `nemo-craft train` (after --)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus-per-node must be >= 1")
    return args


def train_args(overrides: Sequence[str]) -> list[str]:
    """Arguments of ``python -m nemo_craft``: the same the sbatch template's launch.sh passes."""
    return ["train", "checkpoint.resume=auto", *overrides]


def job_env() -> dict[str, str]:
    """The job's environment: env.sh's defaults, and the mounted checkout first on PYTHONPATH
    (NeMo-Run runs the script from its own working directory)."""
    return dict(read_env_file(), PYTHONPATH=CONTAINER_WORKDIR)


def container_mounts(args: argparse.Namespace) -> list[str]:
    return [f"{args.code_dir}:{CONTAINER_WORKDIR}", *args.mount]


def build(args: argparse.Namespace):
    """(script, executor) for NeMo-Run; imports nemo_run."""
    try:
        import nemo_run as run
    except ImportError as err:
        raise SystemExit(
            f"NeMo-Run is not installed ({err}); `pip install nemo-run`, or submit with "
            "scripts/slurm/train.sbatch instead"
        ) from None
    if args.ssh_host:
        tunnel = run.SSHTunnel(host=args.ssh_host, user=args.ssh_user, job_dir=args.job_dir)
    else:
        tunnel = run.LocalTunnel(job_dir=args.job_dir)
    executor = run.SlurmExecutor(
        account=args.account,
        partition=args.partition,
        nodes=args.nodes,
        ntasks_per_node=args.gpus_per_node,
        gpus_per_node=args.gpus_per_node,
        time=args.time,
        container_image=args.container_image,
        container_mounts=container_mounts(args),
        exclusive=True,
        mem="0",
        tunnel=tunnel,
        env_vars=job_env(),
        retries=args.retries,
    )
    executor.launcher = "torchrun"  # one agent per node, nproc = GPUs, c10d rendezvous
    script = run.Script(path="nemo_craft", args=train_args(args.overrides), entrypoint="python", m=True)
    return run, script, executor


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    run, script, executor = build(args)
    with run.Experiment(args.name) as experiment:
        experiment.add(script, executor=executor, name=args.name)
        if args.dryrun:
            experiment.dryrun()
        else:
            experiment.run(detach=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
