"""The vllm generation backend against the megatron model it is refit from (fp32, gloo, CPU):
greedy tokens equal the static backend's, the log-probs vLLM reports for sampled tokens equal the
training forward's at the behaviour temperature, a refit after a weight change is seen by the
next generation, per-request seeds make samples independent of batching, stop rules are the
project's, multi-turn prompts hit the prefix cache; under TP2 (one engine over two ranks) and DP2
(two engines, ranks calling generate a different number of times).

One engine start per layout (tens of seconds on 2 cores), so each body checks everything on its
layout. The rank bodies are the module-level functions without ``test_``.
"""

from __future__ import annotations

import pytest
import torch

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.testing.distributed import current_layout, run_distributed

PROMPTS = [
    "<|user|>push the box<eos><|assistant|>",
    "<|user|>hi<eos><|assistant|>",
    "<|user|>sokoban 6x6, one box, two walls and a goal<eos><|assistant|>",
]
STEPS = 12
TEMPERATURE = 0.7


def _model(tied: bool = False):
    """The tiny test model; ``tied``: a tied output layer and a vocabulary wider than the
    tokenizer's (the project's own tiny model, and SmolLM2, are tied)."""
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.models import tiny_model_config

    layout = current_layout()
    cfg = tiny_model_config(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        kv_channels=32,  # a head size vLLM's CPU attention has kernels for (the tiny model's)
        vocab_size=128 if tied else CharTokenizer().vocab_size,
        make_vocab_size_divisible_by=128,
        tie_word_embeddings=tied,
        max_position_embeddings=512,
    )
    torch.manual_seed(1234)
    return cfg, build_model(cfg, ParallelConfig(tensor_model_parallel_size=layout.tp))


def _generators(chunks, cfg, tok):
    from nemo_craft.rollout import GenerationConfig, Generator

    settings = dict(temperature=0.0, stop_strings=(), max_new_tokens=STEPS, max_sequence_length=512)
    static = Generator(chunks, tok, GenerationConfig(backend="static", **settings))
    vllm = Generator(chunks, tok, GenerationConfig(backend="vllm", kv_cache_gb=0.05, **settings), model_cfg=cfg)
    return static, vllm


def _forward_logprobs(chunks, prompt, tokens, temperature):
    """log softmax(logits / T) of ``tokens`` after ``prompt`` by one training-style forward."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    ids = torch.tensor([list(prompt) + list(tokens)])
    pos = torch.arange(ids.shape[1])[None]
    chunks[0].eval()
    with torch.no_grad():
        logits = gather_from_tensor_model_parallel_region(chunks[0](ids, pos, None))[0].float()
    chunks[0].train()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1, : CharTokenizer().vocab_size] / temperature, -1)
    return logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


def _plain(results):
    return [(r.token_ids, r.logprobs, r.finish_reason) for r in results]


def one_engine(tied: bool):
    """TP1 or TP2: every check on one engine."""
    tok = CharTokenizer()
    cfg, chunks = _model(tied)
    rng, set_num_threads = torch.get_rng_state(), torch.set_num_threads
    static, vllm = _generators(chunks, cfg, tok)
    prompts = [tok.encode(p) for p in PROMPTS]
    out = {"greedy_static": _plain(static.generate(prompts)), "greedy_vllm": _plain(vllm.generate(prompts))}
    # starting the engine reseeds the global generators and disables torch.set_num_threads: undone
    out["process_state_kept"] = torch.equal(rng, torch.get_rng_state()) and torch.set_num_threads is set_num_threads

    sampling = vllm.with_config(temperature=TEMPERATURE)
    sampled = vllm.generate(prompts, seed=7, config=sampling)
    out["sampled"] = _plain(sampled)
    out["sampled_again_one_by_one"] = [_plain(vllm.generate([p], seed=7, config=sampling))[0] for p in prompts[:1]]
    out["sampled_other_seed"] = _plain(vllm.generate(prompts, seed=8, config=sampling))
    out["forward_logprobs"] = [
        _forward_logprobs(chunks, p, r.token_ids, TEMPERATURE).tolist() for p, r in zip(prompts, sampled)
    ]

    # the project's stop rules: a stop string taken from the greedy text, and a stop id
    free = max((t for t, _, _ in out["greedy_vllm"]), key=len)
    stop_string = tok.decode(free[2:4])
    stop_cfg = vllm.with_config(stop_strings=(stop_string,), stop_token_ids=(free[len(free) // 2],))
    out["stop_string"] = stop_string
    out["stopped_vllm"] = _plain(vllm.generate(prompts, config=stop_cfg))
    out["stopped_static"] = _plain(static.generate(prompts, config=stop_cfg))

    # multi-turn: the second turn's prompt extends the first turn's conversation
    vllm.read_stats()
    long_prompt = tok.encode("<|system|>" + "you are a careful sokoban player. " * 10 + "<eos>" + PROMPTS[0])
    first = vllm.generate([long_prompt])[0]
    turn2 = long_prompt + first.token_ids + tok.encode("<|user|>ok<eos><|assistant|>")
    vllm.generate([turn2])
    out["cache"] = vllm.read_stats()

    # a weight change reaches the engine only through weights_changed()
    with torch.no_grad():
        for p in chunks[0].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)).to(p.dtype) * 0.5)
    out["stale_vllm"] = _plain(vllm.generate(prompts))
    vllm.weights_changed()
    out["refit_vllm"] = _plain(vllm.generate(prompts))
    out["refit_static"] = _plain(static.generate(prompts))
    return out


def data_parallel():
    """DP2: one engine per rank, different prompts, rank 0 generating twice as often."""
    import torch.distributed as dist

    tok = CharTokenizer()
    cfg, chunks = _model()
    static, vllm = _generators(chunks, cfg, tok)
    rank = dist.get_rank()
    prompts = [tok.encode(PROMPTS[rank])]
    results = [(_plain(vllm.generate(prompts)), _plain(static.generate(prompts))) for _ in range(2 if rank == 0 else 1)]
    dist.barrier()
    return results


# -- tests ---------------------------------------------------------------------------------------


def _check_one_engine(out):
    assert out["process_state_kept"]
    assert out["greedy_vllm"] == [(t, out["greedy_vllm"][i][1], r) for i, (t, _, r) in enumerate(out["greedy_static"])]
    for (_, lp_vllm, _), (_, lp_static, _) in zip(out["greedy_vllm"], out["greedy_static"]):
        torch.testing.assert_close(torch.tensor(lp_vllm), torch.tensor(lp_static), atol=1e-4, rtol=0)
    for (tokens, logprobs, _), forward in zip(out["sampled"], out["forward_logprobs"]):
        assert 0 < len(tokens) <= STEPS  # a sample may draw an end-of-turn id
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(forward), atol=1e-4, rtol=0)
    assert out["sampled_again_one_by_one"][0] == out["sampled"][0], "a request's sample depends on its batch"
    assert out["sampled_other_seed"] != out["sampled"]
    assert [(t, r) for t, _, r in out["stopped_vllm"]] == [(t, r) for t, _, r in out["stopped_static"]]
    assert [t for t, _, _ in out["stopped_vllm"]] != [t for t, _, _ in out["greedy_vllm"]]
    # the whole blocks (of 128 tokens on the CPU) of the first turn's conversation are reused
    assert out["cache"]["rollout/prefix_cache_hits"] >= 256, out["cache"]
    assert out["stale_vllm"] == out["greedy_vllm"], "the engine changed without a refit"
    assert [t for t, _, _ in out["refit_vllm"]] == [t for t, _, _ in out["refit_static"]]
    assert [t for t, _, _ in out["refit_vllm"]] != [t for t, _, _ in out["greedy_vllm"]]


@pytest.mark.parametrize("tp,tied", [(1, True), (2, False)])
def test_vllm_backend_matches_megatron(tp, tied):
    ranks = run_distributed(one_engine, world_size=tp, tp=tp, timeout=600, args=(tied,))
    _check_one_engine(ranks[0])
    assert all(r["greedy_vllm"] == ranks[0]["greedy_vllm"] for r in ranks[1:]), "TP ranks disagree"


def test_vllm_backend_data_parallel_engines_are_independent():
    ranks = run_distributed(data_parallel, world_size=2, tp=1, timeout=600)
    assert [len(r) for r in ranks] == [2, 1]
    for calls in ranks:
        for got_vllm, got_static in calls:
            assert [t for t, _, _ in got_vllm] == [t for t, _, _ in got_static]
