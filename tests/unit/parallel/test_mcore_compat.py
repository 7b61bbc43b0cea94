"""The supported megatron-core range and the version rows of ``mcore_compat``: what is refused at
start-up and how, that setup.cfg states the same range, and that a build lacking one of its
version's hooks is an error naming the version."""

import configparser
import os
import re
import types
from pathlib import Path

import pytest
import torch

from nemo_craft.parallel import mcore_compat
from nemo_craft.parallel.mcore_compat import SUPPORTED, UnsupportedMegatronError, api_for, missing_pieces

REPO = Path(__file__).resolve().parents[3]


def test_setup_cfg_requires_the_supported_range():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requirements = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
    assert f"megatron-core{SUPPORTED}" in requirements


@pytest.mark.parametrize("version", ["0.15.3", "0.16.0", "0.20.0", "0.20.0rc0", "1.0.0"])
def test_an_unsupported_version_is_one_line_naming_it_and_the_range(version):
    with pytest.raises(UnsupportedMegatronError) as err:
        api_for(version)
    message = str(err.value)
    assert "\n" not in message
    assert f"megatron-core {version} is not supported" in message and SUPPORTED in message


def test_a_version_that_is_no_number_is_refused():
    with pytest.raises(UnsupportedMegatronError, match="reports the version 'main', which is not a version number"):
        api_for("main")


@pytest.mark.parametrize(
    "version,row",
    [
        (
            "0.16.1",
            dict(
                inference_config=False,
                pp_microbatched_prefill=True,
                sampler_takes_logits=True,
                sampler_rebinds_tokens=False,
                stop_callback_caller="_dynamic_step_context_bookkeeping",
            ),
        ),
        (
            "0.17.1",
            dict(
                inference_config=True,
                pp_microbatched_prefill=False,
                sampler_takes_logits=True,
                sampler_rebinds_tokens=False,
                stop_callback_caller="_dynamic_step_context_bookkeeping",
            ),
        ),
        (
            "0.18.2",
            dict(
                inference_config=True,
                pp_microbatched_prefill=False,
                sampler_takes_logits=False,
                sampler_rebinds_tokens=True,
                stop_callback_caller="_dynamic_step_context_bookkeeping",
            ),
        ),
        (
            "0.19.2",
            dict(
                inference_config=True,
                pp_microbatched_prefill=False,
                sampler_takes_logits=False,
                sampler_rebinds_tokens=False,
                stop_callback_caller="_apply_stop_word_finished_ids",
            ),
        ),
        # NeMo containers build megatron-core from source: a pre-release or local build is its release
        ("0.19.0rc0+gitabc123", dict(inference_config=True, sampler_takes_logits=False)),
    ],
)
def test_each_supported_version_has_its_row(version, row):
    api = api_for(version)
    assert {k: getattr(api, k) for k in row} == row
    assert api.kv_release_method == (
        "deallocate_inference_state_buffers" if api.inference_config else "deallocate_all_tensors"
    )


def test_the_installed_megatron_core_is_supported_and_has_its_hooks():
    api = mcore_compat.require_supported()
    assert api.version == mcore_compat.installed_version()


# -- a build that lacks what its version should have --------------------------------------------------


class _Controller:
    def set_stop_word_finished_ids_callback(self, callback): ...
    def _init_dynamic_sampling_tensors(self): ...
    def _dynamic_step_sample_logits(self): ...
    def _apply_stop_word_finished_ids(self, ids, mask): ...


class _Context:
    def deallocate_inference_state_buffers(self): ...


class _Engine:
    def add_request(self, *a): ...
    def has_unfinished_requests(self): ...
    def step_modern(self): ...


class _Wrapper:
    def __init__(self, model, inference_context=None): ...
    def prep_model_for_inference(self): ...
    def prep_inference_input(self, tokens): ...
    def get_batch_for_context_window(self, *a): ...
    def run_one_forward_step(self, *a): ...


def _classes(**changes):
    return mcore_compat._Classes(
        **{**dict(controller=_Controller, context=_Context, engine=_Engine, wrapper=_Wrapper), **changes}
    )


def test_a_build_with_its_versions_hooks_passes():
    assert missing_pieces(api_for("0.19.2"), _classes()) == []


def test_a_missing_hook_is_named():
    class Older(_Controller):
        _apply_stop_word_finished_ids = None

    problems = missing_pieces(api_for("0.19.2"), _classes(controller=Older))
    assert problems == ["no TextGenerationController._apply_stop_word_finished_ids"]


def test_a_sampler_hook_of_another_signature_is_named():
    problems = missing_pieces(api_for("0.17.1"), _classes())  # 0.17 passes the logits; this one takes none
    assert any("_dynamic_step_sample_bookkeeping" in p for p in problems)

    class WithBookkeeping(_Controller):
        def _dynamic_step_sample_bookkeeping(self): ...

        def _dynamic_step_context_bookkeeping(self): ...

    problems = missing_pieces(api_for("0.17.1"), _classes(controller=WithBookkeeping))
    assert problems == ["TextGenerationController._dynamic_step_sample_logits takes (self), expected (self, logits)"]


def test_a_wrapper_of_the_older_signature_is_named():
    class OldWrapper(_Wrapper):
        def __init__(self, model, inference_wrapper_config, inference_context): ...

    problems = missing_pieces(api_for("0.19.2"), _classes(wrapper=OldWrapper))
    assert problems == [
        "GPTInferenceWrapper takes (self, model, inference_wrapper_config, inference_context), "
        "expected (self, model, inference_context, ...)"
    ]


def test_start_up_names_the_version_whose_hook_is_missing(monkeypatch):
    monkeypatch.setattr(mcore_compat, "installed_version", lambda: "0.19.1")
    monkeypatch.setattr(mcore_compat, "_installed_classes", lambda api: _classes(engine=object))
    mcore_compat.mcore_api.cache_clear()
    try:
        with pytest.raises(
            UnsupportedMegatronError,
            match=r"^megatron-core 0\.19\.1 lacks .*: no DynamicInferenceEngine\.add_request, ",
        ):
            mcore_compat.require_supported()
    finally:
        mcore_compat.mcore_api.cache_clear()


def test_the_cli_refuses_an_unsupported_version_in_one_line(monkeypatch, capsys):
    from nemo_craft.cli.main import main

    monkeypatch.setattr(mcore_compat, "installed_version", lambda: "0.20.1")
    mcore_compat.mcore_api.cache_clear()
    try:
        assert main(["train"]) == 2
    finally:
        mcore_compat.mcore_api.cache_clear()
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"nemo-craft: megatron-core 0\.20\.1 is not supported: .*", err)


# -- the settings and the release that differ by version --------------------------------------------


def test_pp_microbatch_tokens_is_refused_where_megatron_has_no_micro_batched_prefill():
    api = mcore_compat.mcore_api()
    if api.pp_microbatched_prefill:
        assert mcore_compat.pp_microbatch_threshold(None) == 512
        assert mcore_compat.pp_microbatch_threshold(16) == 16
    else:
        assert mcore_compat.pp_microbatch_threshold(None) is None
        assert mcore_compat.pp_microbatch_threshold(-1) is None
        with pytest.raises(
            ValueError, match=rf"pp_microbatch_tokens=16: megatron-core {re.escape(api.version)} has no"
        ):
            mcore_compat.pp_microbatch_threshold(16)


def test_a_release_that_keeps_the_kv_cache_is_an_error():
    """What megatron-core 0.17+ does under its default kv_cache_management_mode (PERSIST)."""
    api = mcore_compat.mcore_api()
    context = types.SimpleNamespace(memory_buffer=torch.zeros(4))
    setattr(context, api.kv_release_method, lambda: None)
    with pytest.raises(UnsupportedMegatronError, match=r"kept \['memory_buffer'\] allocated"):
        mcore_compat.release_dynamic_context(context)

    def frees():
        del context.memory_buffer

    setattr(context, api.kv_release_method, frees)
    mcore_compat.release_dynamic_context(context)
    assert not hasattr(context, "memory_buffer")


@pytest.mark.skipif(
    "NEMO_CRAFT_EXPECT_MEGATRON" not in os.environ,
    reason="NEMO_CRAFT_EXPECT_MEGATRON (set by .ci/run for each job) is not set",
)
def test_ci_runs_on_the_megatron_core_series_the_job_names():
    expected = os.environ["NEMO_CRAFT_EXPECT_MEGATRON"]
    installed = mcore_compat.installed_version()
    assert installed.startswith(expected + "."), f"this job is for megatron-core {expected}, pip installed {installed}"


def test_the_sampler_hook_gives_our_sampler_the_active_rows_and_keeps_its_tokens():
    """The hook of the installed version, called as megatron's step calls it."""
    api = mcore_compat.mcore_api()
    cls = mcore_compat.sampling_controller_class()
    controller = cls.__new__(cls)  # megatron's __init__ needs a model; the hook needs none of it
    context = types.SimpleNamespace(total_request_count=5, paused_request_count=2)  # 3 active rows
    controller.inference_wrapped_model = types.SimpleNamespace(inference_context=context)
    controller._sampled_tokens_cuda = None if api.sampler_rebinds_tokens else torch.full((8,), -1)
    logits = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 4, 6)  # [1, rows with padding, V']
    seen = []

    def sample(logits_NV, n):
        seen.append((logits_NV.clone(), n))
        return torch.tensor([3, 1, 4])

    controller.nemo_craft_sample = sample
    if api.sampler_takes_logits:
        controller._dynamic_step_sample_bookkeeping()
        controller._dynamic_step_sample_logits(logits)
    else:
        controller._all_logits_cuda = logits
        controller._dynamic_step_sample_logits()
    ((logits_NV, n),) = seen
    assert n == 3 and torch.equal(logits_NV, logits[0, :3])
    assert controller._sampled_tokens_cuda[:3].tolist() == [3, 1, 4]
