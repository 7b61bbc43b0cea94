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
# bm25s imported without nemo_craft's guard: what the check must catch
UNGUARDED = "import os, sys; import bm25s; print(os.environ.get('JAX_PLATFORMS'), sys.modules['jax'].default_backend())"

# A stand-in for JAX where it is not installed (no CI job installs it): like JAX it reads
# JAX_PLATFORMS once, at import, and would take the GPU when unset; bm25s runs jax.lax.top_k
# when imported, as with the real package.
FAKE_JAX = {
    "__init__.py": (
        "import os\n"
        "_PLATFORM = (os.environ.get('JAX_PLATFORMS') or 'gpu').split(',')[0]\n"
        "def default_backend():\n"
        "    return _PLATFORM\n"
        "from . import lax\n"
    ),
    "lax.py": (
        "import numpy as np\ndef top_k(x, k):\n    x = np.asarray(x)\n    i = np.argsort(-x)[:k]\n    return x[i], i\n"
    ),
}


def _probe(env_extra: dict, path: list | None = None, code: str = PROBE) -> list:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"} | env_extra
    if path:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, path), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


@pytest.fixture
def fake_jax(tmp_path):
    (tmp_path / "jax").mkdir()
    for name, text in FAKE_JAX.items():
        (tmp_path / "jax" / name).write_text(text)
    return tmp_path


def test_importing_bm25s_keeps_jax_on_the_cpu():
    """bm25s runs a JAX op when imported: without JAX_PLATFORMS=cpu that op makes JAX claim 75% of
    each GPU's memory in the trainer's process (a CUDA out-of-memory error at set_device)."""
    platforms, backend = _probe({})
    assert platforms == "cpu"
    if importlib.util.find_spec("jax") is not None:  # the real JAX (tests below: the stand-in)
        assert backend == "cpu"


def test_with_jax_importable_bm25s_runs_it_on_the_cpu(fake_jax):
    assert _probe({}, [fake_jax]) == ["cpu", "cpu"]


def test_the_jax_check_fires_on_an_unguarded_import(fake_jax):
    """Negative control: bm25s imported without import_bm25s puts the stand-in on the GPU."""
    assert _probe({}, [fake_jax], UNGUARDED) == ["None", "gpu"]


def test_a_users_jax_platforms_is_kept(fake_jax):
    # the stand-in shadows any real JAX, so no device is started
    assert _probe({"JAX_PLATFORMS": "cuda"}, [fake_jax]) == ["cuda", "cuda"]
