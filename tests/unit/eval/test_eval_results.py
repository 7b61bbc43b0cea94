"""Collection of a sweep's metrics.jsonl files, mean ± std over seeds, the CSV and Markdown tables."""

import csv
import math

import pytest

from nemo_craft.eval.metrics import mean_std
from nemo_craft.eval.results import aggregate, collect, markdown_table, write_tables
from nemo_craft.eval.sweep_spec import SweepSpec
from tests.unit.eval._synthetic import write_run, write_spec

S, SC = "val/success_rate", "val/score_mean"


def _sweep(tmp_path):
    spec = SweepSpec.load(write_spec(tmp_path))
    runs = {r.name: r for r in spec.runs()}
    for seed, succ in zip((1, 2, 3), (0.5, 0.75, 1.0)):
        write_run(runs[f"sokoban/tiny/craft/seed{seed}"].run_dir, {S: succ})
    for seed, (score, succ) in zip((1, 2, 3), ((0.6, 0.25), (0.7, 0.5), (0.8, 0.75))):
        write_run(runs[f"webshop/tiny/craft/seed{seed}"].run_dir, {S: succ, SC: score})
    # SDAR: two finished seeds and one still running (not counted).
    write_run(runs["sokoban/tiny/sdar/seed1"].run_dir, {S: 0.25})
    write_run(runs["sokoban/tiny/sdar/seed2"].run_dir, {S: 0.5})
    write_run(runs["sokoban/tiny/sdar/seed3"].run_dir, {S: 1.0}, done=False)
    return spec


def _stat(stats, env, method, metric):
    [s] = [s for s in stats if (s.env, s.method, s.metric) == (env, method, metric)]
    return s


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([50.0, 75.0, 100.0]) == (75.0, 25.0, 3)
    assert mean_std([42.0]) == (42.0, 0.0, 1)
    mu, sd, n = mean_std([])
    assert math.isnan(mu) and math.isnan(sd) and n == 0


def test_final_value_is_the_last_row_of_the_highest_step(tmp_path):
    spec = _sweep(tmp_path)
    results = {r.run.name: r for r in collect(spec)}
    r = results["webshop/tiny/craft/seed2"]
    assert r.finished and r.final == {S: 0.5, SC: 0.7}
    assert r.curve == {0: 0.1, 2: pytest.approx(0.15), 3: 0.5}
    assert not results["sokoban/tiny/sdar/seed3"].finished


def test_aggregate_mean_and_std_over_finished_seeds(tmp_path):
    spec = _sweep(tmp_path)
    stats = aggregate(collect(spec), spec)
    s = _stat(stats, "sokoban", "craft", "Sokoban success")
    assert s.values == [50.0, 75.0, 100.0] and s.n == 3
    assert s.mean == pytest.approx(75.0, abs=1e-12) and s.std == pytest.approx(25.0, abs=1e-12)
    score = _stat(stats, "webshop", "craft", "WebShop score")
    assert score.mean == pytest.approx(70.0, abs=1e-12) and score.std == pytest.approx(10.0, abs=1e-12)
    succ = _stat(stats, "webshop", "craft", "WebShop success")
    assert succ.mean == pytest.approx(50.0, abs=1e-12) and succ.std == pytest.approx(25.0, abs=1e-12)
    sdar = _stat(stats, "sokoban", "sdar", "Sokoban success")  # seed 3 has not finished
    assert sdar.n == 2 and sdar.mean == pytest.approx(37.5) and sdar.std == pytest.approx(math.sqrt(2 * 12.5**2))
    assert _stat(stats, "webshop", "sdar", "WebShop score").n == 0


def test_markdown_table_in_the_papers_format(tmp_path):
    spec = _sweep(tmp_path)
    md = markdown_table(aggregate(collect(spec), spec), spec, finished=8)
    lines = md.splitlines()
    assert lines[0] == "# synth"
    assert lines[2] == (
        "Cells: Sokoban success / WebShop score / WebShop success (%, final validation, "
        "mean ± std over 3 seeds: 1, 2, 3)."
    )
    assert lines[4] == "| method | tiny |"
    assert lines[5] == "|---|---|"
    assert lines[6] == "| SDAR | 37.5 ± 17.7† / – / – |"
    assert lines[7] == "| CRAFT | 75.0 ± 25.0 / 70.0 ± 10.0 / 50.0 ± 25.0 |"
    assert "† fewer than 3 seeds finished." in lines and "– no finished run." in lines
    assert "8 of 12 runs finished." in lines


def test_csv_has_one_row_per_env_model_method_metric(tmp_path):
    spec = _sweep(tmp_path)
    paths = write_tables(aggregate(collect(spec), spec), spec, tmp_path / "out")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 2 * 3  # 2 methods x (1 Sokoban + 2 WebShop metrics)
    row = next(r for r in rows if r["method"] == "craft" and r["metric"] == "WebShop score")
    assert row == {
        "env": "webshop",
        "model": "tiny",
        "method": "craft",
        "metric": "WebShop score",
        "n_seeds": "3",
        "mean_pct": "70.0000",
        "std_pct": "10.0000",
        "values_pct": "60.0000;70.0000;80.0000",
    }
    empty = next(r for r in rows if r["method"] == "sdar" and r["metric"] == "WebShop score")
    assert empty["n_seeds"] == "0" and empty["mean_pct"] == "" and empty["values_pct"] == ""
    assert paths["markdown"].read_text().startswith("# synth")


def test_gain_table_reports_first_last_and_change(tmp_path):
    from nemo_craft.eval.results import gain_table

    spec = _sweep(tmp_path)  # every run validates 0.1 at step 0; CRAFT ends at 0.5 / 0.75 / 1.0
    lines = gain_table(collect(spec), spec).splitlines()
    head = lines.index("| sokoban / tiny | first | last | change |")
    assert lines[head + 2] == "| SDAR | 10.0 ± 0.0 | 37.5 ± 17.7 | +27.5 ± 17.7 |"  # seed 3 unfinished
    assert lines[head + 3] == "| CRAFT | 10.0 ± 0.0 | 75.0 ± 25.0 | +65.0 ± 25.0 |"
    assert "| webshop / tiny | first | last | change |" in lines
    paths = write_tables(aggregate(collect(spec), spec), spec, tmp_path / "out", results=collect(spec))
    assert "| CRAFT | 10.0 ± 0.0 | 75.0 ± 25.0 | +65.0 ± 25.0 |" in paths["markdown"].read_text()


def test_reward_gain_table_where_nothing_succeeds(tmp_path):
    """Search-QA on a tiny model: success stays 0, the reward (invalid actions penalised) rises;
    the reward table shows it, and results.md carries both tables."""
    from nemo_craft.eval.results import REWARD_KEY, gain_table

    spec = SweepSpec.load(write_spec(tmp_path))
    runs = {r.name: r for r in spec.runs()}
    for seed, reward in zip((1, 2, 3), (-0.01, 0.0, 0.01)):
        write_run(runs[f"webshop/tiny/craft/seed{seed}"].run_dir, {S: 0.0, REWARD_KEY: reward}, early=-0.03)
    results = collect(spec)
    reward = gain_table(results, spec, "reward").splitlines()
    head = reward.index("| webshop / tiny | first | last | change |")
    assert reward[head + 3] == "| CRAFT | -3.0 ± 0.0 | 0.0 ± 1.0 | +3.0 ± 1.0 |"
    assert reward[1].startswith("Mean validation reward (x 100: penalties included) at the first")
    with pytest.raises(ValueError, match="gain_table metric='loss'; allowed: success, reward"):
        gain_table(results, spec, "loss")
    text = write_tables(aggregate(results, spec), spec, tmp_path / "out", results=results)["markdown"].read_text()
    assert "Validation success at the first" in text and "Mean validation reward (x 100" in text
