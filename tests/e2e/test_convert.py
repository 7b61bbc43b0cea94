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
    common = [
        "model=tiny",
        "model.architecture=qwen3",
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.ffn_hidden_size=160",
        "model.num_attention_heads=4",
        "model.num_query_groups=2",
        "model.kv_channels=16",
        "model.vocab_size=320",
        "model.tie_word_embeddings=false",
        "model.rotary_base=10000",
        f"run_dir={tmp_path}/run",
    ]
    _cli("from-hf", *common, f"model.hf_path={hf}", "--out", str(tmp_path / "ckpt"), cwd=repo)
    # No model.hf_path here: the weights can only come from the checkpoint.
    _cli("to-hf", *common, f"checkpoint.resume={tmp_path}/ckpt", "--out", str(tmp_path / "back"), cwd=repo)
    a = load_file(f"{hf}/model.safetensors")
    b = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].view(-1).view(torch.int32).equal(b[k].view(-1).view(torch.int32)), k
