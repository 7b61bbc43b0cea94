"""The loss library of docs/algorithm.md: GRPO, SDAR, CRAFT's pillars and related methods.

cfg = LossConfig.preset("craft")
batch = compute_credits(TokenBatch(...), cfg, dp_group=None)
state = ControllerState.initial(cfg)
loss, metrics = policy_loss(logits, targets, batch, cfg, state)
state = state.update(batch.stats["gate_activity"])
"""

from nemo_craft.losses.batch import TokenBatch
from nemo_craft.losses.config import PRESETS, LossConfig
from nemo_craft.losses.controller import ControllerState
from nemo_craft.losses.credits import compute_credits, counterfactual_token_importance, grpo_advantages
from nemo_craft.losses.policy import policy_loss

__all__ = [
    "LossConfig",
    "PRESETS",
    "TokenBatch",
    "ControllerState",
    "compute_credits",
    "grpo_advantages",
    "counterfactual_token_importance",
    "policy_loss",
]
