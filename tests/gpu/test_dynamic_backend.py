"""The dynamic backend (megatron's DynamicInferenceEngine) against the static one on the tiny model
(conf/model/tiny.yaml). Skipped without a CUDA GPU and flash-attn >= 2.7.3 (or FlashAttention-3);
the TP2 cases also need two GPUs.

* greedy: the same tokens, log-probs and finish reasons as the static backend, for prompts of
  different lengths with per-row budgets, stop tokens and stop strings; and the same again with a
  KV cache so small that rows wait for blocks. bf16 kernels differ (flash-attn here, megatron's or TE's
  attention there), so where the two backends pick different tokens the step must be a near tie:
  both picks have the same log-probability within ``TIE``; nothing after it is compared.
* sampled: the same seed twice gives the same tokens, another seed others; each sampled token's
  log-prob is what a full forward of the model (no KV cache: the trainer's recomputation, and the
  static backend's prefill) gives it; the global and megatron's CUDA RNG states are untouched.
* memory: the KV cache of a call is freed when the call returns.
* fp32: flash-attn has no fp32 kernels, so ``auto`` builds the static backend and ``dynamic``
  is a ValueError naming the dtype.

The rank bodies are the module-level functions without ``test_``.
"""

from __future__ import annotations

import pytest
import torch

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.rollout.dynamic_backend import DynamicCapability
from nemo_craft.testing.distributed import run_distributed

_PROBLEM = DynamicCapability.probe(torch.bfloat16).problem()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_PROBLEM is not None, reason=f"dynamic backend: {_PROBLEM}")]

PROMPTS = [
    "<|user|>push the box left<eos><|assistant|>",
    "<|user|>hi<eos><|assistant|>",
    "<|user|>sokoban 6x6, one box, two walls, reach the goal<eos><|assistant|>",
    "<|user|>x<eos><|assistant|>",
    "<|user|>a longer observation: ### . @ $ . ###<eos><|assistant|>",
]
BUDGETS = [12, 5, 20, 1, 16]
TIE = 0.05
KV_PROBE_GB = 0.25
"""KV cache of the call whose memory must be freed afterwards: large beside everything else a call keeps."""
"""|log p| difference allowed between two backends' picks where they differ, and between log-probs."""


# -- rank bodies ---------------------------------------------------------------------------------


def _tiny(params_dtype: str):
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.distributed import current_layout
    from nemo_craft.testing.models import tiny_model_config

    cfg = tiny_model_config(params_dtype=params_dtype)
    torch.manual_seed(1234)
    return build_model(cfg, ParallelConfig(tensor_model_parallel_size=current_layout().tp))


def _plain(results):
    return [(r.token_ids, r.logprobs, r.finish_reason, r.text) for r in results]


def _rng_states():
    from megatron.core import tensor_parallel

    return [
        torch.get_rng_state(),
        torch.cuda.get_rng_state(),
        *tensor_parallel.get_cuda_rng_tracker().get_states().values(),
    ]


def forced_logprobs(model, prompt, tokens, vocab_size):
    """log p of each of ``tokens`` after ``prompt`` from one full forward (no inference context)."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from nemo_craft.parallel.cpu_mode import compute_device

    was_training = model.training
    model.eval()
    ids = torch.tensor([list(prompt) + list(tokens)], device=compute_device())
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(model(ids, pos, None))[0, :, :vocab_size].float()
    model.train(was_training)
    logp = torch.log_softmax(logits, -1)
    n = len(prompt)
    return [float(logp[n - 1 + i, t]) for i, t in enumerate(tokens)]


def static_and_dynamic():
    """bf16: both backends greedy (free, then with stops), the dynamic one with a tiny KV cache, and
    dynamic sampling with two seeds, plus the full-forward log-probs of its samples."""
    from nemo_craft.rollout import GenerationConfig, Generator

    tok = CharTokenizer()
    chunks = _tiny("bf16")
    prompts = [tok.encode(p) for p in PROMPTS]
    common = dict(temperature=0.0, stop_strings=(), max_batch_size=2, max_sequence_length=512, kv_cache_gb=0.01)
    static = Generator(chunks, tok, GenerationConfig(backend="static", **common))
    dynamic = Generator(chunks, tok, GenerationConfig(backend="dynamic", **common))
    small = Generator(chunks, tok, GenerationConfig(backend="dynamic", **{**common, "kv_cache_gb": 1 / 1024}))
    out = dict(
        backends=(type(static._backend).__name__, type(dynamic._backend).__name__),
        static=_plain(static.generate(prompts, max_new_tokens=BUDGETS)),
        dynamic=_plain(dynamic.generate(prompts, max_new_tokens=BUDGETS)),
        small=_plain(small.generate(prompts, max_new_tokens=BUDGETS)),
    )
    free = out["static"]
    assert len(free[2][0]) >= 4 and len(free[4][0]) >= 7, "the free greedy rows ended too early to take stops from"
    stops = dict(stop_token_ids=(free[2][0][3],), stop_strings=(tok.decode(free[4][0][5:7]),))
    out["static_stops"] = _plain(static.generate(prompts, max_new_tokens=BUDGETS, config=static.with_config(**stops)))
    out["dynamic_stops"] = _plain(
        dynamic.generate(prompts, max_new_tokens=BUDGETS, config=dynamic.with_config(**stops))
    )
    sampling = dynamic.with_config(temperature=1.0, top_p=0.9, top_k=40)
    before = _rng_states()
    out["first"] = _plain(dynamic.generate(prompts, max_new_tokens=BUDGETS, seed=7, config=sampling))
    out["rng_untouched"] = all(torch.equal(a, b) for a, b in zip(before, _rng_states()))
    out["again"] = _plain(dynamic.generate(prompts, max_new_tokens=BUDGETS, seed=7, config=sampling))
    out["other"] = _plain(dynamic.generate(prompts, max_new_tokens=BUDGETS, seed=8, config=sampling))
    out["forced"] = [forced_logprobs(chunks[0], p, r[0], tok.vocab_size) for p, r in zip(prompts, out["first"])]
    out["training"] = chunks[0].training
    out["kept_bytes"] = _bytes_kept_by_a_call(chunks, tok, prompts, {**common, "kv_cache_gb": KV_PROBE_GB})
    return out


def _bytes_kept_by_a_call(chunks, tok, prompts, settings):
    """CUDA memory still allocated after one dynamic generate call beyond what was before it: the
    KV cache must be freed between rollout and training (megatron-core 0.17+ frees nothing under
    its default kv_cache_management_mode; mcore_compat builds the context to recompute)."""
    import gc

    from nemo_craft.rollout import GenerationConfig, Generator

    generator = Generator(chunks, tok, GenerationConfig(backend="dynamic", **settings))
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    generator.generate(prompts[:1], max_new_tokens=[2])
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() - before


def fp32_choice():
    from nemo_craft.rollout import GenerationConfig, Generator

    chunks, tok = _tiny("fp32"), CharTokenizer()
    out = dict(auto=type(Generator(chunks, tok, GenerationConfig(backend="auto"))._backend).__name__)
    try:
        Generator(chunks, tok, GenerationConfig(backend="dynamic"))
    except ValueError as err:
        out["error"] = str(err)
    return out


# -- checks --------------------------------------------------------------------------------------


def _assert_same_greedy(reference, other):
    """Row by row: equal, or equal up to a step where both picks are a near tie."""
    ties = 0
    for (ids, logps, reason, _), (ids2, logps2, reason2, _) in zip(reference, other):
        k = next((i for i, (a, b) in enumerate(zip(ids, ids2)) if a != b), None)
        if k is None:
            assert (ids, reason) == (ids2, reason2)
            assert logps2 == pytest.approx(logps, abs=TIE)
        else:
            ties += 1
            assert abs(logps[k] - logps2[k]) < TIE, f"step {k}: {ids[k]} vs {ids2[k]} is not a near tie"
            assert logps2[:k] == pytest.approx(logps[:k], abs=TIE)
    assert ties <= len(reference) // 2, f"{ties} rows diverged: more than bf16 rounding explains"


@pytest.mark.parametrize(
    "tp", [1, pytest.param(2, marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="TP2 needs two GPUs"))]
)
def test_dynamic_backend_matches_static_greedy_and_samples_reproducibly(tp):
    ranks = run_distributed(static_and_dynamic, world_size=tp, tp=tp, timeout=600, device="cuda")
    out = ranks[0]
    assert all(r["first"] == out["first"] and r["dynamic"] == out["dynamic"] for r in ranks[1:]), "ranks disagree"
    assert out["backends"] == ("StaticBackend", "DynamicBackend")
    _assert_same_greedy(out["static"], out["dynamic"])
    _assert_same_greedy(out["dynamic"], out["small"])  # rows waiting for KV blocks: other batch shapes
    _assert_same_greedy(out["static_stops"], out["dynamic_stops"])
    assert {r[2] for r in out["dynamic_stops"]} & {"eos", "stop"}, "the stops were never hit"
    assert all(len(r[0]) <= b for r, b in zip(out["first"], BUDGETS))
    assert out["first"] == out["again"] and out["first"] != out["other"]
    assert out["rng_untouched"]
    for (_, logps, _, _), forced in zip(out["first"], out["forced"]):
        assert logps == pytest.approx(forced, abs=TIE)
    assert out["training"], "generation must give the model back in train mode"
    assert out["kept_bytes"] < KV_PROBE_GB * 1024**3 / 8, f"{out['kept_bytes']} bytes stay allocated after a call"


def test_fp32_models_fall_back_to_static_and_dynamic_names_the_dtype():
    out = run_distributed(fp32_choice, world_size=1, device="cuda")[0]
    assert out["auto"] == "StaticBackend"
    assert "float32" in out["error"] and "rollout.generation.backend=static" in out["error"]
