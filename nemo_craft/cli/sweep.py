"""``nemo-craft sweep conf/sweep/NAME.yaml [--dry-run] [--slurm] [--collect] [--only KEY=VALUE ...]``

Methods x environments x models x seeds from one YAML (``nemo_craft.eval.sweep_spec``).

    nemo-craft sweep conf/sweep/cpu_study.yaml              # every run here, one after another, then the tables
    nemo-craft sweep conf/sweep/cpu_study.yaml --only env=sokoban --only method=craft
    nemo-craft sweep conf/sweep/paper.yaml --slurm --dry-run   # write the manifest, print the sbatch commands
    nemo-craft sweep conf/sweep/paper.yaml --slurm             # submit them (one array task per run)
    nemo-craft sweep conf/sweep/paper.yaml --collect           # tables and plots of what has finished

Each run is ``nemo-craft train`` in a subprocess with its own ``run_dir``
(``<out_dir>/runs/<env>/<model>/<method>/seed<k>``, its output in ``train.log`` there) and
``checkpoint.resume=auto``, so an interrupted run resumes; a finished run (its ``done.json``, or a
checkpoint at its last step) is skipped. The results go to ``<out_dir>/results/``:
``results.csv``, ``results.md`` (the paper's table, docs/algorithm.md#the-papers-evaluation, mean ± std over seeds),
``curves_<env>.png`` and ``ablation.png``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nemo_craft.eval.sweep_spec import RunSpec, SweepSpec, is_finished, write_done

_ONLY_KEYS = ("env", "model", "method", "seed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nemo-craft sweep",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="the sweep's YAML, e.g. conf/sweep/cpu_study.yaml")
    p.add_argument("--dry-run", action="store_true", help="print what would run or be submitted; run nothing")
    p.add_argument(
        "--slurm", action="store_true", help="submit SLURM arrays (one task per run) instead of running here"
    )
    p.add_argument("--collect", action="store_true", help="only collect the results and plot them")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"run only the runs with this {'/'.join(_ONLY_KEYS)} (repeatable; same key: any of them)",
    )
    return p


def select(runs: Sequence[RunSpec], only: Sequence[str]) -> list[RunSpec]:
    """The runs matching every ``--only`` key (any of the values given for a key)."""
    wanted: dict[str, set[str]] = {}
    for item in only:
        key, sep, value = item.partition("=")
        if not sep or key not in _ONLY_KEYS:
            raise ValueError(f"--only {item!r}: expected KEY=VALUE with KEY one of {_ONLY_KEYS}")
        wanted.setdefault(key, set()).add(value)
    return [r for r in runs if all(str(getattr(r, k)) in v for k, v in wanted.items())]


def _child_env(threads: int | None = None) -> dict:
    """This environment, with this checkout importable (it need not be installed)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_local(spec: SweepSpec, runs: Sequence[RunSpec], *, dry_run: bool) -> int:
    """Run the unfinished ``runs`` here, ``local.parallel_runs`` at a time (in order); the
    number that failed."""
    pending, failed, active = [], 0, []
    for k, run in enumerate(runs, 1):
        tag = f"[sweep] {k}/{len(runs)} {run.name}"
        if is_finished(run.run_dir):
            print(f"{tag}: finished, skipped", flush=True)
        elif dry_run:
            print(f"{tag}: {shlex.join(run.train_command(spec.local.nproc_per_node))}", flush=True)
        else:
            pending.append((tag, run))
    while pending or active:
        while pending and len(active) < spec.local.parallel_runs:
            active.append(_start(spec, *pending.pop(0)))
        time.sleep(0.5)
        for job in [j for j in active if j[0].poll() is not None]:
            active.remove(job)
            failed += _finish(*job)
    return failed


def _start(spec: SweepSpec, tag: str, run: RunSpec):
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log = run.run_dir / "train.log"
    print(f"{tag}: running (log {log})", flush=True)
    f = open(log, "a")
    proc = subprocess.Popen(
        run.train_command(spec.local.nproc_per_node),
        stdout=f,
        stderr=subprocess.STDOUT,
        env=_child_env(spec.local.threads_per_run),
    )
    return proc, f, tag, run, log, time.monotonic()


def _finish(proc, f, tag: str, run: RunSpec, log: Path, t0: float) -> int:
    """Record a finished run; 1 if it failed."""
    f.close()
    wall = time.monotonic() - t0
    if proc.returncode == 0:
        write_done(run, exit_code=0, wall_s=round(wall, 1))
        print(f"{tag}: done in {wall:.0f} s", flush=True)
        return 0
    print(f"{tag}: FAILED with exit code {proc.returncode} after {wall:.0f} s; see {log}", flush=True)
    return 1


def submit_slurm(spec: SweepSpec, runs: Sequence[RunSpec], *, dry_run: bool) -> int:
    from nemo_craft.eval.slurm import sbatch_commands, write_manifest

    pending = [r for r in runs if not is_finished(r.run_dir)]
    print(f"[sweep] {len(runs) - len(pending)} of {len(runs)} runs finished; {len(pending)} to submit", flush=True)
    if not pending:
        return 0
    manifest = write_manifest(spec.runs(), spec.root / "manifest.tsv")
    (spec.root / "slurm").mkdir(parents=True, exist_ok=True)
    for cmd in sbatch_commands(spec, pending, manifest):
        print(shlex.join(cmd), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)
    if not dry_run:
        print(f"[sweep] collect when they are done: nemo-craft sweep {spec.source} --collect", flush=True)
    return 0


def collect_and_plot(spec: SweepSpec) -> dict[str, Path]:
    from nemo_craft.eval.plots import ablation_bars, learning_curves
    from nemo_craft.eval.results import aggregate, collect, write_tables

    results = collect(spec)
    out = spec.root / "results"
    finished = sum(r.finished for r in results)
    paths = write_tables(aggregate(results, spec), spec, out, finished=finished, results=results)
    for p in learning_curves(results, spec, out):
        paths[p.stem] = p
    ablation = ablation_bars(results, spec, out / "ablation.png")
    if ablation is not None:
        paths["ablation"] = ablation
    print(paths["markdown"].read_text(), end="")
    print(f"[sweep] results in {out}: {', '.join(p.name for p in paths.values())}", flush=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    spec = SweepSpec.load(args.spec)
    runs = select(spec.runs(), args.only)
    if not runs:
        print(f"[sweep] no run of {args.spec} matches --only {args.only}", file=sys.stderr)
        return 2
    if args.collect:
        collect_and_plot(spec)
        return 0
    if args.slurm:
        return submit_slurm(spec, runs, dry_run=args.dry_run)
    failed = run_local(spec, runs, dry_run=args.dry_run)
    if not args.dry_run:
        collect_and_plot(spec)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
