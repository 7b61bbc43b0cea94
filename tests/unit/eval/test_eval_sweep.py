"""A sweep's YAML -> runs, the skip-finished logic, the local runner and the CLI (no training)."""

import json
import sys

import pytest

from nemo_craft.cli import sweep as sweep_cli
from nemo_craft.config import CONF_DIR
from nemo_craft.eval.sweep_spec import LocalSpec, RunSpec, SweepSpec, is_finished, merge_overrides
from nemo_craft.runtime.checkpoint_layout import write_complete_marker
from tests.unit.eval._synthetic import SPEC, write_run, write_spec


def test_runs_are_the_product_with_merged_overrides(tmp_path):
    spec = SweepSpec.load(write_spec(tmp_path))
    runs = spec.runs()
    assert len(runs) == 2 * 1 * 2 * 3 and [r.index for r in runs] == list(range(12))
    assert [r.name for r in runs[:4]] == [
        "sokoban/tiny/sdar/seed1",
        "sokoban/tiny/sdar/seed2",
        "sokoban/tiny/sdar/seed3",
        "sokoban/tiny/craft/seed1",
    ]
    r = runs[-1]
    assert r.run_dir == tmp_path / "sweep" / "runs" / "webshop" / "tiny" / "craft" / "seed3"
    assert r.overrides == (
        "env=webshop",
        "model=tiny",
        "method=craft",
        "seed=3",
        "trainer.max_steps=3",
        "logging.progress_bar=false",
        "env.config.max_turns=15",
        f"run_dir={r.run_dir}",
    )
    cmd = r.train_command(python="py")
    assert cmd == ["py", "-m", "nemo_craft", "train", *r.overrides, "checkpoint.resume=auto"]
    assert r.train_command(8, python="py")[:5] == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=8",
    ]


def test_later_overrides_win_per_key():
    assert merge_overrides(["a=1", "b=2"], ["+a=3"], ["c=4", "b=5"]) == ["+a=3", "c=4", "b=5"]
    with pytest.raises(ValueError, match="key=value"):
        merge_overrides(["oops"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (("[sdar, craft]", "[sdar, nope]"), r"methods \['nope'\] have no conf/method"),
        (("webshop: ", "shop: "), r"envs \['shop'\] have no conf/env"),
        (("seeds: [1, 2, 3]", "seeds: [1, 1]"), "distinct integers"),
        (("seeds: [1, 2, 3]", "seeds: [1]\nbogus: 1"), r"unknown key\(s\) \['bogus'\]"),
    ],
)
def test_bad_spec_is_refused_with_the_key(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec.load(write_spec(tmp_path, SPEC.replace(*edit)))


def test_missing_spec_file_lists_the_available_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="cpu_study.yaml"):
        SweepSpec.load(tmp_path / "nope.yaml")


def test_shipped_sweeps_load():
    cpu = SweepSpec.load(CONF_DIR / "sweep" / "cpu_study.yaml")
    assert len(cpu.runs()) == 8 * 2 * 1 * 3 and set(cpu.envs) == {"sokoban", "search_qa"}
    paper = SweepSpec.load(CONF_DIR / "sweep" / "paper.yaml")
    assert set(paper.envs) == {"alfworld", "search_qa", "webshop"}
    assert list(paper.models) == ["qwen3_1p7b", "qwen2p5_3b", "qwen2p5_7b", "qwen3_8b"]
    assert paper.methods == ["grpo", "grpo_opsd", "sdar", "adaptive_cringe", "craft"]
    qa = next(r for r in paper.runs() if r.env == "search_qa")
    assert "rollout.tasks_per_step=128" in qa.overrides and "rollout.tasks_per_step=16" not in qa.overrides
    assert {
        "trainer.max_steps=150",
        "rollout.group_size=8",
        "trainer.optim.lr=1.0e-6",
        "rollout.generation.max_new_tokens=512",
    } <= set(qa.overrides)


def _checkpoint(run_dir, step, max_steps):
    ckpt = run_dir / "checkpoints" / f"step_{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text(f"trainer:\n  max_steps: {max_steps}\n")
    write_complete_marker(ckpt, step)


def test_finished_means_done_marker_or_checkpoint_at_the_last_step(tmp_path):
    assert not is_finished(tmp_path / "a")
    write_run(tmp_path / "b", {"val/success_rate": 1.0}, done=True)
    assert is_finished(tmp_path / "b")
    _checkpoint(tmp_path / "c", 5, max_steps=5)
    assert is_finished(tmp_path / "c")
    _checkpoint(tmp_path / "d", 5, max_steps=10)
    assert not is_finished(tmp_path / "d")
    (tmp_path / "e" / "checkpoints" / "step_000010").mkdir(parents=True)  # no COMPLETE marker: a crashed save
    assert not is_finished(tmp_path / "e")


def test_local_runner_skips_finished_runs_and_marks_successes(tmp_path, monkeypatch):
    spec = SweepSpec.load(write_spec(tmp_path))
    runs = spec.runs()[:3]
    write_run(runs[0].run_dir, {"val/success_rate": 1.0})
    codes = {runs[1].index: 0, runs[2].index: 3}
    monkeypatch.setattr(
        RunSpec,
        "train_command",
        lambda self, n=1: [
            sys.executable,
            "-c",
            f"import sys; print('training {self.name}'); sys.exit({codes[self.index]})",
        ],
    )
    assert sweep_cli.run_local(spec, runs, dry_run=False) == 1
    done = json.loads((runs[1].run_dir / "done.json").read_text())
    assert done["exit_code"] == 0 and done["method"] == "sdar" and done["seed"] == 2
    assert "training sokoban/tiny/sdar/seed2" in (runs[1].run_dir / "train.log").read_text()
    assert not (runs[2].run_dir / "done.json").exists()
    assert not (runs[0].run_dir / "train.log").exists()  # finished before: not run again


def test_local_runner_runs_parallel_runs_at_once_with_their_thread_count(tmp_path, monkeypatch):
    spec = SweepSpec.load(write_spec(tmp_path))
    spec.local = LocalSpec(parallel_runs=2, threads_per_run=1)
    runs = spec.runs()[:3]
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    # Each run waits until a second run has started (or 20 s pass): one after another, the
    # first would time out and fail; two at a time, both see each other.
    body = (
        "import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); (d / sys.argv[2]).touch(); "
        "t = time.time()\nwhile len(list(d.iterdir())) < 2 and time.time() - t < 20: time.sleep(0.05)\n"
        "print('threads', os.environ['OMP_NUM_THREADS']); sys.exit(0 if len(list(d.iterdir())) >= 2 else 4)"
    )
    monkeypatch.setattr(
        RunSpec, "train_command", lambda self, n=1: [sys.executable, "-c", body, str(stamps), str(self.index)]
    )
    assert sweep_cli.run_local(spec, runs, dry_run=False) == 0
    for run in runs:
        assert "threads 1" in (run.run_dir / "train.log").read_text()
        assert (run.run_dir / "done.json").exists()


def test_local_spec_validates_its_fields():
    with pytest.raises(ValueError, match="local.parallel_runs=0"):
        LocalSpec(parallel_runs=0)
    with pytest.raises(ValueError, match="local.threads_per_run=0"):
        LocalSpec(threads_per_run=0)


def test_cli_dry_run_prints_the_commands_and_runs_nothing(tmp_path, capsys):
    path = write_spec(tmp_path)
    spec = SweepSpec.load(path)
    write_run(spec.runs()[0].run_dir, {"val/success_rate": 1.0})
    assert sweep_cli.main([str(path), "--dry-run", "--only", "env=sokoban", "--only", "method=sdar"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[sweep] 1/3 sokoban/tiny/sdar/seed1: finished, skipped"
    assert out[1].startswith("[sweep] 2/3 sokoban/tiny/sdar/seed2: ") and " -m nemo_craft train env=sokoban" in out[1]
    assert out[1].endswith("checkpoint.resume=auto") and len(out) == 3
    assert not (spec.runs()[1].run_dir / "train.log").exists()


def test_cli_only_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sweep_cli.main([str(write_spec(tmp_path)), "--dry-run", "--only", "lr=1"])
