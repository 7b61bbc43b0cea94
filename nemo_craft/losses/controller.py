"""Pillar 2: the asymmetric controller of lambda (distillation) and beta (reference KL).

    m_s      = rho_ema * m_{s-1} + (1 - rho_ema) * a_s                 m_0 = a*
    lambda_s = clip(lambda_0 * exp( eta_up   * (m_{s-1} - a*)), lambda_0 / f, lambda_0 * f)
    beta_s   = clip(beta_0   * exp(-eta_down * (m_{s-1} - a*)), beta_0 / f,   beta_0 * f)

The state holds the weights for the coming step (computed from the EMA of the previous one),
so they are known before the loss. All arithmetic is on Python floats (float64), so every rank
that feeds the same global gate activity holds the same state. With the switch off the EMA is
still tracked (a metric) and the weights stay lambda_0, beta_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nemo_craft.losses.config import LossConfig

__all__ = ["ControllerState"]

_KEYS = ("lambda", "beta", "ema", "step")


@dataclass(frozen=True)
class _Params:
    enabled: bool
    lambda_0: float
    beta_0: float
    rho: float
    target: float
    eta_up: float
    eta_down: float
    bound: float


@dataclass
class ControllerState:
    """lambda and beta for the coming step, the EMA m of gate activity and the step count."""

    lam: float
    """lambda for the coming step (the distillation weight)."""
    beta: float
    """beta for the coming step (the reference-KL weight)."""
    ema: float
    """m: EMA of the global gate activity up to the last finished step."""
    step: int = 0
    """Finished steps; also seeds CRINGE's draw."""
    params: _Params = field(default=None, repr=False, compare=False)

    @classmethod
    def initial(cls, cfg: LossConfig) -> ControllerState:
        """m_0 = a*, so the first step uses lambda_0 and beta_0."""
        params = _Params(
            cfg.controller,
            cfg.sd_coef,
            cfg.kl_coef,
            cfg.ema_rho,
            cfg.target_activity,
            cfg.eta_up,
            cfg.eta_down,
            cfg.controller_bound,
        )
        return cls._from_ema(params, cfg.target_activity, 0)

    @classmethod
    def _from_ema(cls, p: _Params, ema: float, step: int) -> ControllerState:
        if not p.enabled:
            return cls(p.lambda_0, p.beta_0, ema, step, p)
        gap = ema - p.target
        lam = _clip(p.lambda_0 * math.exp(p.eta_up * gap), p.lambda_0 / p.bound, p.lambda_0 * p.bound)
        beta = _clip(p.beta_0 * math.exp(-p.eta_down * gap), p.beta_0 / p.bound, p.beta_0 * p.bound)
        return cls(lam, beta, ema, step, p)

    def update(self, gate_activity: float) -> ControllerState:
        """The state after a step whose global gate activity was ``gate_activity`` (in [0, 1])."""
        a = float(gate_activity)
        if not (math.isfinite(a) and 0.0 <= a <= 1.0):
            raise ValueError(f"gate_activity={gate_activity!r}: must be a fraction in [0, 1]")
        p = self.params
        return self._from_ema(p, p.rho * self.ema + (1.0 - p.rho) * a, self.step + 1)

    def state_dict(self) -> dict:
        return {"lambda": self.lam, "beta": self.beta, "ema": self.ema, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved state in place (the config's constants are kept)."""
        missing = [k for k in _KEYS if k not in state]
        if missing:
            raise ValueError(f"controller state is missing {missing}; it has {sorted(state)}")
        self.lam, self.beta = float(state["lambda"]), float(state["beta"])
        self.ema, self.step = float(state["ema"]), int(state["step"])

    def metrics(self) -> dict:
        return {"controller/lambda": self.lam, "controller/beta": self.beta, "controller/ema": self.ema}


def _clip(x: float, low: float, high: float) -> float:
    return min(max(x, low), high)
