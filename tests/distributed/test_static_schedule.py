"""The static backend's schedule (one prefill of every prompt, then only the running rows) against
the lockstep schedule it replaced (``nemo_craft.testing.lockstep_static``): the same tokens,
greedy and sampled (the same seed), the same finish reasons, log-probs to 1e-5 in fp32, on TP1,
TP2 and PP2, and the same sampled tokens on every layout; and the forward passes it runs: one
prefill of all prompts, then one row per generated token.

The rank bodies are the module-level functions without ``test_``."""

from __future__ import annotations

import pytest
import torch

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.testing.distributed import run_distributed

# Uneven prompts and budgets, in two batches of 3 and 2 (max_batch_size=3, shortest first): in the
# first batch the 1-token row ends before the next prompt's length, leaving steps with no row.
PROMPTS = [
    "<|user|>sokoban 6x6, one box, push it<eos><|assistant|>",
    "h",
    "<|user|>go left<eos><|assistant|>",
    "<|user|>hi<eos><|assistant|>",
    "<|user|>push the box onto the goal<eos><|assistant|>",
]
BUDGETS = [9, 3, 12, 8, 14]
SETTINGS = {
    "greedy": dict(temperature=0.0, top_k=0, top_p=1.0),
    "sampled": dict(temperature=1.0, top_k=0, top_p=1.0),
    "truncated": dict(temperature=0.8, top_k=20, top_p=0.9),
}


def both_schedules(hf_dir):
    """Each setting through both schedules on one model (the checkpoint's weights, the same on
    every layout), with a stop string and a stop id; the forward passes (tokens fed: [rows,
    columns]) of each."""
    from nemo_craft.models.hf import load_hf_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.parallel.cpu_mode import compute_device
    from nemo_craft.parallel.mcore_compat import mcore_api
    from nemo_craft.rollout import StopCriteria
    from nemo_craft.rollout.static_backend import StaticBackend
    from nemo_craft.testing.distributed import current_layout
    from nemo_craft.testing.lockstep_static import LockstepStaticBackend

    tok = CharTokenizer()
    layout = current_layout()
    _, chunks = load_hf_model(
        hf_dir, ParallelConfig(tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp)
    )
    kw = dict(
        vocab_size=tok.vocab_size,
        max_batch_size=3,
        max_sequence_length=128,
        # megatron-core 0.16: PP prefills of more than 16 tokens as micro-batches
        pp_microbatch_tokens=16 if mcore_api().pp_microbatched_prefill else None,
    )
    backends = {"new": StaticBackend(chunks, **kw), "lockstep": LockstepStaticBackend(chunks, **kw)}
    prompts = [tok.encode(p) for p in PROMPTS]
    # a stop id and a stop string that end two rows early: read off a greedy run without them
    free = backends["new"].generate(prompts, BUDGETS, stop=StopCriteria(()), generator=None, **SETTINGS["greedy"])
    stop = StopCriteria([*tok.stop_ids, free[2][0][4]], (tok.decode(free[4][0][6:8]),), tok.decode)
    out = {"lengths": sorted(len(p) for p in prompts)}
    for name, backend in backends.items():
        shapes = []
        run = backend.wrapper.run_one_forward_step

        def record(window, *args, _run=run, _shapes=shapes, **kwargs):
            _shapes.append(tuple(window["tokens"].shape))
            return _run(window, *args, **kwargs)

        backend.wrapper.run_one_forward_step = record
        for setting, sampling in SETTINGS.items():
            generator = torch.Generator(device=compute_device())
            generator.manual_seed(7)
            out[name, setting] = backend.generate(prompts, BUDGETS, stop=stop, generator=generator, **sampling)
            out[name, setting, "forwards"] = list(shapes)
            shapes.clear()
    return out


LAYOUTS = {"TP1": (1, 1, 1), "TP2": (2, 2, 1), "PP2": (2, 1, 2)}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from nemo_craft.models.tiny_hf import make_tiny_hf_checkpoint

    return make_tiny_hf_checkpoint(
        str(tmp_path_factory.mktemp("hf")), "qwen3", num_layers=2, vocab_size=CharTokenizer().vocab_size
    )


def test_the_schedule_gives_the_lockstep_results_on_every_layout_with_one_prefill_and_no_ended_rows(hf_dir):
    sampled = {}
    for layout, (world_size, tp, pp) in LAYOUTS.items():
        ranks = run_distributed(both_schedules, world_size=world_size, tp=tp, pp=pp, args=(hf_dir,))
        out = ranks[0]
        assert all(r == out for r in ranks[1:]), f"{layout}: ranks disagree"
        for setting in SETTINGS:
            new, old = out["new", setting], out["lockstep", setting]
            assert [r[0] for r in new] == [r[0] for r in old], (layout, setting)
            assert [r[2] for r in new] == [r[2] for r in old], (layout, setting)
            for (_, logp, _), (_, ref, _) in zip(new, old):
                assert logp == pytest.approx(ref, abs=1e-5), (layout, setting)
            sampled[layout, setting] = [r[0] for r in new]
            # per batch (rows sorted by prompt length, 3 then 2): one prefill of every row up to
            # its longest prompt but one token, then single-column steps over the running rows
            lengths = out["lengths"]
            forwards, generated = out["new", setting, "forwards"], sum(len(r[0]) for r in new)
            prefills = [f for f in forwards if f[1] > 1]
            assert prefills == [(3, lengths[2] - 1), (2, lengths[4] - 1)], (layout, setting)
            assert sum(rows for rows, cols in forwards if cols == 1) == generated, (layout, setting)
        reasons = {r[2] for s in SETTINGS for r in out["new", s]}
        assert reasons == {"eos", "stop", "length"}, f"{layout}: not every way of ending was exercised: {reasons}"
    for layout in LAYOUTS:
        for setting in SETTINGS:
            assert sampled[layout, setting] == sampled["TP1", setting], (layout, setting)
