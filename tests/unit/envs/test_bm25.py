import importlib.util
import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, sys; from nemo_craft.envs.bm25 import import_bm25s; import_bm25s(); "
    "jax = sys.modules.get('jax'); "
    "print(os.environ.get('JAX_PLATFORMS'), jax.default_backend() if jax else None)"
)


def _probe(env_extra: dict) -> list:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"} | env_extra
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_importing_bm25s_keeps_jax_on_the_cpu():
    """bm25s runs a JAX op when imported: without JAX_PLATFORMS=cpu that op makes JAX claim 75% of
    each GPU's memory in the trainer's process (a CUDA out-of-memory error at set_device)."""
    platforms, backend = _probe({})
    assert platforms == "cpu"
    if importlib.util.find_spec("jax") is not None:
        assert backend == "cpu"


def test_a_users_jax_platforms_is_kept():
    if importlib.util.find_spec("jax") is not None:
        pytest.skip("a non-CPU JAX platform would start JAX on that device")
    assert _probe({"JAX_PLATFORMS": "cuda"})[0] == "cuda"
