"""The vllm backend on a CUDA GPU with the tiny model in bf16 (conf/model/tiny.yaml). Skipped without
CUDA or without the vllm package (``bash scripts/install.sh vllm``).

* greedy against the static backend: where the two pick different tokens the step must be a near
  tie (bf16 kernels differ: vLLM's attention, megatron's): both picks have the same log-probability
  within ``TIE``; nothing after it is compared;
* sampled tokens' log-probs equal a full forward of the model (the trainer's recomputation) within
  ``TIE``;
* sleep mode: ``release_memory`` gives the engine's weights and KV cache back to the device, and the
  next generation (wake up, refit) draws the greedy tokens of before.
"""

from __future__ import annotations

import pytest
import torch

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.testing.distributed import run_distributed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [
    "<|user|>push the box left<eos><|assistant|>",
    "<|user|>hi<eos><|assistant|>",
    "<|user|>sokoban 6x6, one box, two walls, reach the goal<eos><|assistant|>",
]
STEPS = 16
TIE = 0.05


def body():
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.rollout import GenerationConfig, Generator
    from nemo_craft.testing.models import tiny_model_config

    cfg = tiny_model_config(params_dtype="bf16")
    torch.manual_seed(1234)
    chunks = build_model(cfg, ParallelConfig())
    tok = CharTokenizer()
    settings = dict(temperature=0.0, stop_strings=(), max_new_tokens=STEPS, max_sequence_length=512)
    static = Generator(chunks, tok, GenerationConfig(backend="static", **settings))
    vllm = Generator(chunks, tok, GenerationConfig(backend="vllm", kv_cache_gb=1.0, **settings), model_cfg=cfg)
    prompts = [tok.encode(p) for p in PROMPTS]
    out = dict(static=_plain(static.generate(prompts)), vllm=_plain(vllm.generate(prompts)))
    sampled = vllm.generate(prompts, seed=3, config=vllm.with_config(temperature=1.0))
    out["sampled"] = [
        (r.token_ids, r.logprobs, _forward_logprobs(chunks, p, r.token_ids)) for p, r in zip(prompts, sampled)
    ]
    torch.cuda.synchronize()
    free_awake = torch.cuda.mem_get_info()[0]
    vllm.release_memory()
    torch.cuda.synchronize()
    out["freed_gb"] = (torch.cuda.mem_get_info()[0] - free_awake) / 2**30
    out["after_sleep"] = _plain(vllm.generate(prompts))
    return out


def _plain(results):
    return [(r.token_ids, r.logprobs) for r in results]


def _forward_logprobs(chunks, prompt, tokens):
    ids = torch.tensor([list(prompt) + list(tokens)], device="cuda")
    pos = torch.arange(ids.shape[1], device="cuda")[None]
    chunks[0].eval()
    with torch.no_grad():
        logits = chunks[0](ids, pos, None)[0].float()
    chunks[0].train()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1, : CharTokenizer().vocab_size], -1)
    return logp.gather(1, torch.tensor(tokens, device="cuda")[:, None]).squeeze(1).tolist()


def test_vllm_on_cuda_matches_megatron_and_sleeps():
    pytest.importorskip("vllm", reason="bash scripts/install.sh vllm")
    out = run_distributed(body, world_size=1, device="cuda", timeout=900)[0]
    for (t_s, lp_s), (t_v, lp_v) in zip(out["static"], out["vllm"]):
        for i, (a, b) in enumerate(zip(t_s, t_v)):
            if a != b:  # a near tie in bf16; what follows is another continuation
                assert abs(lp_s[i] - lp_v[i]) < TIE, (i, lp_s[i], lp_v[i])
                break
            assert abs(lp_s[i] - lp_v[i]) < TIE
    for tokens, logprobs, forward in out["sampled"]:
        assert len(tokens) > 0
        assert max(abs(a - b) for a, b in zip(logprobs, forward)) < TIE
    assert out["freed_gb"] > 0.5, out["freed_gb"]  # the 1 GiB KV cache and the weights
    assert out["after_sleep"] == out["vllm"]
