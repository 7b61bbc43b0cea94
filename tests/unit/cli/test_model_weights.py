"""Where the model's weights come from, at the command line: model=from_hf through
`nemo-craft train --cfg job` (resolved and printed, or refused in one line), and the weights
check of `nemo-craft convert from-hf` (one line each, before any process group)."""

from __future__ import annotations

import json

import pytest

from nemo_craft.cli import convert as convert_cli
from nemo_craft.cli import train as train_cli


@pytest.fixture
def hf_dir(tmp_path):
    """A Qwen3 checkpoint directory's config.json (2 layers; no weights are read here)."""
    from nemo_craft.models.tiny_hf import tiny_hf_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config("qwen3", tied=True).to_dict()))
    return str(tmp_path)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_train_cfg_job_prints_the_architecture_read_from_the_checkpoint(hf_dir, capsys):
    assert train_cli.main(["--cfg", "job", "model=from_hf", f"model.hf_path={hf_dir}"]) == 0
    printed = capsys.readouterr().out
    assert "  architecture: qwen3\n" in printed and "  num_layers: 2\n" in printed and "  init: pretrained\n" in printed


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=from_hf"], "model=from_hf (model.architecture=null) reads the architecture from model.hf_path"),
        (["model=from_hf", "model.hf_path={}", "model.num_layers=4"], "model.num_layers=4 but {}/config.json has"),
        (["model=from_hf", "model.hf_path={}/nowhere"], "model.hf_path={}/nowhere: no config.json there"),
    ],
)
def test_train_cfg_job_refuses_from_hf_in_one_line(overrides, message, hf_dir, capsys):
    assert train_cli.main(["--cfg", "job", *(o.format(hf_dir) for o in overrides)]) == 2
    assert f"nemo-craft train: {message.format(hf_dir)}" in _one_line(capsys)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.hf_path={}"], "model.hf_path={} with model.init=random (the tiny model's"),
        (["model=qwen3_8b"], "model.init=pretrained needs model.hf_path=DIR"),
        (["model=qwen3_8b", "model.hf_path={}"], "model.num_layers=36 but {}/config.json has num_hidden_layers=2"),
    ],
)
def test_convert_refuses_weights_that_are_not_the_ones_asked_for(overrides, message, hf_dir, tmp_path, capsys):
    args = ["from-hf", *(o.format(hf_dir) for o in overrides), f"run_dir={tmp_path}/run", "--out", f"{tmp_path}/o"]
    assert convert_cli.main(args) == 2
    assert f"nemo-craft convert: {message.format(hf_dir)}" in _one_line(capsys)
