"""Rank bodies for test_packing.py: one RL step's four passes, padded and packed, on one model."""

import torch

VOCAB = 96
GROUPS, GROUP_SIZE = 2, 3  # 6 trajectories per data-parallel rank


def _model(mcfg_overrides: dict | None = None):
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.parallel.ddp import wrap_ddp
    from nemo_craft.testing.distributed import current_layout
    from nemo_craft.testing.models import tiny_model_config

    lay = current_layout()
    pcfg = ParallelConfig(
        tensor_model_parallel_size=lay.tp, pipeline_model_parallel_size=lay.pp, sequence_parallel=lay.sp
    )
    fields = dict(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        kv_channels=16,
        vocab_size=VOCAB,
        make_vocab_size_divisible_by=128,
        tie_word_embeddings=False,
    )
    mcfg = tiny_model_config(**dict(fields, **(mcfg_overrides or {})))
    chunks = build_model(mcfg, pcfg, transformer_config_overrides={"calculate_per_token_loss": True})
    return wrap_ddp(chunks, pcfg), pcfg


def trajectories(dp_rank: int) -> list:
    """Multi-turn episodes of uneven lengths (10 to ~60 tokens), privileged teacher prompts of
    their own lengths, siblings of a task sharing a group."""
    from nemo_craft.rollout.trajectory import Trajectory

    g = torch.Generator().manual_seed(100 + dp_rank)

    def ints(lo, hi):
        return int(torch.randint(lo, hi, (1,), generator=g))

    def tokens(n):
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    out = []
    for k in range(GROUPS):
        for i in range(GROUP_SIZE):
            tr = Trajectory(task_seed=k, group_id=dp_rank * GROUPS + k, sibling_index=i)
            tr.append(tokens(ints(3, 7)))
            tr.prompt_length = len(tr)
            for turn in range(ints(1, 4)):
                n = ints(2, 10)
                tr.append(tokens(n), turn=turn, logprobs=(-torch.rand(n, generator=g)).tolist())
                tr.append(tokens(ints(1, 8)))
            tr.teacher_prompt_ids = tokens(ints(4, 12))
            tr.reward = float(torch.rand((), generator=g))
            out.append(tr)
    return out


def _step(model, trajs, loss_cfg, max_tokens, pad_multiple):
    """make_experience (old, teacher, reference passes) and the trainer's training pass."""
    from megatron.core import parallel_state as ps

    from nemo_craft.losses import ControllerState
    from nemo_craft.parallel.cpu_mode import compute_device
    from nemo_craft.runtime.reference import ReferenceWeights
    from nemo_craft.trainer.experience import make_experience
    from nemo_craft.trainer.megatron_step import forward_backward
    from nemo_craft.trainer.step import training_loss_fn

    tp = ps.get_tensor_model_parallel_world_size()
    exp = make_experience(
        model,
        ReferenceWeights(model),
        trajs,
        loss_cfg,
        pad_id=0,
        micro_batch_size=2,
        pad_to_multiple_of=pad_multiple,
        max_tokens_per_microbatch=max_tokens,
        dp_group=ps.get_data_parallel_group(),
        sample_offset=ps.get_data_parallel_rank() * len(trajs),
        device=compute_device(),
        vocab_size=VOCAB,
        old_pass=True,
    )
    mbs = exp.train_micro_batches(2, max_tokens, pad_multiple)
    loss_fn = training_loss_fn(
        exp.batch,
        exp.targets,
        loss_cfg,
        ControllerState.initial(loss_cfg),
        tp_group=ps.get_tensor_model_parallel_group() if tp > 1 else None,
        vocab_size=VOCAB,
    )
    loss, _ = forward_backward(model, mbs.items, loss_fn)
    grad = torch.cat([p.main_grad.detach().flatten().clone() for c in model for p in c.parameters()])
    m = exp.batch.loss_mask
    logps = {k: getattr(exp.batch, k)[m].clone() for k in ("logp_old", "logp_teacher", "logp_ref")}
    padding = dict(exp.padding, train=mbs.pad_fraction)
    return dict(loss=loss.item(), grad=grad, padding=padding, **logps)


def padded_vs_packed(method: str, max_tokens: int):
    """The step padded (micro-batches of 2) then packed, on the same weights: differences."""
    from megatron.core import parallel_state as ps

    from nemo_craft.losses import LossConfig

    model, pcfg = _model()
    cfg = LossConfig.preset(method)
    trajs = trajectories(ps.get_data_parallel_rank())
    multiple = pcfg.tensor_model_parallel_size if pcfg.sequence_parallel else 1
    pad = _step(model, trajs, cfg, None, multiple)
    pack = _step(model, trajs, cfg, max_tokens, multiple)
    return dict(
        loss=(pad["loss"], pack["loss"]),
        grad_err=float((pack["grad"] - pad["grad"]).abs().max()),
        grad_scale=float(pad["grad"].abs().max()),
        logp_err={k: float((pack[k] - pad[k]).abs().max()) for k in ("logp_old", "logp_teacher", "logp_ref")},
        padding=(pad["padding"], pack["padding"]),
    )


def switch_off_is_baseline_when_packed(max_tokens: int):
    """Packed: CRAFT with every pillar switched off gives SDAR's loss and gradient, bit for bit."""
    from megatron.core import parallel_state as ps

    from nemo_craft.losses import LossConfig

    model, _ = _model()
    trajs = trajectories(ps.get_data_parallel_rank())
    off = LossConfig.preset("craft", counterfactual=False, controller=False, polarized_kl=False)
    runs = {
        name: _step(model, trajs, cfg, max_tokens, 1)
        for name, cfg in (("off", off), ("sdar", LossConfig.preset("sdar")), ("craft", LossConfig.preset("craft")))
    }
    same = runs["off"]["loss"] == runs["sdar"]["loss"] and torch.equal(runs["off"]["grad"], runs["sdar"]["grad"])
    differs = not torch.equal(runs["craft"]["grad"], runs["sdar"]["grad"])  # the comparison can fail
    return dict(bit_identical=same, craft_differs=differs)


def attention_packed_vs_alone():
    """SDPAttention on thd input (three sequences and a padding tail) against each sequence run
    alone in the ordinary [s, b, heads, hn] layout: output and input gradients."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from nemo_craft.models.sdpa import SDPAttention

    config = TransformerConfig(
        num_layers=1,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        attention_dropout=0.0,
        use_cpu_initialization=True,
    )
    attn = SDPAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    lengths = [5, 1, 9, 3]  # the last is the padding tail
    g = torch.Generator().manual_seed(3)
    t = sum(lengths)
    q = torch.randn(t, 4, 16, generator=g, requires_grad=True)
    k = torch.randn(t, 2, 16, generator=g, requires_grad=True)
    v = torch.randn(t, 2, 16, generator=g, requires_grad=True)
    cu = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=9, max_seqlen_kv=9)
    out = attn(q, k, v, None, packed_seq_params=params)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref, ref_grads = [], [[], [], []]
    for o, n in zip(cu[:-1].tolist(), lengths):
        qs, ks, vs = (x.detach()[o : o + n].unsqueeze(1).requires_grad_() for x in (q, k, v))
        y = attn(qs, ks, vs, None).squeeze(1)
        for acc, gr in zip(ref_grads, torch.autograd.grad((y * w[o : o + n]).sum(), (qs, ks, vs))):
            acc.append(gr.squeeze(1))
        ref.append(y)
    refusals = []
    for bad in (
        PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=9, max_seqlen_kv=9),
        PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu[:-1], cu_seqlens_kv=cu[:-1], max_seqlen_q=9, max_seqlen_kv=9),
    ):
        try:
            attn(q, k, v, None, packed_seq_params=bad)
        except ValueError as err:
            refusals.append(str(err))
    return dict(
        refusals=refusals,
        shape=tuple(out.shape),
        out_err=float((out - torch.cat(ref)).abs().max()),
        grad_err=max(float((a - torch.cat(b)).abs().max()) for a, b in zip(grads, ref_grads)),
    )
