"""docs/extending_model_family.md's worked example, run as the page shows it: its Python block
registers a toy family (Llama with other tensor names), a tiny checkpoint of that family is
imported into megatron at TP2 and exported back bit-exactly, the imported parameters are those
of the same checkpoint under Llama's names, and the page's YAML describes the checkpoint."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from nemo_craft.testing.distributed import run_distributed

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending_model_family.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)


def _register_the_doc_family() -> None:
    (code,) = _blocks("python")
    exec(compile(code, str(DOC), "exec"), {})


def _toy_checkpoint(llama_dir: str, out_dir: str) -> str:
    """The Llama checkpoint ``llama_dir`` under the toy family's tensor names and model_type."""
    from safetensors.torch import load_file, save_file

    from nemo_craft.models.families import family

    llama, toy = family("llama").weights, family("toyllama").weights
    renamed = {}
    for name, tensor in load_file(os.path.join(llama_dir, "model.safetensors")).items():
        match = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
        if match:
            new = toy.layer(int(match.group(1)), match.group(2))
        else:
            new = {llama.embedding: toy.embedding, llama.final_norm: toy.final_norm}.get(name, name)
        renamed[new] = tensor
    os.makedirs(out_dir)
    save_file(renamed, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = json.loads(Path(llama_dir, "config.json").read_text())
    config.update(model_type="toyllama", architectures=[family("toyllama").hf_architecture])
    Path(out_dir, "config.json").write_text(json.dumps(config))
    return out_dir


def body_round_trip(toy_dir: str, llama_dir: str, out_dir: str) -> dict:
    from nemo_craft.models.hf import load_hf_model, save_hf_checkpoint
    from nemo_craft.models.hf_mapping import global_named_parameters
    from nemo_craft.parallel.config import ParallelConfig

    _register_the_doc_family()  # a spawned rank imports the registry afresh
    parallel = ParallelConfig(tensor_model_parallel_size=2)
    cfg, chunks = load_hf_model(toy_dir, parallel)
    save_hf_checkpoint(chunks, cfg, out_dir)
    _, llama_chunks = load_hf_model(llama_dir, parallel)
    toy_params = dict(global_named_parameters(chunks[0]))
    same = all(torch.equal(toy_params[n], p) for n, p in global_named_parameters(llama_chunks[0]))
    return dict(architecture=cfg.architecture, same_as_llama=same, count=len(toy_params))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    _register_the_doc_family()
    root = tmp_path_factory.mktemp("family")
    llama = make_tiny_hf_checkpoint(str(root / "llama"), "llama", num_layers=2, head_dim=16)
    return llama, _toy_checkpoint(llama, str(root / "toy"))


def test_the_documented_family_round_trips_import_and_export(checkpoints, tmp_path):
    from safetensors.torch import load_file

    llama_dir, toy_dir = checkpoints
    results = run_distributed(
        body_round_trip, world_size=2, tp=2, args=(toy_dir, llama_dir, str(tmp_path / "out")), timeout=300
    )
    for r in results:
        assert r["architecture"] == "toyllama" and r["same_as_llama"] and r["count"] > 0, r
    original, exported = load_file(f"{toy_dir}/model.safetensors"), load_file(f"{tmp_path}/out/model.safetensors")
    assert sorted(exported) == sorted(original) and any(k.startswith("transformer.h.1.") for k in exported)
    for key, tensor in original.items():
        assert tensor.view(-1).view(torch.int32).equal(exported[key].view(-1).view(torch.int32)), key
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model_type"] == "toyllama" and written["architectures"] == ["ToyLlamaForCausalLM"]


def test_the_documented_yaml_describes_the_checkpoint(checkpoints):
    from nemo_craft.models.config import ModelConfig
    from nemo_craft.models.hf_config import model_config_from_hf

    _, toy_dir = checkpoints
    (block,) = _blocks("yaml")
    named = ModelConfig(**yaml.safe_load(block), hf_path=toy_dir)
    named.check_weights()  # the YAML agrees with the checkpoint's config.json
    assert named.to_hf_config()["architectures"] == ["ToyLlamaForCausalLM"]
    from_hf = model_config_from_hf(toy_dir)
    assert from_hf == named
