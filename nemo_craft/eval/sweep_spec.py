"""A sweep: methods x environments x models x seeds from one YAML (``conf/sweep/*.yaml``).

    spec = SweepSpec.load("conf/sweep/cpu_study.yaml")
    for run in spec.runs():          # RunSpec: env, model, method, seed, run_dir, overrides
        if not is_finished(run.run_dir):
            subprocess.run(run.train_command())

The YAML (OmegaConf: ``${oc.env:VAR,default}`` and ``${vars.x}`` interpolations resolve)::

    name: cpu_study
    out_dir: outputs/sweeps/cpu_study       # runs go to <out_dir>/runs/<env>/<model>/<method>/seed<k>
    methods: [grpo, sdar, craft]            # conf/method/<name>.yaml
    envs:    {sokoban: {overrides: []}}     # conf/env/<name>.yaml, plus the env's own overrides
    models:  {tiny: {overrides: [], nodes: 1}}
    seeds:   [1, 2, 3]
    overrides: [trainer.max_steps=24]       # every run
    ablation: [sdar, craft_only_counterfactual, craft_only_controller, craft_only_polarized_kl, craft]
    slurm: {time: "04:00:00", max_parallel: 0, sbatch_args: []}
    local: {nproc_per_node: 1}

A run's overrides are, later ones winning for the same key: ``env= model= method= seed=``, the
sweep's ``overrides``, the model's, the environment's, then ``run_dir=``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from nemo_craft.core.paths import CONF_DIR
from nemo_craft.core.typed import to_dataclass
from nemo_craft.runtime.checkpoint_layout import list_checkpoints

__all__ = [
    "AxisEntry",
    "SlurmSpec",
    "LocalSpec",
    "SweepSpec",
    "RunSpec",
    "DONE_MARKER",
    "is_finished",
    "write_done",
    "merge_overrides",
]

DONE_MARKER = "done.json"
"""Written into a run's directory when its training exited successfully."""

DEFAULT_ABLATION = ("sdar", "craft_only_counterfactual", "craft_only_controller", "craft_only_polarized_kl", "craft")


@dataclass
class AxisEntry:
    """One environment or model of a sweep."""

    overrides: list[str] = field(default_factory=list)
    """Overrides of the runs with this environment / model (e.g. ``+recipe=qwen3_8b_1node``)."""
    nodes: int = 1
    """Nodes of one run (models only; SLURM runs are grouped into one array per node count)."""
    label: Optional[str] = None
    """Name in tables and plots (default: a known display name, else the key)."""

    def __post_init__(self) -> None:
        self.overrides = [str(o) for o in self.overrides]
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"nodes={self.nodes!r}: must be an int >= 1")


@dataclass
class SlurmSpec:
    """How ``--slurm`` submits the runs: one array task per run (``scripts/slurm/sweep_array.sbatch``)."""

    time: str = "04:00:00"
    """Time limit of one array task (preempted runs requeue and resume from their checkpoint)."""
    max_parallel: int = 0
    """At most this many array tasks at once (sbatch ``--array=...%N``); 0: no limit."""
    sbatch_args: list[str] = field(default_factory=list)
    """More ``sbatch`` arguments, e.g. ``[--partition=batch, --account=me]``."""
    script: str = "scripts/slurm/sweep_array.sbatch"

    def __post_init__(self) -> None:
        if not isinstance(self.max_parallel, int) or self.max_parallel < 0:
            raise ValueError(f"slurm.max_parallel={self.max_parallel!r}: must be an int >= 0")
        self.sbatch_args = [str(a) for a in self.sbatch_args]


@dataclass
class LocalSpec:
    """How runs are launched on this machine."""

    nproc_per_node: int = 1
    """1: ``python -m nemo_craft train``; more: ``torchrun --standalone --nproc-per-node=N``."""
    parallel_runs: int = 1
    """Runs at once (each its own process group); 1: one after another."""
    threads_per_run: Optional[int] = None
    """CPU threads of each run (``OMP_NUM_THREADS``); None: torch's default. Several runs at
    once on a small CPU need it: runs whose thread pools overlap slow each other down many
    times over. CPU results depend on the thread count (it splits the sums), so keep it fixed
    within a study."""

    def __post_init__(self) -> None:
        for name in ("nproc_per_node", "parallel_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"local.{name}={value!r}: must be an int >= 1")
        if self.threads_per_run is not None and (not isinstance(self.threads_per_run, int) or self.threads_per_run < 1):
            raise ValueError(f"local.threads_per_run={self.threads_per_run!r}: must be null or an int >= 1")


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep."""

    index: int
    env: str
    model: str
    method: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]
    nodes: int = 1

    @property
    def name(self) -> str:
        return f"{self.env}/{self.model}/{self.method}/seed{self.seed}"

    def train_command(self, nproc_per_node: int = 1, python: str = sys.executable) -> list[str]:
        """``nemo-craft train`` of this run, resuming its own last checkpoint when there is one."""
        if nproc_per_node > 1:
            launch = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}"]
        else:
            launch = [python]
        return launch + ["-m", "nemo_craft", "train", *self.overrides, "checkpoint.resume=auto"]


def merge_overrides(*groups: list[str]) -> list[str]:
    """The overrides in order, a later one replacing an earlier one of the same key (in place)."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            if "=" not in o:
                raise ValueError(f"override {o!r} is not of the form key=value")
            key = o.split("=", 1)[0].lstrip("+~")
            out.pop(key, None)
            out[key] = o
    return list(out.values())


@dataclass
class SweepSpec:
    """A sweep's YAML, validated (see the module docstring)."""

    name: str
    out_dir: str
    methods: list[str]
    envs: dict[str, AxisEntry]
    models: dict[str, AxisEntry]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    """Overrides of every run."""
    ablation: list[str] = field(default_factory=lambda: list(DEFAULT_ABLATION))
    """Methods of the pillar-ablation bar chart, in order (those the sweep runs)."""
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    local: LocalSpec = field(default_factory=LocalSpec)
    vars: dict[str, Any] = field(default_factory=dict)
    """Free values for ``${vars.x}`` interpolations (e.g. where the Hugging Face weights are)."""
    source: Optional[str] = None
    """The YAML file it was loaded from."""

    def __post_init__(self) -> None:
        self.envs = {k: v if isinstance(v, AxisEntry) else AxisEntry(**(v or {})) for k, v in self.envs.items()}
        self.models = {k: v if isinstance(v, AxisEntry) else AxisEntry(**(v or {})) for k, v in self.models.items()}
        if isinstance(self.slurm, dict):
            self.slurm = SlurmSpec(**self.slurm)
        if isinstance(self.local, dict):
            self.local = LocalSpec(**self.local)
        self.overrides = [str(o) for o in self.overrides]
        for axis, group in (("methods", "method"), ("envs", "env"), ("models", "model")):
            names = list(getattr(self, axis))
            if not names:
                raise ValueError(f"sweep '{self.name}': '{axis}' is empty")
            known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(
                    f"sweep '{self.name}': {axis} {unknown} have no conf/{group}/<name>.yaml; known: {known}"
                )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"sweep '{self.name}': methods {self.methods} repeat a method")
        if (
            not self.seeds
            or len(set(self.seeds)) != len(self.seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds)
        ):
            raise ValueError(f"sweep '{self.name}': seeds={self.seeds!r} must be distinct integers, at least one")

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        if not path.is_file():
            available = sorted(p.name for p in (CONF_DIR / "sweep").glob("*.yaml"))
            raise FileNotFoundError(f"no sweep file '{path}'; available in conf/sweep: {available}")
        node = OmegaConf.load(path)
        values = OmegaConf.to_container(node, resolve=True)
        values["source"] = str(path)
        return to_dataclass(cls, values, f"sweep {path}")

    @property
    def root(self) -> Path:
        return Path(self.out_dir)

    def runs(self) -> list[RunSpec]:
        """Every run, environment-major then model, method, seed (the index is stable for a spec)."""
        out = []
        for env, e in self.envs.items():
            for model, m in self.models.items():
                for method in self.methods:
                    for seed in self.seeds:
                        run_dir = self.root / "runs" / env / model / method / f"seed{seed}"
                        overrides = merge_overrides(
                            [f"env={env}", f"model={model}", f"method={method}", f"seed={seed}"],
                            self.overrides,
                            m.overrides,
                            e.overrides,
                            [f"run_dir={run_dir}"],
                        )
                        out.append(RunSpec(len(out), env, model, method, seed, run_dir, tuple(overrides), m.nodes))
        return out


def is_finished(run_dir: str | Path) -> bool:
    """Whether a run completed: its ``done.json``, or a complete checkpoint at the run's last step
    (``trainer.max_steps`` of that checkpoint's config)."""
    run_dir = Path(run_dir)
    if (run_dir / DONE_MARKER).is_file():
        return True
    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        return False
    last = found[-1]
    config = last.path / "config.yaml"
    if not config.is_file():
        return False
    max_steps = OmegaConf.select(OmegaConf.load(config), "trainer.max_steps")
    return max_steps is not None and last.step >= int(max_steps)


def write_done(run: RunSpec, **extra: Any) -> Path:
    """The completion marker of ``run``: what it was, and ``extra`` (return code, wall time)."""
    path = run.run_dir / DONE_MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(run).items()}
    path.write_text(json.dumps({**info, **extra}, indent=1) + "\n")
    return path
