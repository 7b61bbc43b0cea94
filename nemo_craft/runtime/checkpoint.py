"""Save and resume a training run: model, optimizer, RNG states, scheduler, the caller's state
and the resolved config, written atomically with megatron's ``dist_checkpointing``.

    manager = CheckpointManager(cfg.checkpoint)
    extra = manager.load(model_chunks, optimizer, scheduler)      # None: nothing to resume
    ...
    if manager.should_save(step):
        manager.save(step, model_chunks, optimizer, scheduler, extra_state={...},
                     resolved_config_yaml=OmegaConf.to_yaml(cfg, resolve=True))

Every rank calls both. What a checkpoint holds, which parts load at another layout, and the
atomic save (:mod:`nemo_craft.runtime.checkpoint_layout`): docs/design.md#checkpoints.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from nemo_craft.core.collectives import any_rank, broadcast_from_rank0, gather_errors, on_rank0, on_rank0_errors
from nemo_craft.parallel.megatron_fixes import apply_optimizer_fixes
from nemo_craft.runtime import checkpoint_layout as layout
from nemo_craft.runtime.checkpoint_layout import (
    CONFIG_YAML,
    CheckpointCorruptError,
    CheckpointInfo,
    CheckpointNotFoundError,
)
from nemo_craft.runtime.checkpoint_state import (
    SHARDED_STATE_METADATA,
    build_sharded_state_dict,
    capture_rng_state,
    load_into,
    restore_rng_state,
)
from nemo_craft.runtime.config import CheckpointConfig

__all__ = [
    "CheckpointConfig",
    "CheckpointManager",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointCorruptError",
    "CheckpointSaveError",
]

logger = logging.getLogger(__name__)

DIST_DIR = "dist"
REFERENCE_DIR = "reference"
RNG_DIR = "rng"
TRAINER_STATE = "trainer_state.pt"
META_JSON = "meta.json"


class CheckpointSaveError(RuntimeError):
    """A save failed on some rank; the previous checkpoint stays the latest."""


class CheckpointManager:
    """Saves and loads checkpoints of one run (see the module docstring). Every method that
    touches checkpoints is collective: call it on every rank."""

    def __init__(self, config: CheckpointConfig):
        self.config = config
        apply_optimizer_fixes()
        self._save_strategies: dict = {}  # one per state dict shape: megatron caches the save plan in it
        self._reference_files: Optional[tuple[str, Path]] = None  # (pi_ref's token, a published reference/)

    # ------------------------------------------------------------------ queries
    def should_save(self, step: int) -> bool:
        """Whether ``step`` is a scheduled save (``save_every`` > 0 divides it)."""
        return self.config.dir is not None and self.config.save_every > 0 and step % self.config.save_every == 0

    def available(self) -> list[CheckpointInfo]:
        """Complete checkpoints in ``dir``, oldest first (local file system view, no collectives)."""
        return layout.list_checkpoints(self.config.dir) if self.config.dir else []

    def find_resume(self, path: Optional[str] = None) -> Optional[CheckpointInfo]:
        """The checkpoint to resume from: ``path`` if given, else ``config.resume``; None for a
        fresh start. Decided on rank 0; errors are raised on every rank."""
        resume = path if path is not None else self.config.resume
        return on_rank0(lambda: layout.resolve_checkpoint(self.config.dir, resume))

    # --------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        model_chunks: Sequence[torch.nn.Module],
        optimizer: Optional[Any],
        scheduler: Optional[Any],
        extra_state: Optional[dict] = None,
        resolved_config_yaml: str = "",
        reference: Optional[Any] = None,
    ) -> Path:
        """Write checkpoint ``step``; returns its directory. ``extra_state`` (small: plain
        values, containers and tensors, what ``torch.load(weights_only=True)`` reads back; controller
        state, task cursor, ...; the same on every rank) is taken from
        rank 0. ``reference`` (a :class:`~nemo_craft.runtime.reference.ReferenceWeights`): pi_ref,
        swapped into the modules and saved as their sharded state in ``reference/``. Raises
        :class:`CheckpointSaveError` on every rank if any rank failed; the previous checkpoint
        then stays the latest and no ``step_<n>/`` directory appears."""
        if self.config.dir is None:
            raise ValueError("CheckpointManager.save: checkpoint.dir is not set")
        root = Path(self.config.dir)
        nonce = broadcast_from_rank0(uuid.uuid4().hex[:8])
        tmp = root / layout.tmp_dir_name(step, nonce)
        final = root / layout.step_dir_name(step)
        dirs = [DIST_DIR] + ([REFERENCE_DIR] if reference is not None else [])
        _raise_if_any(on_rank0_errors(lambda: [(tmp / d).mkdir(parents=True) for d in dirs]), f"creating {tmp}")
        # Before its first step an optimizer has no state, and megatron's plain optimizer would
        # write a checkpoint it cannot load back; such a checkpoint holds no optimizer instead.
        with_optimizer = any_rank(optimizer is not None and _optimizer_has_state(optimizer))
        try:
            self._save_sharded(tmp / DIST_DIR, model_chunks, optimizer if with_optimizer else None)
            lend = self._reference_to_link(reference)
            if lend is not None:
                # pi_ref does not change during a run: its files are those of the last checkpoint
                _raise_if_any(
                    on_rank0_errors(lambda: layout.link_files(lend, tmp / REFERENCE_DIR)),
                    f"linking pi_ref from {lend}",
                )
            elif reference is not None:
                with reference.swapped_in(model_chunks):
                    self._save_sharded(tmp / REFERENCE_DIR, model_chunks, None)
        except Exception as err:
            raise CheckpointSaveError(
                f"saving checkpoint step {step} to '{tmp}' failed in dist_checkpointing: "
                f"{err!r}; the previous checkpoint stays the latest"
            ) from err
        errors = gather_errors(
            lambda: self._write_rank_files(
                tmp,
                step,
                scheduler,
                extra_state,
                resolved_config_yaml,
                with_optimizer,
                reference is not None,
                optimizer is not None and _is_distributed(optimizer),
            )
        )
        if any(errors):
            on_rank0_errors(lambda: shutil.rmtree(tmp, ignore_errors=True))
            _raise_if_any(errors, f"saving checkpoint step {step} to '{tmp}'")
        _raise_if_any(
            on_rank0_errors(lambda: self._publish(tmp, final, step)), f"publishing checkpoint step {step} as '{final}'"
        )
        if reference is not None:
            self._reference_files = (reference.token, final / REFERENCE_DIR)
        logger.info("saved checkpoint %s", final)
        return final

    def _save_sharded(self, directory: Path, model_chunks, optimizer) -> None:
        from megatron.core import dist_checkpointing

        sharded = build_sharded_state_dict(model_chunks, optimizer, SHARDED_STATE_METADATA, is_loading=False)
        dist_checkpointing.save(
            sharded,
            str(directory),
            sharded_strategy=self._save_strategy_for(directory.name),
            content_metadata=dict(SHARDED_STATE_METADATA),
        )

    def _reference_to_link(self, reference) -> Optional[Path]:
        """The published ``reference/`` holding this very pi_ref, if any (the same on every rank)."""
        if reference is None or self._reference_files is None:
            return None
        token, path = self._reference_files
        return path if token == reference.token and on_rank0(lambda: (path / ".metadata").is_file()) else None

    def _save_strategy_for(self, part: str):
        if part not in self._save_strategies:
            from megatron.core import parallel_state
            from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
            from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

            strategy = get_default_save_sharded_strategy(self.config.format)
            if self.config.fully_parallel:
                strategy = FullyParallelSaveStrategyWrapper(
                    strategy, parallel_state.get_data_parallel_group(with_context_parallel=True)
                )
            self._save_strategies[part] = strategy
        return self._save_strategies[part]

    def _write_rank_files(
        self,
        tmp: Path,
        step: int,
        scheduler,
        extra_state,
        config_yaml: str,
        with_optimizer: bool,
        with_reference: bool,
        distributed: bool,
    ) -> None:
        rank = dist.get_rank()
        (tmp / RNG_DIR).mkdir(exist_ok=True)
        torch.save(capture_rng_state(), tmp / RNG_DIR / f"rank_{rank:05d}.pt")
        if rank == 0:
            torch.save(
                {
                    "step": step,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "extra_state": extra_state,
                },
                tmp / TRAINER_STATE,
            )
            (tmp / CONFIG_YAML).write_text(config_yaml)
            meta = dict(
                step=step,
                format=self.config.format,
                optimizer=with_optimizer,
                reference=with_reference,
                distributed_optimizer=distributed,
                layout=_layout(),
                versions=_versions(),
            )
            (tmp / META_JSON).write_text(json.dumps(meta, indent=1))

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        layout.write_complete_marker(tmp, step, world_size=dist.get_world_size())
        layout.publish(tmp, final)
        for path in layout.prune(final.parent, self.config.keep_last, final):
            logger.info("deleted old checkpoint %s", path)

    # --------------------------------------------------------------------- load
    def load(
        self,
        model_chunks: Sequence[torch.nn.Module],
        optimizer: Optional[Any] = None,
        scheduler: Optional[Any] = None,
        path: Optional[str] = None,
        reference: Optional[Any] = None,
    ) -> Optional[dict]:
        """Resume from ``path`` (default: ``config.resume``, see :meth:`find_resume`) into the
        given freshly built chunks / optimizer / scheduler / reference (pass None to skip one);
        returns the saved ``extra_state``, or None when there is nothing to resume. The step is
        ``find_resume().step``; ``trainer_state(path)["step"]`` has it too."""
        info = self.find_resume(path)
        if info is None:
            return None
        meta = json.loads((info.path / META_JSON).read_text())
        if optimizer is not None and not meta["optimizer"]:
            optimizer = None  # saved before the first step: a fresh optimizer is the saved state
        kind = optimizer is not None and _is_distributed(optimizer)
        if optimizer is not None and meta.get("distributed_optimizer", kind) != kind:
            saved = str(meta["distributed_optimizer"]).lower()
            raise ValueError(
                f"checkpoint '{info.path}' holds the optimizer state of parallel.use_distributed_optimizer="
                f"{saved}; resume with parallel.use_distributed_optimizer={saved} (at any TP / PP / DP)"
            )
        if reference is not None:
            if not meta.get("reference"):
                raise CheckpointCorruptError(
                    f"checkpoint '{info.path}' holds no reference policy ({REFERENCE_DIR}/): it was saved without "
                    "one (or by a version that kept pi_ref unsharded); resume from a checkpoint the trainer wrote"
                )
            # pi_ref first, through the modules (so it reshards like them), then the policy over it.
            self._load_dir(info.path / REFERENCE_DIR, model_chunks, None)
            reference.capture(model_chunks)
            self._reference_files = (reference.token, info.path / REFERENCE_DIR)
        self._load_dir(info.path / DIST_DIR, model_chunks, optimizer)
        state = _read(info.path, TRAINER_STATE)
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        saved_layout = meta["layout"]
        if saved_layout == _layout():
            restore_rng_state(_read(info.path, f"{RNG_DIR}/rank_{dist.get_rank():05d}.pt"))
        elif dist.get_rank() == 0:
            logger.warning(
                "checkpoint %s was saved at layout %s, this run is %s: model, optimizer and state "
                "loaded, RNG states not restored",
                info.path,
                saved_layout,
                _layout(),
            )
        logger.info("loaded checkpoint %s (step %d)", info.path, info.step)
        return state["extra_state"]

    def _load_dir(self, directory: Path, model_chunks, optimizer) -> None:
        from megatron.core import dist_checkpointing

        metadata = dist_checkpointing.load_content_metadata(str(directory)) or SHARDED_STATE_METADATA
        sharded = build_sharded_state_dict(model_chunks, optimizer, metadata, is_loading=True)
        loaded = dist_checkpointing.load(
            sharded, str(directory), sharded_strategy=self._load_strategy_for(str(directory))
        )
        load_into(loaded, model_chunks, optimizer)

    def _load_strategy_for(self, dist_dir: str):
        if not self.config.fully_parallel:
            return None
        from megatron.core import parallel_state
        from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
        from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper

        return FullyParallelLoadStrategyWrapper(
            get_default_load_sharded_strategy(dist_dir),
            parallel_state.get_data_parallel_group(with_context_parallel=True),
        )

    @staticmethod
    def trainer_state(path: str) -> dict:
        """``{"step", "scheduler", "extra_state"}`` of a checkpoint (no collectives; read with
        ``torch.load(weights_only=True)``, so ``extra_state`` holds plain values and tensors only)."""
        return _read(Path(path), TRAINER_STATE)


# ------------------------------------------------------------------ helpers
def _read(path: Path, name: str):
    """A checkpoint file, read with ``weights_only=True``: tensors, containers and plain values
    only, so a checkpoint from elsewhere cannot run code when it is loaded. NumPy arrays (the
    RNG state of checkpoints written before it was stored as a tensor) are allowed as data."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            return torch.load(path / name, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a damaged or unsafe file
        raise CheckpointCorruptError(
            f"checkpoint '{path}' is corrupt or unsafe: cannot read '{name}' as tensors and plain values ({err!r})"
        ) from err


def _numpy_array_globals() -> list:
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed it
    reconstruct = core.multiarray._reconstruct
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


_NUMPY_ARRAY_GLOBALS = _numpy_array_globals()


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return dict(
        world_size=dist.get_world_size(),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        cp=ps.get_context_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        vpp=ps.get_virtual_pipeline_model_parallel_world_size(),
    )


def _versions() -> dict:
    import megatron.core

    return dict(torch=torch.__version__, megatron_core=megatron.core.__version__)


def _is_distributed(optimizer) -> bool:
    """Whether ``optimizer`` is megatron's distributed optimizer (its state format differs)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return any(isinstance(o, DistributedOptimizer) for o in inner)


def _optimizer_has_state(optimizer) -> bool:
    inner = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    return any(o is not None and len(o.state) > 0 for o in inner)


def _raise_if_any(errors: list, what: str) -> None:
    failed = [e for e in errors if e]
    if failed:
        raise CheckpointSaveError(f"{what} failed: {failed}; the previous checkpoint stays the latest")
