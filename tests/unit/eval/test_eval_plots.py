"""The sweep's PNGs render from synthetic runs."""

from nemo_craft.cli import sweep as sweep_cli
from nemo_craft.eval.plots import ablation_bars, learning_curves
from nemo_craft.eval.results import collect
from nemo_craft.eval.sweep_spec import SweepSpec
from tests.unit.eval._synthetic import SPEC, write_run, write_spec


def _sweep(tmp_path, text=SPEC):
    spec = SweepSpec.load(write_spec(tmp_path, text))
    for k, run in enumerate(spec.runs()):
        if k % 5:  # some runs missing
            write_run(run.run_dir, {"val/success_rate": 0.1 * (k % 7), "val/score_mean": 0.5}, early=0.05 * (k % 3))
    return spec


def _png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_learning_curves_and_ablation_render(tmp_path):
    spec = _sweep(tmp_path)
    results = collect(spec)
    paths = learning_curves(results, spec, tmp_path / "plots")
    assert [p.name for p in paths] == ["curves_sokoban.png", "curves_webshop.png"]
    assert all(_png(p) for p in paths)
    bars = ablation_bars(results, spec, tmp_path / "plots" / "ablation.png")
    assert bars is not None and _png(bars)


def test_a_reward_row_where_the_runs_logged_rewards(tmp_path):
    """Success on top; below it the mean validation reward, only for runs that logged it."""
    import matplotlib.image

    spec = _sweep(tmp_path)
    for k, run in enumerate(spec.runs()):
        if k % 5 and run.env == "webshop":
            write_run(run.run_dir, {"val/success_rate": 0.0, "val/reward_mean": 0.01 * (k % 4)}, early=-0.02)
    heights = {
        p.name: matplotlib.image.imread(p).shape[0] for p in learning_curves(collect(spec), spec, tmp_path / "p")
    }
    assert heights["curves_webshop.png"] == 2 * heights["curves_sokoban.png"]


def test_no_learning_curve_for_an_environment_without_finished_runs(tmp_path):
    spec = _sweep(tmp_path)
    results = [r for r in collect(spec) if r.run.env != "webshop"]
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "curves_webshop.png").write_bytes(b"stale")
    paths = learning_curves(results, spec, tmp_path / "plots")
    assert [p.name for p in paths] == ["curves_sokoban.png"]
    assert not (tmp_path / "plots" / "curves_webshop.png").exists()


def test_no_ablation_chart_without_ablation_methods(tmp_path):
    spec = _sweep(tmp_path, SPEC.replace("[sdar, craft]", "[grpo]"))
    assert ablation_bars(collect(spec), spec, tmp_path / "a.png") is None
    assert not (tmp_path / "a.png").exists()


def test_collect_command_writes_tables_and_plots(tmp_path, capsys):
    spec = _sweep(tmp_path)
    assert sweep_cli.main([spec.source, "--collect"]) == 0
    out = tmp_path / "sweep" / "results"
    names = {p.name for p in out.iterdir()}
    assert names == {"results.csv", "results.md", "curves_sokoban.png", "curves_webshop.png", "ablation.png"}
    assert "| CRAFT |" in capsys.readouterr().out
