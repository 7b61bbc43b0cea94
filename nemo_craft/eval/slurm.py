"""A sweep as SLURM arrays: one array task per run (``scripts/slurm/sweep_array.sbatch``).

    write_manifest(spec.runs(), root / "manifest.tsv")
    for cmd in sbatch_commands(spec, pending_runs, root / "manifest.tsv"):
        subprocess.run(cmd, check=True)

The manifest has a line per run of the sweep: its index, its run directory and its overrides,
tab-separated; array task ``i`` runs the line whose index is ``i``. Runs are grouped by the
nodes they need (one ``sbatch --nodes=N`` array per group) and only unfinished ones are
submitted (``--array=0-3,7``, throttled with ``%max_parallel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from pathlib import Path

from nemo_craft.eval.sweep_spec import RunSpec, SweepSpec

__all__ = ["index_ranges", "write_manifest", "sbatch_commands"]


def index_ranges(indices: Sequence[int]) -> str:
    """SLURM's ``--array`` list of ``indices``: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    xs = sorted(set(int(i) for i in indices))
    if not xs:
        raise ValueError("no array indices")
    parts = []
    for _, run in groupby(enumerate(xs), key=lambda p: p[1] - p[0]):
        values = [v for _, v in run]
        parts.append(str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}")
    return ",".join(parts)


def write_manifest(runs: Sequence[RunSpec], path: str | Path) -> Path:
    """Every run of the sweep, a line each: ``index<TAB>run_dir<TAB>override<TAB>override...``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for run in runs:
        fields = [str(run.index), str(run.run_dir), *run.overrides]
        bad = [f for f in fields if "\t" in f or "\n" in f]
        if bad:
            raise ValueError(f"run {run.name}: overrides may not contain tabs or newlines: {bad}")
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def sbatch_commands(spec: SweepSpec, runs: Sequence[RunSpec], manifest: str | Path) -> list[list[str]]:
    """The ``sbatch`` command lines submitting ``runs`` (one array per node count)."""
    manifest = Path(manifest).resolve()
    log_dir = (spec.root / "slurm").resolve()
    cmds = []
    for nodes, group in groupby(sorted(runs, key=lambda r: (r.nodes, r.index)), key=lambda r: r.nodes):
        array = index_ranges([r.index for r in group])
        if spec.slurm.max_parallel:
            array += f"%{spec.slurm.max_parallel}"
        cmds.append(
            [
                "sbatch",
                f"--array={array}",
                f"--nodes={nodes}",
                f"--job-name=craft-{spec.name}",
                f"--time={spec.slurm.time}",
                f"--output={log_dir}/%x-%A_%a.out",
                *spec.slurm.sbatch_args,
                spec.slurm.script,
                str(manifest),
            ]
        )
    return cmds
