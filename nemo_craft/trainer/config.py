"""The ``trainer:`` and ``logging:`` sections: the RL loop's settings, its optimizer
(``trainer.optim``), its warm start (``trainer.warm_start``) and where metrics go. Leaf module."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from nemo_craft.core.typed import check_choices
from nemo_craft.parallel.config import OptimConfig

__all__ = ["TrainerConfig", "WarmStartConfig", "LoggingConfig", "WandbConfig"]


@dataclass
class WarmStartConfig:
    steps: int = 0
    """Supervised steps (0: no warm start)."""
    lr: float = 1e-5
    """Its own peak learning rate (the CPU demo's model, trained from scratch, uses 3e-3)."""
    batch_size: int = 32
    """Demonstrations per step (over all data-parallel ranks)."""
    privileged_fraction: float = 0.5
    """Share of demonstrations whose prompt carries the privileged plan."""
    on_pretrained: bool = False
    """A warm start of pretrained weights (``model.hf_path`` set) fine-tunes them before they
    become pi_ref; it runs only when asked for by name with this flag (see ``check_pretrained``)."""
    cache_dir: Optional[str] = None
    """Keep the warm-started weights here, keyed by everything they depend on, and load them
    instead of training again (a sweep's methods share one warm start per seed). None: off."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"warm_start.steps={self.steps} / batch_size={self.batch_size}: need >= 0 / >= 1")
        if not 0.0 <= self.privileged_fraction <= 1.0:
            raise ValueError(f"warm_start.privileged_fraction={self.privileged_fraction}: must be in [0, 1]")

    def check_pretrained(self, hf_path: Optional[str]) -> None:
        """Refuse a warm start of a pretrained model unless ``on_pretrained`` asks for it."""
        if self.steps and hf_path and not self.on_pretrained:
            raise ValueError(
                f"trainer.warm_start.steps={self.steps} with model.hf_path={hf_path}: a warm start fine-tunes the "
                "pretrained weights (and they become pi_ref); set trainer.warm_start.steps=0, or ask for it with "
                "trainer.warm_start.on_pretrained=true"
            )


@dataclass
class TrainerConfig:
    max_steps: int = 150
    micro_batch_size: int = 1
    """Sequences per micro-batch, padded to the step's longest (when not packing)."""
    max_tokens_per_microbatch: Optional[int] = None
    """Pack sequences into micro-batches of at most this many tokens instead (every pass: old,
    teacher, reference log-probs and training); ``micro_batch_size`` is then not used. Needs
    model.core_attention=sdpa or Transformer Engine. None: padded micro-batches."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """RL's optimizer and lr schedule (the warm start has its own peak lr, ``warm_start.lr``)."""
    val_every: int = 10
    """Validate every this many steps (and before the first and after the last); 0: never."""
    val_tasks: int = 128
    val_seed_offset: int = 1_000_000
    """Validation task seeds start here, so they never overlap training tasks."""
    max_nan_steps: int = 3
    """A step whose loss or gradient is not finite is skipped and counted; this many in a row stop the run."""
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)

    def __post_init__(self) -> None:
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        if isinstance(self.warm_start, dict):
            self.warm_start = WarmStartConfig(**self.warm_start)
        if self.max_tokens_per_microbatch is not None and self.max_tokens_per_microbatch < 1:
            raise ValueError(f"trainer.max_tokens_per_microbatch={self.max_tokens_per_microbatch}: need >= 1 or null")
        if self.max_steps < 0 or self.micro_batch_size < 1 or self.max_nan_steps < 1:
            raise ValueError(
                f"trainer.max_steps={self.max_steps}, micro_batch_size={self.micro_batch_size}, "
                f"max_nan_steps={self.max_nan_steps}: need >= 0, >= 1, >= 1"
            )

    def optim_for(self, lr: float) -> OptimConfig:
        """RL's optimizer settings at another peak learning rate (the warm start's)."""
        return dataclasses.replace(self.optim, lr=lr)


@dataclass
class WandbConfig:
    enabled: bool = False
    """Log to Weights & Biases too (``pip install wandb``)."""
    project: str = "nemo_craft"
    mode: Literal["online", "offline", "disabled"] = "offline"
    """"online", "offline" (writes under the run dir; ``wandb sync`` later) or "disabled"."""

    def __post_init__(self) -> None:
        check_choices(self, "logging.wandb")


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    jsonl: bool = True
    plot: bool = True
    progress_bar: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if isinstance(self.wandb, dict):
            self.wandb = WandbConfig(**self.wandb)
