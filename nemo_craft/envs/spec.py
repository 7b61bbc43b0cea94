"""What an environment declares for evaluation, on its class next to ``stop_strings``: its
evaluation splits (``TextEnv.eval_splits``) and the numbers the paper's table reports for it
(``TextEnv.paper_metrics``). ``nemo_craft.eval`` reads them through the environment registry, so
adding an environment touches nothing in ``eval/`` (docs/extending.md#environment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

__all__ = ["HELD_OUT", "SCORE_MEAN", "SUCCESS_RATE", "EvalSplit", "PaperMetric"]

HELD_OUT = "held_out"
"""``EvalSplit.first_seed`` of an environment without a held-out task list (procedural, e.g.
Sokoban): its tasks start at the test seed stream, far from every training, warm-start and
validation seed (``nemo_craft.seeds.TEST_FIRST_TASK``)."""

SUCCESS_RATE, SCORE_MEAN = "success_rate", "score_mean"


@dataclass(frozen=True)
class EvalSplit:
    """Which tasks one evaluation split ("val", "test") of an environment is."""

    env_split: Optional[str] = None
    """Value for ``env.config.split`` (the environment needs a ``split`` setting); None leaves the
    split the run is configured with."""
    first_seed: Union[int, None, Literal["held_out"]] = None
    """First task seed; None: the trainer's ``val_seed_offset``; ``HELD_OUT``: the test seed stream."""

    def __post_init__(self) -> None:
        if not (self.first_seed is None or self.first_seed == HELD_OUT or type(self.first_seed) is int):
            raise ValueError(f"first_seed must be an int, None or {HELD_OUT!r}, got {self.first_seed!r}")


@dataclass(frozen=True)
class PaperMetric:
    """One number of the paper's table for an environment."""

    field: str
    """The summary field it is a percentage of: "success_rate" or "score_mean"."""
    label: str
    """Column label, e.g. "WebShop score"."""

    def __post_init__(self) -> None:
        if self.field not in (SUCCESS_RATE, SCORE_MEAN):
            raise ValueError(f"field must be {SUCCESS_RATE!r} or {SCORE_MEAN!r}, got {self.field!r}")

    @property
    def val_key(self) -> str:
        """The trainer's validation metric of the same quantity (``metrics.jsonl``)."""
        return f"val/{self.field}"
