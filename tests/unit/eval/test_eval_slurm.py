"""The SLURM side of a sweep: array index lists, the manifest, the sbatch commands (dry run) and
the array script's reading of its manifest line (DRY_RUN=1, no SLURM needed)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from nemo_craft.cli import sweep as sweep_cli
from nemo_craft.eval.slurm import index_ranges, sbatch_commands, write_manifest
from nemo_craft.eval.sweep_spec import SweepSpec
from tests.unit.eval._synthetic import SPEC, write_run, write_spec

REPO = Path(__file__).resolve().parents[3]


def test_index_ranges():
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert index_ranges([4]) == "4"
    assert index_ranges([3, 1, 2, 2]) == "1-3"
    with pytest.raises(ValueError):
        index_ranges([])


def test_manifest_has_a_tab_separated_line_per_run(tmp_path):
    spec = SweepSpec.load(write_spec(tmp_path))
    path = write_manifest(spec.runs(), tmp_path / "m.tsv")
    lines = path.read_text().splitlines()
    assert len(lines) == 12
    fields = lines[5].split("\t")
    run = spec.runs()[5]
    assert fields == [str(run.index), str(run.run_dir), *run.overrides]


def test_sbatch_commands_one_array_per_node_count(tmp_path):
    text = SPEC.replace(
        "tiny: {{overrides: [], nodes: 1}}",
        "tiny: {{overrides: [], nodes: 1}}\n  qwen3_8b: {{overrides: [], nodes: 2}}",
    )
    text += "slurm: {{time: '02:00:00', max_parallel: 4, sbatch_args: [--partition=batch]}}\n"
    spec = SweepSpec.load(write_spec(tmp_path, text))
    runs = [r for r in spec.runs() if r.index not in (0, 1)]  # two finished
    cmds = sbatch_commands(spec, runs, tmp_path / "m.tsv")
    assert len(cmds) == 2
    one, two = cmds
    log = (tmp_path / "sweep" / "slurm").resolve()
    tiny = index_ranges([r.index for r in runs if r.model == "tiny"])
    assert one == [
        "sbatch",
        f"--array={tiny}%4",
        "--nodes=1",
        "--job-name=craft-synth",
        "--time=02:00:00",
        f"--output={log}/%x-%A_%a.out",
        "--partition=batch",
        "scripts/slurm/sweep_array.sbatch",
        str((tmp_path / "m.tsv").resolve()),
    ]
    assert tiny == "2-5,12-17" and two[1] == "--array=6-11,18-23%4" and two[2] == "--nodes=2"


def test_cli_slurm_dry_run_submits_only_unfinished_runs(tmp_path, capsys, monkeypatch):
    path = write_spec(tmp_path)
    spec = SweepSpec.load(path)
    for run in spec.runs()[:3]:
        write_run(run.run_dir, {"val/success_rate": 0.5})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a dry run must not call sbatch"))
    assert sweep_cli.main([str(path), "--slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[sweep] 3 of 12 runs finished; 9 to submit"
    cmd = shlex.split(out[1])
    assert cmd[:3] == ["sbatch", "--array=3-11", "--nodes=1"] and cmd[-1].endswith("manifest.tsv")
    assert (tmp_path / "sweep" / "manifest.tsv").is_file() and (tmp_path / "sweep" / "slurm").is_dir()


def _array_task(manifest, task, code_dir):
    if not (code_dir / "scripts").exists():  # CODE_DIR is a checkout: the template sources its scripts/slurm
        (code_dir / "scripts").symlink_to(REPO / "scripts")
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_JOB_ID": "77",
        "SLURM_ARRAY_JOB_ID": "70",
        "CODE_DIR": str(code_dir),
        "MASTER_ADDR": "n0",
    }
    return subprocess.run(
        ["bash", str(REPO / "scripts/slurm/sweep_array.sbatch"), str(manifest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_array_script_runs_its_manifest_line(tmp_path):
    text = SPEC.replace("env.config.max_turns=15", "'env.config.task_types=[a, b]'")
    spec = SweepSpec.load(write_spec(tmp_path, text))
    manifest = write_manifest(spec.runs(), tmp_path / "m.tsv")
    run = spec.runs()[7]
    out = _array_task(manifest, 7, tmp_path)
    assert out.returncode == 0, out.stderr
    cmd = shlex.split(out.stdout.strip())
    (mounts,) = [c.split("=", 1)[1].split(",") for c in cmd if c.startswith("--container-mounts=")]
    logs = f"{tmp_path}/logs/70_7"
    assert cmd[0] == "srun" and mounts[:2] == [f"{tmp_path}:/workspace/nemo_craft", f"{logs}:{logs}"]
    assert f"{run.run_dir}:{run.run_dir}" in mounts  # an absolute run directory is mounted at its path
    i = cmd.index("scripts/slurm/launch.sh")
    assert cmd[i + 1 :] == list(run.overrides) and "env.config.task_types=[a, b]" in cmd
    write_run(run.run_dir, {"val/success_rate": 1.0})
    out = _array_task(manifest, 7, tmp_path)
    assert out.returncode == 0 and "already finished" in out.stdout
    assert _array_task(manifest, 99, tmp_path).returncode == 2
