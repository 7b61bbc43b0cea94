"""What ``rollout.generation.backend=vllm`` says where it cannot run: vLLM missing, a torchvision that breaks its
import, an unsupported version; each one line naming the fix. (Whether it runs is tests/vllm's.)"""

import sys
import types

import pytest

from nemo_craft.rollout.vllm_backend import SUPPORTED_VLLM, vllm_problem


def test_missing_vllm_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    problem = vllm_problem()
    assert problem is not None and "bash scripts/install.sh vllm" in problem and "\n" not in problem


def test_a_torchvision_for_another_torch_names_the_uninstall(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "vllm":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    problem = vllm_problem()
    assert "torchvision::nms" in problem and "pip uninstall torchvision" in problem


@pytest.mark.parametrize("version", ["0.31.2", "0.34.0", "1.0.0"])
def test_an_unsupported_version_names_the_supported_range(monkeypatch, version):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__=version))
    problem = vllm_problem()
    lo, hi = SUPPORTED_VLLM
    assert problem is not None and version in problem and f">= {lo[0]}.{lo[1]}, < {hi[0]}.{hi[1]}" in problem


def test_a_supported_version_is_no_problem(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.32.0+cpu"))
    assert vllm_problem() is None
