"""Evaluation splits per environment, the per-environment paper metrics and one evaluation's summary."""

import pytest

from nemo_craft.eval.metrics import markdown_summary, paper_metrics, summarize
from nemo_craft.eval.splits import TEST_SEED_OFFSET, split_spec


def test_val_is_the_trainers_validation_and_test_is_held_out():
    val = split_spec("sokoban", "val")
    assert val.env_split is None and val.seeds(3, val_seed_offset=1000) == [1000, 1001, 1002]
    test = split_spec("sokoban", "test")
    assert test.seeds(2, val_seed_offset=1000) == [TEST_SEED_OFFSET, TEST_SEED_OFFSET + 1]
    for env in ("alfworld", "search_qa", "webshop"):
        spec = split_spec(env, "test")
        assert spec.env_split == "test" and spec.seeds(2, val_seed_offset=1000) == [0, 1]
    assert split_spec("scienceworld", "val").env_split == "dev"
    assert split_spec("scienceworld", "test").env_split == "test"


def test_unknown_split_or_environment_is_refused():
    with pytest.raises(ValueError, match="--split 'train'"):
        split_spec("sokoban", "train")
    with pytest.raises(ValueError, match="no evaluation splits"):
        split_spec("nethack", "val")


def _ep(seed, success, score, turns, reward=0.0, error=None):
    return {
        "task_seed": seed,
        "success": success,
        "score": score,
        "reward": reward,
        "num_turns": turns,
        "n_invalid": 1,
        "finish_reason": "done",
        "error": error,
    }


def test_summary_reports_the_papers_metrics_in_percent():
    eps = [
        _ep(0, True, 1.0, 4, 1.0),
        _ep(1, False, 0.5, 6),
        _ep(2, False, 0.0, 15, error="timeout"),
        _ep(3, True, 1.0, 5, 1.0),
    ]
    s = summarize(eps, "webshop")
    assert s["n_tasks"] == 4 and s["success_rate"] == 0.5 and s["score_mean"] == 0.625
    assert s["turns_mean"] == 7.5 and s["reward_mean"] == 0.5 and s["env_errors"] == 1
    assert s["paper"] == {"WebShop score": 62.5, "WebShop success": 50.0}
    assert list(summarize(eps, "search_qa")["paper"]) == ["Search-QA EM"]
    assert [m.label for m in paper_metrics("alfworld")] == ["ALFWorld success"]
    assert [m.val_key for m in paper_metrics("webshop")] == ["val/score_mean", "val/success_rate"]
    with pytest.raises(ValueError, match="no episodes"):
        summarize([], "webshop")


def test_markdown_summary():
    result = {
        "env": "webshop",
        "method": "craft",
        "split": "test",
        "env_split": "test",
        "first_seed": 0,
        "checkpoint": None,
        "step": None,
        "temperature": 0.4,
        "summary": summarize([_ep(0, True, 1.0, 4), _ep(1, False, 0.5, 6)], "webshop"),
    }
    md = markdown_summary(result).splitlines()
    assert md[0] == "# craft on webshop (test split)"
    assert "initial weights" in md[2] and "temperature 0.4" in md[2]
    assert "| WebShop score (%) | 75.0 |" in md and "| WebShop success (%) | 50.0 |" in md
    assert "| turns_mean | 5.0000 |" in md
