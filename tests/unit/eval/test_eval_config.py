"""``evaluate``'s config: the checkpoint's run config with the command line's overrides on top."""

import pytest
from omegaconf import OmegaConf

from nemo_craft.config import compose
from nemo_craft.eval.evaluator import eval_config
from nemo_craft.runtime.checkpoint_layout import write_complete_marker


def _fake_checkpoint(tmp_path, overrides):
    """A checkpoint directory holding only the resolved config (enough for ``eval_config``)."""
    ckpt = tmp_path / "run" / "checkpoints" / "step_000007"
    ckpt.mkdir(parents=True)
    cfg = compose(overrides + [f"run_dir={tmp_path / 'run'}"])
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_complete_marker(ckpt, 7)
    return ckpt


def test_config_comes_from_the_checkpoint_with_overrides_on_top(tmp_path):
    ckpt = _fake_checkpoint(tmp_path, ["env=search_qa", "method=sdar", "env.config.max_turns=3", "seed=5"])
    cfg, info = eval_config([f"checkpoint.resume={ckpt.parent}", "trainer.val_tasks=5"])
    assert info.path == ckpt and info.step == 7
    assert cfg.env_name == "search_qa" and cfg.env.config.max_turns == 3 and cfg.method_name == "sdar"
    assert cfg.seed == 5 and cfg.trainer.val_tasks == 5 and cfg.run_dir == str(tmp_path / "run")
    assert cfg.checkpoint.resume == str(ckpt) and cfg.checkpoint.dir is None and cfg.checkpoint.save_every == 0
    cfg, _ = eval_config([f"checkpoint.resume={ckpt}", "env=webshop", "method=grpo"])
    assert cfg.env_name == "webshop" and cfg.env.name == "webshop" and cfg.env.config.max_turns == 15
    assert cfg.method_name == "grpo" and cfg.loss.preset == "grpo"


def test_without_a_checkpoint_the_config_is_composed(tmp_path):
    cfg, info = eval_config(["env=webshop", "checkpoint.resume=null"])
    assert info is None and cfg.env_name == "webshop" and cfg.checkpoint.resume is None


def test_bad_checkpoint_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="resume=auto has no run"):
        eval_config(["checkpoint.resume=auto"])
    with pytest.raises(FileNotFoundError, match="not found"):
        eval_config([f"checkpoint.resume={tmp_path}/nope"])
    ckpt = _fake_checkpoint(tmp_path, [])
    with pytest.raises(ValueError, match="recipe is not applied"):
        eval_config([f"checkpoint.resume={ckpt}", "+recipe=qwen3_1p7b_1node"])
