"""Rank bodies of test_context_parallel.py: SDPAttention under context parallel against the whole
sequence, and one RL step's four passes at CP > 1 against the same step at CP 1."""

from __future__ import annotations

import torch


def _attention(cp: int, mask_type):
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_craft.models.sdpa import SDPAttention
    from nemo_craft.testing.distributed import current_layout

    config = TransformerConfig(
        num_layers=1,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        tensor_model_parallel_size=current_layout().tp,
        context_parallel_size=cp,
        attention_dropout=0.0,
        use_cpu_initialization=True,
    )
    return SDPAttention(config, 1, mask_type, "self")


def attention_cp_vs_whole(seq_len: int = 24, batch: int = 2):
    """Max |CP - whole| of this rank's output and of its q, k, v gradients (causal and no mask),
    the CP module run on this rank's load-balanced chunks, the whole-sequence module (CP off) on
    everything; and the refusal of packed input under CP."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.enums import AttnMaskType

    from nemo_craft.parallel.context_parallel import cp_group_and_rank, local_columns
    from nemo_craft.parallel.cpu_mode import compute_device
    from nemo_craft.testing.distributed import current_layout

    lay = current_layout()
    _, cp, rank = cp_group_and_rank()
    heads, groups = 4 // lay.tp, 2 // lay.tp
    gen = torch.Generator().manual_seed(7)
    dev = compute_device()
    q = torch.randn(seq_len, batch, heads, 16, generator=gen).to(dev)
    k = torch.randn(seq_len, batch, groups, 16, generator=gen).to(dev)
    v = torch.randn(seq_len, batch, groups, 16, generator=gen).to(dev)
    grad_out = torch.randn(seq_len, batch, heads * 16, generator=gen).to(dev)
    cols = local_columns(seq_len, cp, rank, device=dev)
    errs = {}
    for mask_type in (AttnMaskType.causal, AttnMaskType.no_mask):
        whole = _run(_attention(1, mask_type), q, k, v, grad_out)
        local = _run(
            _attention(cp, mask_type), *(t.index_select(0, cols) for t in (q, k, v)), grad_out.index_select(0, cols)
        )
        errs[mask_type.name] = [(a.index_select(0, cols) - b).abs().max().item() for a, b in zip(whole, local)]
    module = _attention(cp, AttnMaskType.causal)
    cu = torch.tensor([0, seq_len], dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=24, max_seqlen_kv=24)
    try:
        module(q[:, 0], k[:, 0], v[:, 0], None, packed_seq_params=params)
        refusal = None
    except ValueError as e:
        refusal = str(e)
    return dict(errs=errs, refusal=refusal, cp_rank=rank, cols=cols.tolist())


def _run(module, q, k, v, grad_out):
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = module(q, k, v, None)
    out.backward(grad_out)
    return [out.detach(), q.grad, k.grad, v.grad]


def rl_step(method: str):
    """One RL step of the packing bodies' episodes on this layout (CP from the harness): the old,
    teacher and reference log-probs of the valid tokens, the training loss, this rank's gradient
    (after DDP's reduction) and where the rank sits (TP, DP and CP ranks)."""
    from megatron.core import parallel_state as ps

    from nemo_craft.losses import ControllerState, LossConfig
    from nemo_craft.models.provider import build_model
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.parallel.cpu_mode import compute_device
    from nemo_craft.parallel.ddp import wrap_ddp
    from nemo_craft.runtime.reference import ReferenceWeights
    from nemo_craft.testing.distributed import current_layout
    from nemo_craft.testing.models import tiny_model_config
    from nemo_craft.trainer.experience import make_experience
    from nemo_craft.trainer.megatron_step import forward_backward
    from nemo_craft.trainer.step import training_loss_fn
    from tests.distributed._bodies_packing import VOCAB, trajectories

    lay = current_layout()
    pcfg = ParallelConfig(tensor_model_parallel_size=lay.tp, context_parallel_size=lay.cp, sequence_parallel=lay.sp)
    mcfg = tiny_model_config(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        kv_channels=16,
        vocab_size=VOCAB,
        make_vocab_size_divisible_by=128,
        tie_word_embeddings=False,
    )
    model = wrap_ddp(build_model(mcfg, pcfg, transformer_config_overrides={"calculate_per_token_loss": True}), pcfg)
    loss_cfg = LossConfig.preset(method)
    trajs = trajectories(ps.get_data_parallel_rank())
    exp = make_experience(
        model,
        ReferenceWeights(model),
        trajs,
        loss_cfg,
        pad_id=0,
        micro_batch_size=2,
        pad_to_multiple_of=pcfg.sequence_multiple,
        dp_group=ps.get_data_parallel_group(),
        sample_offset=ps.get_data_parallel_rank() * len(trajs),
        device=compute_device(),
        vocab_size=VOCAB,
        old_pass=True,
    )
    mbs = exp.train_micro_batches(2, None, pcfg.sequence_multiple)
    tp_group = ps.get_tensor_model_parallel_group() if lay.tp > 1 else None
    state = ControllerState.initial(loss_cfg)
    loss_fn = training_loss_fn(exp.batch, exp.targets, loss_cfg, state, tp_group=tp_group, vocab_size=VOCAB)
    loss, _ = forward_backward(model, mbs.items, loss_fn)
    grad = torch.cat([p.main_grad.detach().flatten().clone() for c in model for p in c.parameters()])
    m = exp.batch.loss_mask
    logps = {k: getattr(exp.batch, k)[m].clone() for k in ("logp_old", "logp_teacher", "logp_ref")}
    where = (ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(), ps.get_context_parallel_rank())
    return dict(loss=loss.item(), grad=grad, where=where, width=exp.input_ids.shape[1], **logps)


def generate_then_score():
    """Greedy and seeded sampled generation on the tiny char model at this layout's CP (CP off
    inside generation: each rank runs the whole sequences), then a forward-only pass of the
    log-probs of the sampled sequences (CP back on: the passes split them)."""
    from nemo_craft.models.provider import build_model
    from nemo_craft.models.tokenizer import CharTokenizer
    from nemo_craft.parallel.config import ParallelConfig
    from nemo_craft.parallel.cpu_mode import compute_device
    from nemo_craft.rollout import GenerationConfig, Generator
    from nemo_craft.testing.distributed import current_layout
    from nemo_craft.testing.models import tiny_model_config
    from nemo_craft.trainer.experience import logprob_fn
    from nemo_craft.trainer.megatron_step import forward_only

    tok = CharTokenizer()
    mcfg = tiny_model_config(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        num_query_groups=None,
        kv_channels=None,
        vocab_size=tok.vocab_size,
        make_vocab_size_divisible_by=128,
        tie_word_embeddings=False,
        max_position_embeddings=512,
    )
    pcfg = ParallelConfig(context_parallel_size=current_layout().cp)
    torch.manual_seed(1234)
    chunks = build_model(mcfg, pcfg)
    prompts = [tok.encode(p) for p in ("<|user|>push the box<eos><|assistant|>", "<|user|>hi<eos><|assistant|>")]
    gen = Generator(chunks, tok, GenerationConfig(temperature=0.0, stop_strings=(), max_new_tokens=10))
    greedy = [r.token_ids for r in gen.generate(prompts)]
    sampled = gen.generate(prompts, seed=7, config=gen.with_config(temperature=1.0))
    rows = [p + r.token_ids for p, r in zip(prompts, sampled)]
    S = -(-max(len(r) for r in rows) // pcfg.sequence_multiple) * pcfg.sequence_multiple
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    mask = torch.zeros(len(rows), S, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, len(prompts[i]) - 1 : len(r) - 1] = True
    dev = compute_device()
    mb = {
        "input_ids": ids.to(dev),
        "targets": torch.roll(ids, -1, dims=1).to(dev),
        "loss_mask": mask.to(dev),
        "position_ids": torch.arange(S, device=dev).expand(len(rows), S),
    }
    scored = forward_only(chunks, [mb], logprob_fn(vocab_size=tok.vocab_size))
    return dict(
        greedy=greedy,
        sampled=[r.token_ids for r in sampled],
        sampled_logprobs=[r.logprobs for r in sampled],
        scored=scored[mask.to(dev)].cpu(),
        training=chunks[0].training,
    )
