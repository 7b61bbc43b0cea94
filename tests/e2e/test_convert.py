"""``nemo-craft convert``: HF -> checkpoint -> HF is bit-exact, through the CLI."""

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint


def _cli(*args, cwd):
    out = subprocess.run(
        [sys.executable, "-m", "nemo_craft", "convert", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_from_hf_then_to_hf_round_trip(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    hf = make_tiny_hf_checkpoint(str(tmp_path / "hf"), "qwen3", num_layers=2)
    run_dir = f"run_dir={tmp_path}/run"
    _cli("from-hf", "model=from_hf", f"model.hf_path={hf}", run_dir, "--out", str(tmp_path / "ckpt"), cwd=repo)
    # The architecture is the checkpoint's recorded config; no model.hf_path here, so the
    # weights can only come from the checkpoint.
    no_hf = ["model.hf_path=null", "model.init=random"]
    _cli("to-hf", *no_hf, run_dir, f"checkpoint.resume={tmp_path}/ckpt", "--out", str(tmp_path / "back"), cwd=repo)
    a = load_file(f"{hf}/model.safetensors")
    b = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].view(-1).view(torch.int32).equal(b[k].view(-1).view(torch.int32)), k
