"""Straightforward (slow, float64, loop-based) implementations of docs/algorithm.md, for the tests.

Written from the formulas, not from the library: no chunking, no sibling tables, no
vocabulary sharding, per-token Python loops where that is the plainest statement.
"""

from __future__ import annotations

import math

import torch

from nemo_craft.losses import TokenBatch, terms
from nemo_craft.parallel.vocab_parallel import vocab_parallel_token_stats

_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Raw bits equal (not a tolerance): fp32 as int32, bf16 as int16."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(_INT[a.dtype]), b.view(_INT[b.dtype]))


def composed_sdar_loss(
    logits, targets, batch, cfg, *, lam, beta, credit, polarized, tp_group=None, num_global_tokens=None
):
    """The SDAR loss written out from the library's term functions with the given pillars
    present (credit, weights, KL kind): what a pillar switched off must reproduce bit for bit."""
    mask = batch.loss_mask
    st = vocab_parallel_token_stats(logits, targets, mask, chunk_size=cfg.chunk_size, tp_group=tp_group)
    lo, lt, lr = (getattr(batch, n)[mask].float() for n in ("logp_old", "logp_teacher", "logp_ref"))
    c = credit[mask].float()
    adv = batch.advantages.float()[:, None].expand(mask.shape)[mask]
    pg, _ = terms.pg_clip(st.logp, lo, adv, eps=cfg.clip_eps, dual_clip=cfg.dual_clip)
    per = pg + terms.entropy_bonus(st.entropy, coef=cfg.entropy_coef)
    kl = (
        terms.polarized_kl(st.logp, lr, c, clamp=cfg.kl_clamp)
        if polarized
        else terms.k3(st.logp, lr, clamp=cfg.kl_clamp)
    )
    per = per + beta * kl
    per = per + terms.sd_term(st.logp, lt, c, coef=lam)
    return per.sum() / (num_global_tokens or int(mask.sum()))


def make_batch(*, n_groups=3, group_size=4, seq=24, seed=0, dtype=torch.float32, singleton=False):
    """Random agentic batch: per sample alternating observation / action segments, action
    lengths differing between siblings so that (turn, position) alignment is partial."""
    gen = torch.Generator().manual_seed(seed)
    groups = [g for g in range(n_groups) for _ in range(group_size)]
    if singleton:
        groups.append(n_groups)  # a task with a single trajectory
    b = len(groups)
    mask = torch.zeros(b, seq, dtype=torch.bool)
    turn = torch.zeros(b, seq, dtype=torch.long)
    pos = torch.zeros(b, seq, dtype=torch.long)
    for i in range(b):
        s, k = 0, 0
        while s < seq:
            s += int(torch.randint(1, 4, (1,), generator=gen))  # observation tokens
            n_act = int(torch.randint(1, 5, (1,), generator=gen))
            for t in range(n_act):
                if s >= seq:
                    break
                mask[i, s], turn[i, s], pos[i, s] = True, k, t
                s += 1
            k += 1

    def lp():
        return (-3 * torch.rand(b, seq, generator=gen)).to(dtype)

    return TokenBatch(
        logp_old=lp(),
        logp_teacher=lp(),
        logp_ref=lp(),
        loss_mask=mask,
        rewards=torch.randint(0, 3, (b,), generator=gen).float() + 0.1 * torch.rand(b, generator=gen),
        group_ids=torch.tensor(groups),
        turn_ids=turn,
        pos_in_turn=pos,
    )


def ref_advantages(rewards, groups, eps=1e-6):
    out = []
    for i in range(len(rewards)):
        sib = [float(rewards[j]) for j in range(len(rewards)) if int(groups[j]) == int(groups[i])]
        if len(sib) == 1:
            out.append(0.0)
            continue
        mean = sum(sib) / len(sib)
        std = math.sqrt(sum((r - mean) ** 2 for r in sib) / (len(sib) - 1))
        out.append((float(rewards[i]) - mean) / (std + eps))
    return torch.tensor(out, dtype=torch.float64)


def ref_cti(batch: TokenBatch, adv, *, align="turn_position", clip=5.0, tau=1.0):
    """{(b, s): CTI or None (no sibling at the key)} for every action token."""
    delta = batch.logp_teacher.double() - batch.logp_old.double()
    mask, groups = batch.loss_mask, batch.group_ids
    B, S = mask.shape

    def unit_delta(j, k, t):
        """Sibling j's Delta at the key, or None if it has no token there."""
        toks = [s for s in range(S) if mask[j, s] and int(batch.turn_ids[j, s]) == k]
        if align == "turn_position":
            toks = [s for s in toks if int(batch.pos_in_turn[j, s]) == t]
        if not toks:
            return None
        return sum(float(delta[j, s]) for s in toks) / len(toks)

    out = {}
    for i in range(B):
        for s in range(S):
            if not mask[i, s]:
                continue
            k, t = int(batch.turn_ids[i, s]), int(batch.pos_in_turn[i, s])
            num = den = 0.0
            found = False
            for j in range(B):
                if j == i or int(groups[j]) != int(groups[i]):
                    continue
                d = unit_delta(j, k, t)
                if d is None:
                    continue
                w = math.exp(min(max(d, -clip), clip) / tau)
                num += w * float(adv[j])
                den += w
                found = True
            out[(i, s)] = num / den - float(adv[i]) if found else None
    return out


def ref_token_stats(logits, targets):
    """float64 full-vocabulary log-prob of the target and entropy, by autograd."""
    logsm = torch.log_softmax(logits.double(), dim=-1)
    logp = logsm.gather(-1, targets[..., None])[..., 0]
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def ref_behaviour_weights(batch: TokenBatch, cfg) -> tuple[dict, dict]:
    """{(b, s): weight of the token's policy-gradient term} and the ``off_policy/*`` metrics, in
    float64 from the definitions: w = pi_old / mu (mu: the sampler's probability of the token);
    "tis" min(w, C), "icepop" w in [low, high] else 0, "decoupled" w <= C else 0; ``seq_mask``
    drops a trajectory whose geometric mean of w is outside [seq_low, seq_high]."""
    mask = batch.loss_mask
    ws = {}
    for b, s in mask.nonzero().tolist():
        ws[(b, s)] = math.exp(float(batch.logp_old[b, s]) - float(batch.logp_rollout[b, s]))
    weights, truncated = {}, 0
    for (b, s), w in ws.items():
        if cfg.off_policy == "tis":
            weight = min(w, cfg.is_cap)
        elif cfg.off_policy == "icepop":
            weight = w if cfg.is_low <= w <= cfg.is_high else 0.0
        elif cfg.off_policy == "decoupled":
            weight = w if w <= cfg.is_cap else 0.0
        else:
            weight = 1.0
        if cfg.seq_mask:
            row = [ws[k] for k in ws if k[0] == b]
            geo = math.prod(row) ** (1.0 / len(row))
            if not cfg.seq_low <= geo <= cfg.seq_high:
                weight = 0.0
        weights[(b, s)] = weight
        # truncated: the weight is the cap (a masked token's weight is 0, not truncated)
        truncated += cfg.off_policy == "tis" and w > cfg.is_cap and weight != 0.0
    n = len(ws)
    metrics = {
        "off_policy/weight_mean": sum(ws.values()) / n,
        "off_policy/weight_max": max(ws.values()),
        "off_policy/clip_frac": truncated / n,
        "off_policy/mask_frac": sum(v == 0.0 for v in weights.values()) / n,
    }
    return weights, metrics


def ref_loss(logits, targets, batch: TokenBatch, cfg, *, lam, beta, credit, cringe_pos=None):
    """The SDAR / CRAFT loss in float64, token by token. ``credit``: [B, S] c per token."""
    return ref_terms(logits, targets, batch, cfg, lam=lam, beta=beta, credit=credit, cringe_pos=cringe_pos)["loss"]


def ref_terms(logits, targets, batch: TokenBatch, cfg, *, lam, beta, credit, cringe_pos=None):
    """The loss (a float64 tensor carrying the gradient) and the token mean of each logged term
    (``loss/*`` keys, Python floats), summed token by token from docs/algorithm.md's formulas."""
    logp_all, ent_all = ref_token_stats(logits, targets)
    z64 = logits.double()
    mask = batch.loss_mask
    total = 0.0
    sums = dict.fromkeys(("loss/pg", "loss/entropy", "loss/kl_ref", "loss/kl_term", "loss/clip_frac"), 0.0)
    if cfg.distill != "none":
        sums["loss/distill"] = 0.0
    n = int(mask.sum())
    delta = batch.logp_teacher.double() - batch.logp_old.double()
    is_weights = {}
    if cfg.off_policy != "none" or cfg.seq_mask:
        is_weights, is_metrics = ref_behaviour_weights(batch, cfg)
    for b in range(mask.shape[0]):
        for s in range(mask.shape[1]):
            if not mask[b, s]:
                continue
            lp, lo = logp_all[b, s], batch.logp_old[b, s].double()
            lt, lr = batch.logp_teacher[b, s].double(), batch.logp_ref[b, s].double()
            A = batch.advantages[b].double()
            d = delta[b, s]
            if cfg.advantage_shaping == "rlsd":
                A = A * (
                    (1 - cfg.rlsd_mix)
                    + cfg.rlsd_mix * torch.clamp(torch.exp(torch.sign(A) * d), 1 - cfg.rlsd_eps, 1 + cfg.rlsd_eps)
                )
            r = torch.exp(lp - lo)
            pg = torch.maximum(-A * r, -A * torch.clamp(r, 1 - cfg.clip_eps, 1 + cfg.clip_eps))
            if A < 0:
                pg = torch.minimum(pg, -A * cfg.dual_clip)
            if is_weights:
                pg = pg * is_weights[(b, s)]
            # the clip binds: the ratio left the trust region on the side the advantage pushes it
            clipped = (A > 0 and r > 1 + cfg.clip_eps) or (A < 0 and r < 1 - cfg.clip_eps)
            rho = torch.exp(torch.clamp(lr - lp, -cfg.kl_clamp, cfg.kl_clamp))
            k3 = rho - torch.log(rho) - 1
            c = float(credit[b, s])
            kl = rho * torch.log(rho) - rho + 1 if cfg.polarized_kl and c < 0 else k3
            distill = 0.0
            if cfg.distill == "sdar":
                distill = lam * c * (lt - lp)
            elif cfg.distill == "skill_sd":
                u = lp - lt
                distill = cfg.skill_sd_coef * torch.exp(lp.detach() - lo) * (torch.exp(-u) - 1 + u)
            elif cfg.distill == "cringe":
                if d > 0:
                    distill = lam * c * (lt - lp)
                elif d < 0:
                    distill = lam * torch.nn.functional.softplus(
                        z64[b, s, targets[b, s]] - z64[b, s, int(cringe_pos[b, s])]
                    )
            total = total + pg - cfg.entropy_coef * ent_all[b, s] + beta * kl + distill
            for key, value in (
                ("loss/pg", pg),
                ("loss/entropy", ent_all[b, s]),
                ("loss/kl_ref", k3),
                ("loss/kl_term", kl),
                ("loss/clip_frac", float(clipped)),
                ("loss/distill", distill),
            ):
                if key in sums:
                    sums[key] += float(value.detach()) if torch.is_tensor(value) else float(value)
    out = {"loss": total / n, **{k: v / n for k, v in sums.items()}}
    if is_weights:
        out.update(is_metrics)
    return out


def ref_credit_stats(batch: TokenBatch, cfg) -> dict:
    """``credit/*`` of a raw batch (before compute_credits), from the definitions: gate
    g = sigmoid(beta_g * Delta), credit c = g * tanh(CTI / kappa) where a sibling has the key
    (else g), and the token means of Delta > 0, c > 0, c < 0 and |CTI| (over defined tokens)."""
    mask = batch.loss_mask
    delta = batch.logp_teacher.double() - batch.logp_old.double()
    adv = ref_advantages(batch.rewards, batch.group_ids, eps=cfg.adv_eps)
    cti = ref_cti(batch, adv, align=cfg.align, clip=cfg.cti_clip, tau=cfg.cti_tau) if cfg.counterfactual else {}
    credits, defined = [], []
    for b, s in mask.nonzero().tolist():
        gate = 1.0 / (1.0 + math.exp(-cfg.gate_beta * float(delta[b, s])))
        x = cti.get((b, s))
        credits.append(gate if x is None else gate * math.tanh(x / cfg.cti_kappa))
        if x is not None:
            defined.append(abs(x))
    n = len(credits)
    out = {
        "credit/gate_activity": float((delta[mask] > 0).double().sum()) / n,
        "credit/frac_pos_credit": sum(c > 0 for c in credits) / n,
        "credit/frac_neg_credit": sum(c < 0 for c in credits) / n,
    }
    if cfg.counterfactual:
        out["credit/mean_abs_cti"] = sum(defined) / len(defined)
    return out


def ref_cringe_positive(logits, targets, uniforms, k):
    """[B, S] id drawn from top-(k+1) with y masked, softmax-weighted, by inverse CDF with u."""
    out = torch.zeros(targets.shape, dtype=torch.long)
    for b in range(targets.shape[0]):
        for s in range(targets.shape[1]):
            z = logits[b, s].double()
            vals, ids = torch.sort(z, descending=True, stable=True)
            vals, ids = vals[: k + 1], ids[: k + 1]
            w = torch.softmax(vals.masked_fill(ids == targets[b, s], -math.inf), 0)
            x = float(uniforms[b, s]) * float(w.sum())
            acc = 0.0
            for v, i in zip(w.tolist(), ids.tolist()):
                acc += v
                if x < acc and v > 0:
                    out[b, s] = i
                    break
            else:
                out[b, s] = ids[w > 0][-1]
    return out
