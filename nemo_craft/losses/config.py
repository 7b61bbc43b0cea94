"""One config for every method of docs/algorithm.md: a method is a preset of ``LossConfig``.

    cfg = LossConfig.preset("craft")                     # SDAR + the three pillars
    cfg = LossConfig.preset("craft", counterfactual=False)  # an ablation: Pillar 1 off

Every constant of docs/algorithm.md is a field with its symbol there in the docstring.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

__all__ = ["LossConfig", "PRESETS", "DISTILL_TERMS", "ALIGNMENTS", "ADVANTAGE_SHAPINGS", "OFF_POLICY_FORMS"]

DistillTerm = Literal["sdar", "skill_sd", "cringe", "none"]
Alignment = Literal["turn_position", "turn_mean"]
AdvantageShaping = Literal["none", "rlsd"]
OffPolicyForm = Literal["none", "tis", "icepop", "decoupled"]
DISTILL_TERMS = typing.get_args(DistillTerm)
ALIGNMENTS = typing.get_args(Alignment)
ADVANTAGE_SHAPINGS = typing.get_args(AdvantageShaping)
OFF_POLICY_FORMS = typing.get_args(OffPolicyForm)


@dataclass(frozen=True)
class LossConfig:
    """The policy loss of docs/algorithm.md and its switches (docs/algorithm.md#the-switch-contract).

    Defaults are SDAR's (the baseline of every comparison); presets change a few fields.
    """

    name: str = "sdar"
    """Label for logs; presets set it. It changes no maths."""

    # -- section 2: group advantage -------------------------------------------------------
    adv_eps: float = 1e-6
    """Added to the unbiased reward std of a group: A_i = (R_i - mean) / (std + adv_eps)."""

    # -- section 3: SDAR ------------------------------------------------------------------
    clip_eps: float = 0.2
    """PPO ratio clip eps: the ratio is clipped to [1 - eps, 1 + eps]."""
    dual_clip: float = 3.0
    """Dual clip c on negative advantages: the token loss is at most -A * c."""
    entropy_coef: float = 0.001
    """h: L_ent = -h * H(pi_theta), full-vocabulary entropy."""
    kl_coef: float = 0.01
    """beta (beta_0 under the controller): L_kl = beta * k3 to the reference policy."""
    kl_clamp: float = 10.0
    """log(rho) = logp_ref - logp is clamped to [-kl_clamp, kl_clamp] before exp."""
    gate_beta: float = 5.0
    """beta_g: gate g = sigmoid(beta_g * Delta); 0 gives g = 0.5 everywhere (GRPO+OPSD)."""
    sd_coef: float = 0.01
    """lambda (lambda_0 under the controller): L_sd = lambda * c * (logp_T - logp)."""
    distill: DistillTerm = "sdar"
    """Distillation term: "sdar" (lambda * c * (logp_T - logp)), "skill_sd" (Skill-SD's
    divergence), "cringe" (Adaptive-CRINGE: SDAR's term on Delta > 0, CRINGE on Delta < 0)
    or "none" (GRPO, RLSD)."""

    # -- related methods ----------------------------------------------------------------
    advantage_shaping: AdvantageShaping = "none"
    """"rlsd": A_t = A * ((1 - l) + l * clip(exp(sign(A) * Delta), 1 - e, 1 + e))."""
    rlsd_mix: float = 0.5
    """RLSD's l."""
    rlsd_eps: float = 0.2
    """RLSD's e."""
    skill_sd_coef: float = 0.001
    """Skill-SD's weight: 0.001 * rho_on * (exp(-u) - 1 + u), u = logp - logp_T."""
    cringe_k: int = 5
    """CRINGE's k: the positive token is drawn from the top-(k+1) logits with y masked out."""
    cringe_seed: int = 0
    """Seed of CRINGE's draw; with the step and the token index it fixes every draw."""

    # -- Pillar 1: counterfactual token importance ----------------------------------------
    counterfactual: bool = False
    """Switch of Pillar 1: credit c = g * tanh(CTI / kappa) instead of c = g."""
    align: Alignment = "turn_position"
    """Which sibling tokens are compared: "turn_position" (same turn k and position t) or
    "turn_mean" (one weight per turn from the turn's mean Delta; same CTI for the turn)."""
    cti_clip: float = 5.0
    """C: Delta is clamped to [-C, C] before w = exp(Delta / tau)."""
    cti_tau: float = 1.0
    """tau: temperature of the importance weights."""
    cti_kappa: float = 1.0
    """kappa: c = g * tanh(CTI / kappa)."""

    # -- Pillar 2: asymmetric controller --------------------------------------------------
    controller: bool = False
    """Switch of Pillar 2: lambda and beta follow the EMA of gate activity."""
    ema_rho: float = 0.9
    """rho_ema: m_s = rho * m_{s-1} + (1 - rho) * a_s."""
    target_activity: float = 0.5
    """a*: target gate activity; also m_0."""
    eta_up: float = 2.0
    """eta_up: lambda_s = lambda_0 * exp(eta_up * (m_{s-1} - a*)), clipped."""
    eta_down: float = 1.0
    """eta_down: beta_s = beta_0 * exp(-eta_down * (m_{s-1} - a*)), clipped."""
    controller_bound: float = 10.0
    """lambda and beta stay within a factor controller_bound of lambda_0 and beta_0."""

    # -- Pillar 3: polarised KL -----------------------------------------------------------
    polarized_kl: bool = False
    """Switch of Pillar 3: tokens with c < 0 use the forward-KL surrogate rho*log(rho)-rho+1."""

    # -- off-policy correction (docs/async.md#off-policy-correction) ----------------------------
    off_policy: OffPolicyForm = "none"
    """Weight of the policy-gradient term for the behaviour policy that sampled (the engine's
    reported log-probs, ``TokenBatch.logp_rollout``): w = exp(logp_old - logp_behaviour) per
    token, detached. "tis": min(w, is_cap) (truncated IS); "icepop": w inside [is_low, is_high],
    0 outside (the token is masked); "decoupled": the decoupled proximal-policy form, the PPO
    ratio against pi_old (the proximal policy, recomputed by the trainer) times w, tokens with
    w > is_cap masked; "none": no weight (today's loss, bit for bit)."""
    is_cap: float = 2.0
    """C of "tis" (the weight is truncated at C) and of "decoupled" (tokens with w > C are masked)."""
    is_low: float = 0.5
    """Lower end of the "icepop" band."""
    is_high: float = 5.0
    """Upper end of the "icepop" band."""
    seq_mask: bool = False
    """Sequence-level masking: a trajectory whose geometric-mean weight exp(mean_t log w) leaves
    [seq_low, seq_high] gets weight 0 on every token (with any ``off_policy`` form)."""
    seq_low: float = 0.5
    """Lower end of the sequence band."""
    seq_high: float = 2.0
    """Upper end of the sequence band."""

    # -- execution --------------------------------------------------------------------------
    chunk_size: int = 128
    """Valid tokens per chunk of the vocabulary pass. Its scratch memory is two float32
    [chunk_size, V / TP] buffers on top of the logits' gradient: 2 * chunk_size / T of the
    logits for T float32 tokens (4 * chunk_size / T for bf16), so 1.06x / 1.13x at 4k tokens.
    Larger chunks mean fewer kernels and TP reductions; on the CPU results do not depend on it."""

    def __post_init__(self) -> None:
        _check_choice("distill", self.distill, DISTILL_TERMS)
        _check_choice("align", self.align, ALIGNMENTS)
        _check_choice("advantage_shaping", self.advantage_shaping, ADVANTAGE_SHAPINGS)
        _check_choice("off_policy", self.off_policy, OFF_POLICY_FORMS)
        for name in ("counterfactual", "controller", "polarized_kl", "seq_mask"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"loss.{name}={getattr(self, name)!r}: must be true or false")
        for name in ("cringe_k", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"loss.{name}={value!r}: must be an integer >= 1")
        if isinstance(self.cringe_seed, bool) or not isinstance(self.cringe_seed, int) or self.cringe_seed < 0:
            raise ValueError(f"loss.cringe_seed={self.cringe_seed!r}: must be an integer >= 0")
        _check_range("adv_eps", self.adv_eps, 0.0, math.inf, low_open=True)
        _check_range("clip_eps", self.clip_eps, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("dual_clip", self.dual_clip, 1.0, math.inf, low_open=True)
        for name in ("entropy_coef", "kl_coef", "gate_beta", "sd_coef", "skill_sd_coef", "eta_up", "eta_down"):
            _check_range(name, getattr(self, name), 0.0, math.inf)
        for name in ("kl_clamp", "cti_clip", "cti_tau", "cti_kappa"):
            _check_range(name, getattr(self, name), 0.0, math.inf, low_open=True)
        _check_range("rlsd_mix", self.rlsd_mix, 0.0, 1.0)
        _check_range("rlsd_eps", self.rlsd_eps, 0.0, 1.0, high_open=True)
        _check_range("ema_rho", self.ema_rho, 0.0, 1.0, high_open=True)
        _check_range("target_activity", self.target_activity, 0.0, 1.0, low_open=True, high_open=True)
        _check_range("controller_bound", self.controller_bound, 1.0, math.inf)
        _check_range("is_cap", self.is_cap, 1.0, math.inf)
        for low, high in (("is_low", "is_high"), ("seq_low", "seq_high")):
            _check_range(low, getattr(self, low), 0.0, 1.0)
            _check_range(high, getattr(self, high), 1.0, math.inf)

    @property
    def corrects_off_policy(self) -> bool:
        """Whether the policy gradient is weighted for the behaviour policy (``off_policy`` or
        ``seq_mask``); the weights need the trainer's pi_old and the engine's log-probs."""
        return self.off_policy != "none" or self.seq_mask

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether the loss reads pi_old before training: the teacher-student gap or the
        off-policy weights (False: the on-policy batch, with no old pass)."""
        return self.uses_teacher or self.corrects_off_policy

    @property
    def uses_teacher(self) -> bool:
        """Whether anything the step trains on reads the teacher's log-probs: the distillation
        term, RLSD's shaping, the credit-signed KL, or the controller (its weights follow the
        gate activity). False (GRPO) lets the trainer skip the teacher pass; a test holds this
        property to the loss for every preset."""
        return self.distill != "none" or self.advantage_shaping != "none" or self.controller or self.polarized_kl

    @classmethod
    def preset(cls, name: str, **overrides) -> LossConfig:
        """The config of a named method, with ``overrides`` applied (and validated)."""
        if name not in PRESETS:
            raise ValueError(f"unknown loss preset {name!r}; presets are: {', '.join(sorted(PRESETS))}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown LossConfig field(s) {unknown}; fields are: {', '.join(sorted(fields))}")
        return cls(**{"name": name, **PRESETS[name], **overrides})


PRESETS: dict[str, dict] = {
    "sdar": {},
    "grpo": dict(distill="none", sd_coef=0.0),
    "grpo_opsd": dict(gate_beta=0.0),
    "rlsd": dict(distill="none", advantage_shaping="rlsd"),
    "skill_sd": dict(distill="skill_sd"),
    "adaptive_cringe": dict(distill="cringe", controller=True),
    "craft": dict(counterfactual=True, controller=True, polarized_kl=True),
}
"""The methods (docs/algorithm.md#presets) as overrides of the SDAR defaults."""


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"loss.{name}={value!r}: must be one of {', '.join(map(repr, allowed))}")


def _check_range(name, value, low, high, *, low_open=False, high_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = f"{'(' if low_open else '['}{low}"
        hi = f"{high}{')' if high_open else ']'}"
        raise ValueError(f"loss.{name}={value!r}: must be a finite number in {lo}, {hi}")
