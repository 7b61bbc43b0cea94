"""The generation-backend extension point (docs/extending.md#generation-backend): the page's example
backend is registered, accepted by the configs and run through ``Generator``; the table's names cost no
backend import; auto, the start-up checks and the planner ask the classes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_craft.config import RunConfig, compose
from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.parallel.config import ParallelConfig
from nemo_craft.rollout import GenerationConfig, Generator
from nemo_craft.rollout.backends import (
    GENERATION_BACKENDS,
    backend_class,
    backend_names,
    check_run,
    planned_backend,
    register_backend,
    resolve_backend,
)
from nemo_craft.rollout.dynamic_backend import DynamicCapability
from nemo_craft.testing.examples import echo_backend
from nemo_craft.testing.examples.echo_backend import EchoBackend

REPO = Path(__file__).resolve().parents[3]


def example_shown_in(doc: Path, path: str) -> str:
    """The code block that ``doc`` shows under ``<!-- example: path -->``."""
    m = re.search(rf"<!-- example: {re.escape(path)} -->\n```python\n(.*?)```\n", doc.read_text(), re.DOTALL)
    assert m, f"{doc.name} shows no example {path}"
    return m.group(1)


@pytest.fixture
def registry():
    """The table as it is, restored after the test (registrations are process-wide)."""
    saved = dict(GENERATION_BACKENDS)
    yield GENERATION_BACKENDS
    GENERATION_BACKENDS.clear()
    GENERATION_BACKENDS.update(saved)


def test_the_page_shows_the_example_backend_verbatim():
    path = "nemo_craft/testing/examples/echo_backend.py"
    assert example_shown_in(REPO / "docs" / "extending.md", path) == (REPO / path).read_text()


def test_a_registered_backend_runs_through_the_generator(registry):
    assert "echo" not in backend_names()
    echo_backend.register()
    assert backend_names() == ("auto", "static", "dynamic", "vllm", "echo")
    run = RunConfig.from_omegaconf(compose(["rollout.generation.backend=echo"]))
    assert run.rollout.generation.backend == "echo"  # the configs accept it
    tok = CharTokenizer()
    gen = Generator([torch.nn.Linear(1, 1)], tok, GenerationConfig(backend="echo", max_sequence_length=64))
    assert gen.backend_name == "echo" and isinstance(gen._backend, EchoBackend)
    prompts = [tok.encode("<action>up</action> and on"), tok.encode("abc"), tok.encode("xy")]
    results = gen.generate(prompts, max_new_tokens=[30, 5, 0])
    assert [(r.text, r.finish_reason) for r in results] == [
        ("<action>up</action>", "stop"),  # the config's stop string ends the echo
        ("abcab", "length"),
        ("", "length"),  # a zero budget never reaches the backend
    ]
    assert results[0].logprobs == [0.0] * len(results[0].token_ids)
    assert gen.read_stats() == {"rollout/echo_tokens": 24.0} and gen.read_stats() == {"rollout/echo_tokens": 0.0}
    gen.weights_changed()
    gen.release_memory()


def test_its_start_up_check_runs_where_the_trainer_asks(registry):
    echo_backend.register()
    check_run("echo", ParallelConfig(), None)
    with pytest.raises(
        ValueError, match="rollout.generation.backend=echo needs parallel.pipeline_model_parallel_size=1, got 2"
    ):
        check_run("echo", ParallelConfig(pipeline_model_parallel_size=2), None)
    check_run("auto", ParallelConfig(pipeline_model_parallel_size=2), None)


class PreferredEcho(EchoBackend):
    """An echo that auto prefers to every built-in backend, where there is a GPU."""

    auto_preference = 100

    @classmethod
    def problem(cls, capability):
        return None if capability().cuda else "no CUDA GPU"


def test_auto_takes_the_most_preferred_backend_that_can_run(registry):
    register_backend("preferred", f"{__name__}:PreferredEcho")
    gpu = DynamicCapability(cuda=True, flash_attn="2.7.3", flash_attn_3=False, params_dtype=torch.bfloat16)
    cpu = DynamicCapability(cuda=False, flash_attn=None, flash_attn_3=False, params_dtype=torch.bfloat16)
    assert resolve_backend("auto", lambda: gpu) == "preferred"
    assert resolve_backend("auto", lambda: cpu) == "static"
    with pytest.raises(
        ValueError, match=r"rollout.generation.backend=preferred cannot run here: no CUDA GPU\. Use .*static"
    ):
        resolve_backend("preferred", lambda: cpu)


def test_registration_and_lookup_refuse_what_cannot_work(registry):
    with pytest.raises(ValueError, match="other than 'auto', got 'auto'"):
        register_backend("auto", "nemo_craft.testing.examples.echo_backend:EchoBackend")
    with pytest.raises(ValueError, match="'package.module:Class', got 'EchoBackend'"):
        register_backend("echo", "EchoBackend")
    taken = "'vllm' is already registered as 'nemo_craft.rollout.vllm_backend:VllmBackend'"
    with pytest.raises(ValueError, match=taken):
        register_backend("vllm", "nemo_craft.testing.examples.echo_backend:EchoBackend")
    register_backend("half", "nemo_craft.rollout.stopping:StopCriteria")
    with pytest.raises(TypeError, match=r"backend 'half' .* lacks holds_weight_copy, .*generate, .*read_stats"):
        backend_class("half")
    with pytest.raises(ValueError, match=r"backend must be one of .*'nope'"):
        GenerationConfig(backend="nope")


def test_the_builtin_backends_answer_the_planners_questions():
    for name in ("static", "dynamic", "vllm"):
        backend_class(name)  # every member of GenerationBackend, or a TypeError naming the missing ones
    assert planned_backend("auto", "bf16") is backend_class("dynamic")
    assert planned_backend("auto", "fp32") is backend_class("static")
    paged_copy = {n: (backend_class(n).paged_kv_cache, backend_class(n).holds_weight_copy) for n in GENERATION_BACKENDS}
    assert paged_copy == {"static": (False, False), "dynamic": (True, False), "vllm": (True, True)}


def test_listing_and_asking_the_backends_imports_no_engine():
    """Config validation lists the names and the planner asks the classes: neither may import vLLM,
    megatron's inference engines or anything above rollout."""
    code = (
        "import sys\n"
        "from nemo_craft.rollout.backends import backend_class, backend_names\n"
        "assert 'vllm' in backend_names() and backend_class('vllm').holds_weight_copy\n"
        "backend_class('dynamic'), backend_class('static')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'vllm' or m.startswith(("
        "'megatron.core.inference', 'nemo_craft.trainer', 'nemo_craft.eval', 'nemo_craft.planner'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
