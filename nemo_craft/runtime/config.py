"""The ``checkpoint:`` section: where and how often to checkpoint, and what to resume from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["CheckpointConfig"]

_FORMATS = ("torch_dist",)


@dataclass
class CheckpointConfig:
    """Where and how often to checkpoint, and what to resume from."""

    dir: Optional[str] = None
    """Directory of this run's checkpoints (``step_<n>/`` inside it); None disables saving."""
    save_every: int = 0
    """Save every this many steps (``should_save``); 0 saves only when the trainer asks."""
    keep_last: Optional[int] = 2
    """Keep this many complete checkpoints (highest steps); None keeps all. Older ones are
    deleted only after a new one is complete."""
    resume: Optional[str] = None
    """None: start fresh. "auto": the newest complete checkpoint in ``dir`` (fresh if none).
    A path: that checkpoint (or the newest in that directory); an error if absent or incomplete."""
    format: str = "torch_dist"
    """dist_checkpointing backend of the model and optimizer; only "torch_dist" is supported."""
    fully_parallel: bool = True
    """Spread the writing and reading of replicated shards over the data-parallel ranks
    (megatron's FullyParallel{Save,Load}StrategyWrapper); False lets DP rank 0 do all of it."""

    def __post_init__(self) -> None:
        if not isinstance(self.save_every, int) or isinstance(self.save_every, bool) or self.save_every < 0:
            raise ValueError(f"checkpoint.save_every={self.save_every!r}: must be an integer >= 0 (0 = never)")
        if self.keep_last is not None and (
            not isinstance(self.keep_last, int) or isinstance(self.keep_last, bool) or self.keep_last < 1
        ):
            raise ValueError(f"checkpoint.keep_last={self.keep_last!r}: must be an integer >= 1, or null to keep all")
        if self.format not in _FORMATS:
            raise ValueError(f"checkpoint.format={self.format!r}: allowed values are {_FORMATS}")
        if self.resume is not None and (not isinstance(self.resume, str) or not self.resume):
            raise ValueError(f"checkpoint.resume={self.resume!r}: must be null, 'auto' or a checkpoint path")
        if self.dir is None and self.save_every > 0:
            raise ValueError(
                f"checkpoint.save_every={self.save_every} needs checkpoint.dir; set a directory or save_every=0"
            )
        if self.dir is None and self.resume == "auto":
            raise ValueError(
                "checkpoint.resume='auto' needs checkpoint.dir to look in; set a directory, "
                "a checkpoint path, or resume=null"
            )
