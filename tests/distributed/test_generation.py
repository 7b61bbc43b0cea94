"""Generation with the megatron model on parallel layouts: greedy equals a plain
no-KV-cache loop; seeded sampling is reproducible and identical on every rank; stop tokens,
stop strings and budgets; training after generation; a Sokoban rollout under TP2 + SP.

The rank bodies are the module-level functions without ``test_`` (ranks import them by name).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from nemo_craft.models.tokenizer import CharTokenizer
from nemo_craft.testing.distributed import current_layout, run_distributed

PROMPTS = [
    "<|user|>push the box<eos><|assistant|>",
    "<|user|>hi<eos><|assistant|>",
    "<|user|>sokoban 6x6, one box<eos><|assistant|>",
]
STEPS = 12

# -- rank bodies ---------------------------------------------------------------------------------


def tiny_model():
    """A 2-layer char-level model (seeded CPU initialisation), this rank's chunks."""
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.testing.models import tiny_model_config

    layout = current_layout()
    model_cfg = tiny_model_config(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        num_query_groups=None,
        kv_channels=None,
        vocab_size=CharTokenizer().vocab_size,
        make_vocab_size_divisible_by=128,
        tie_word_embeddings=False,
        max_position_embeddings=512,
    )
    parallel_cfg = ParallelConfig(
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp, sequence_parallel=layout.sp
    )
    torch.manual_seed(1234)
    return build_model(model_cfg, parallel_cfg)


def _prompts(tok):
    return [tok.encode(p) for p in PROMPTS]


def _plain(results):
    return [(r.token_ids, r.logprobs, r.finish_reason, r.text) for r in results]


def reference_greedy(chunks, prompt, steps, vocab_size):
    """The plain loop: the whole sequence through the model at every step (no KV cache, no
    inference context), argmax of the last position. PP stages pass activations by p2p."""
    from megatron.core import parallel_state as ps
    from megatron.core.inference.communication_utils import (
        recv_from_prev_pipeline_rank_,
        send_to_next_pipeline_rank,
    )
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from nemo_craft.parallel.cpu_mode import compute_device

    device = compute_device()
    model = chunks[0]
    model.eval()
    tokens, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([tokens], device=device)
            pos = torch.arange(len(tokens), device=device)[None]
            if not ps.is_pipeline_first_stage():
                recv = torch.empty(
                    len(tokens), 1, model.config.hidden_size, dtype=model.config.params_dtype, device=device
                )
                recv_from_prev_pipeline_rank_(recv)
                model.set_input_tensor(recv)
            out = model(ids, pos, None)
            packed = torch.zeros(2, dtype=torch.float64, device=device)
            if not ps.is_pipeline_last_stage():
                send_to_next_pipeline_rank(out)
            else:
                logits = gather_from_tensor_model_parallel_region(out)[0, -1, :vocab_size].float()
                nxt = int(torch.argmax(logits))
                packed[0], packed[1] = nxt, torch.log_softmax(logits, -1)[nxt]
            if ps.get_pipeline_model_parallel_world_size() > 1:
                dist.broadcast(
                    packed, ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
                )
            tokens.append(int(packed[0]))
            logprobs.append(float(packed[1]))
    return tokens[len(prompt) :], logprobs


def greedy_and_sampling():
    """Greedy generation and the plain loop; top-k + top-p sampling twice with one seed and once
    with another. max_batch_size=2 splits the 3 prompts into two passes; on megatron-core 0.16 the
    small pp_microbatch_tokens sends the PP prefill through megatron's micro-batched path."""
    from nemo_craft.parallel.mcore_compat import mcore_api
    from nemo_craft.rollout import GenerationConfig, Generator

    tok = CharTokenizer()
    chunks = tiny_model()
    # megatron-core 0.17+ has no micro-batched prefill (and refuses the setting)
    microbatch = 16 if mcore_api().pp_microbatched_prefill else None
    gen = Generator(
        chunks,
        tok,
        GenerationConfig(
            temperature=0.0, stop_strings=(), max_new_tokens=STEPS, max_batch_size=2, pp_microbatch_tokens=microbatch
        ),
    )
    greedy = _plain(gen.generate(_prompts(tok)))
    training = chunks[0].training
    reference = [reference_greedy(chunks, p, STEPS, tok.vocab_size) for p in _prompts(tok)]
    sampling = gen.with_config(temperature=1.0, top_p=0.9, top_k=40)
    first = _plain(gen.generate(_prompts(tok), seed=7, config=sampling))
    again = _plain(gen.generate(_prompts(tok), seed=7, config=sampling))
    other = _plain(gen.generate(_prompts(tok), seed=8, config=sampling))
    return dict(greedy=greedy, reference=reference, first=first, again=again, other=other, training=training)


def stops_and_budgets():
    """Greedy runs with per-row budgets, then with a stop token and a stop string taken from a
    first free run."""
    from nemo_craft.rollout import GenerationConfig, Generator

    tok = CharTokenizer()
    gen = Generator(tiny_model(), tok, GenerationConfig(temperature=0.0, stop_strings=(), max_new_tokens=10))
    prompts = _prompts(tok)
    free = _plain(gen.generate(prompts))
    budgets = _plain(gen.generate(prompts, max_new_tokens=[3, 0, 7]))
    stop_token = free[0][0][3]
    stop_string = tok.decode(free[1][0][4:6])
    stopped = _plain(
        gen.generate(prompts, config=gen.with_config(stop_token_ids=(stop_token,), stop_strings=(stop_string,)))
    )
    return dict(free=free, budgets=budgets, stopped=stopped, stop_token=stop_token, stop_string=stop_string)


def train_after_generate():
    """A training forward/backward right after generation, at the sequence length it used: the
    model is back in train mode, and RoPE's cache (cleared by the generator) hands the training
    pass no tensor made under inference mode (which TE's fused RoPE would save for backward)."""
    from nemo_craft.rollout import GenerationConfig, Generator

    tok = CharTokenizer()
    chunks = tiny_model()
    model = chunks[0]
    prompt = _prompts(tok)[0]
    Generator(chunks, tok, GenerationConfig(temperature=0.0, stop_strings=(), max_new_tokens=8)).generate([prompt])
    from nemo_craft.parallel.cpu_mode import compute_device

    width = len(prompt) + 8  # the context width of that generation
    ids = torch.randint(0, tok.vocab_size, (2, width), device=compute_device())
    pos = torch.arange(width, device=compute_device())[None].expand(2, -1)
    loss = model(ids, pos, None, labels=ids).float().mean()
    loss.backward()
    return dict(
        training=model.training,
        loss=float(loss),
        grads=all(p.grad is not None for p in model.parameters() if p.requires_grad),
    )


def sokoban_rollout():
    """The episode runner with the tiny model on Sokoban: 2 tasks x 2 siblings."""
    from nemo_craft.envs import env_factory
    from nemo_craft.rollout import EpisodeRunner, Generator, collate_trajectories
    from nemo_craft.rollout.config import GenerationConfig, RolloutConfig

    tok = CharTokenizer()
    runner = EpisodeRunner(
        Generator(tiny_model(), tok),
        tok,
        env_factory("sokoban", template="compact", max_turns=3),
        RolloutConfig(group_size=2, max_tokens_per_episode=15, generation=GenerationConfig(max_new_tokens=6)),
    )
    trajectories = runner.run([3, 4], seed=11)
    has_envs = runner._envs.pool is not None  # environments live on the group's first rank only
    runner.close()
    batch = collate_trajectories(trajectories, pad_id=tok.pad_id)
    return dict(trajectories=trajectories, has_envs=has_envs, loss_mask=batch.loss_mask)


# -- tests ---------------------------------------------------------------------------------------


def check_greedy(greedy, reference, eos):
    """Each greedy generation is the plain loop's tokens up to and including its first EOS
    (reason "eos"), or all STEPS of them where the loop emits none (reason "length")."""
    assert len(greedy) == len(reference) > 0
    for (ids, logprobs, reason, _), (ref_ids, ref_logprobs) in zip(greedy, reference):
        assert len(ref_ids) == STEPS
        expect = ("eos", ref_ids.index(eos) + 1) if eos in ref_ids else ("length", STEPS)
        assert (reason, len(ids)) == expect
        assert ids == ref_ids[: expect[1]]
        assert logprobs == pytest.approx(ref_logprobs[: expect[1]], abs=1e-5)


def test_check_greedy_rejects_a_short_run_a_wrong_reason_and_a_wrong_token():
    """Negative controls of the check above: it must fire on each way a run can be wrong."""
    eos = CharTokenizer().eos_id
    ref_ids = [5 + (i % 7) for i in range(STEPS)]  # no EOS: the run must last STEPS tokens
    ref_lp = [-0.1 * i for i in range(STEPS)]
    good = [(ref_ids, ref_lp, "length", "")]
    check_greedy(good, [(ref_ids, ref_lp)], eos)  # the positive control
    with_eos = ref_ids[:4] + [eos] + ref_ids[5:]
    check_greedy([(with_eos[:5], ref_lp[:5], "eos", "")], [(with_eos, ref_lp)], eos)
    broken = {
        "cut short": [(ref_ids[:7], ref_lp[:7], "length", "")],
        "eos without one": [(ref_ids, ref_lp, "eos", "")],
        "a wrong token": [(ref_ids[:-1] + [4], ref_lp, "length", "")],
        "a wrong log-prob": [(ref_ids, ref_lp[:-1] + [0.5], "length", "")],
    }
    for name, run in broken.items():
        with pytest.raises(AssertionError):
            check_greedy(run, [(ref_ids, ref_lp)], eos)
            pytest.fail(f"check_greedy accepted {name}")  # never reached when the check fires
    with pytest.raises(AssertionError):  # ran past the EOS of the plain loop
        check_greedy([(with_eos[:6], ref_lp[:6], "eos", "")], [(with_eos, ref_lp)], eos)


LAYOUTS = {"TP1": (1, 1, 1), "TP2": (2, 2, 1), "PP2": (2, 1, 2)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_greedy_equals_plain_loop_and_sampling_is_seeded(layout):
    world_size, tp, pp = LAYOUTS[layout]
    ranks = run_distributed(greedy_and_sampling, world_size=world_size, tp=tp, pp=pp)
    out = ranks[0]
    assert all(r == out for r in ranks[1:]), "ranks disagree"
    check_greedy(out["greedy"], out["reference"], CharTokenizer().eos_id)
    assert out["first"] == out["again"]
    assert [r[0] for r in out["first"]] != [r[0] for r in out["other"]]
    assert out["training"], "generation must give the model back in the mode it found it"


def test_stop_tokens_stop_strings_and_budgets():
    out = run_distributed(stops_and_budgets, world_size=1)[0]
    free, budgets, stopped = out["free"], out["budgets"], out["stopped"]
    assert [len(r[0]) for r in free] == [10, 10, 10] and {r[2] for r in free} == {"length"}
    assert [(len(r[0]), r[2]) for r in budgets] == [(3, "length"), (0, "length"), (7, "length")]
    assert budgets[0][0] == free[0][0][:3] and budgets[2][0] == free[2][0][:7]
    row0, row1 = stopped[0], stopped[1]
    first = free[0][0].index(out["stop_token"])
    assert row0[0] == free[0][0][: first + 1] and row0[2] == "eos"
    assert row1[2] == "stop" and out["stop_string"] in row1[3] and row1[0] == free[1][0][: len(row1[0])]
    assert out["stop_string"] not in CharTokenizer().decode(row1[0][:-1])  # stopped at the first match


def test_training_forward_after_generation():
    out = run_distributed(train_after_generate, world_size=1)[0]
    assert out["training"] and out["grads"] and torch.isfinite(torch.tensor(out["loss"]))


def test_sokoban_rollout_under_tp2_with_sequence_parallel():
    from tests.unit.rollout._helpers import action_spans

    ranks = run_distributed(sokoban_rollout, world_size=2, tp=2, sp=True)
    a, b = ranks
    assert a["has_envs"] and not b["has_envs"]
    ta, tb = a["trajectories"], b["trajectories"]
    assert [t.token_ids for t in ta] == [t.token_ids for t in tb], "ranks built different trajectories"
    assert [t.reward for t in ta] == [t.reward for t in tb]
    assert len(ta) == 4 and [t.group_id for t in ta] == [0, 0, 1, 1]
    for i, tr in enumerate(ta):
        spans = action_spans(tr)
        assert len(spans) == tr.num_turns >= 1 and spans[0][0] == tr.prompt_length
        assert tr.num_action_tokens <= 15 and all(end - start <= 6 for start, end in spans)
        assert a["loss_mask"][i].sum() == tr.num_action_tokens
        assert tr.finish_reason in ("done", "token_budget")
    assert ta[0].token_ids != ta[1].token_ids, "siblings of a task must be sampled independently"
