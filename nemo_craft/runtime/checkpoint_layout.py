"""Where checkpoints live on disk, which of them are complete, and the atomic steps of a save.

A checkpoint directory (``CheckpointConfig.dir``) holds::

    step_000120/                  a complete checkpoint (see checkpoint.py for its contents)
      COMPLETE                    the completion marker: JSON with the step and the size of
                                  every other file; written last
    step_000130.tmp-3f9a0c1e/     a save in progress, or the remains of one that crashed
    latest                        the name of the most recently completed checkpoint

A save writes everything into ``step_<n>.tmp-<nonce>/``, writes ``COMPLETE`` last, renames the
directory to ``step_<n>/`` and then replaces ``latest`` (write a temporary file, then
``os.replace``). A reader trusts only directories named ``step_<n>`` whose marker lists files
that are all there with their recorded sizes. Nothing here talks to other ranks: the manager
calls these functions on rank 0 and shares the results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

__all__ = [
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointCorruptError",
    "COMPLETE_MARKER",
    "LATEST_POINTER",
    "step_dir_name",
    "tmp_dir_name",
    "list_checkpoints",
    "checkpoint_problem",
    "resolve_checkpoint",
    "write_complete_marker",
    "publish",
    "prune",
    "read_latest",
]

CONFIG_YAML = "config.yaml"
"""The resolved config a run used, in each checkpoint."""

COMPLETE_MARKER = "COMPLETE"
LATEST_POINTER = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^step_\d+\.tmp-[0-9a-zA-Z]+$")
_OLD_DIR = re.compile(r"^step_\d+\.old-[0-9a-zA-Z]+$")

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint: its directory and the training step it was saved at."""

    path: Path
    step: int


class CheckpointNotFoundError(FileNotFoundError):
    """The requested checkpoint does not exist (the message lists the available ones)."""


class CheckpointCorruptError(RuntimeError):
    """The checkpoint exists but is incomplete or damaged (the message says what is missing)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def tmp_dir_name(step: int, nonce: str) -> str:
    return f"{step_dir_name(step)}.tmp-{nonce}"


def _step_of(path: Path) -> Optional[int]:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def checkpoint_problem(path: PathLike) -> Optional[str]:
    """None if ``path`` is a complete, intact checkpoint; else what is wrong with it, in words."""
    path = Path(path)
    if not path.is_dir():
        return "it is not a directory"
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return (
            f"the completion marker '{COMPLETE_MARKER}' is missing (the save did not finish, "
            "or this is not a checkpoint directory)"
        )
    try:
        manifest = json.loads(marker.read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"the completion marker '{COMPLETE_MARKER}' is unreadable ({err})"
    missing = sorted(name for name in files if not (path / name).is_file())
    if missing:
        return f"files listed in '{COMPLETE_MARKER}' are missing: {missing}"
    wrong = [
        f"{name} ({(path / name).stat().st_size} bytes, expected {size})"
        for name, size in sorted(files.items())
        if (path / name).stat().st_size != size
    ]
    if wrong:
        return f"files differ in size from '{COMPLETE_MARKER}' (truncated or overwritten): {wrong}"
    return None


def list_checkpoints(root: PathLike) -> list[CheckpointInfo]:
    """The complete checkpoints under ``root``, oldest step first (``.tmp-`` directories and
    directories without a valid marker are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        step = _step_of(child)
        if step is not None and child.is_dir() and checkpoint_problem(child) is None:
            found.append(CheckpointInfo(child, step))
    return sorted(found, key=lambda info: info.step)


def read_latest(root: PathLike) -> Optional[str]:
    """The name ``latest`` points to, or None when there is no pointer."""
    pointer = Path(root) / LATEST_POINTER
    try:
        return pointer.read_text().strip() or None
    except FileNotFoundError:
        return None


def _available(root: Path) -> list[str]:
    return [str(info.path) for info in list_checkpoints(root)]


def resolve_checkpoint(root: Optional[PathLike], resume: Optional[str]) -> Optional[CheckpointInfo]:
    """The checkpoint ``resume`` asks for, or None for a fresh start.

    - ``None``: no resume.
    - ``"auto"``: the checkpoint ``root/latest`` points to when it is complete, else the complete
      checkpoint with the highest step; None when ``root`` has none.
    - a path: that checkpoint directory, or, for a directory of checkpoints, its newest one.
      A path that does not exist raises :class:`CheckpointNotFoundError`; an incomplete or
      damaged one raises :class:`CheckpointCorruptError`; both name the path.
    """
    if resume is None:
        return None
    if resume == "auto":
        if root is None:
            return None
        root = Path(root)
        latest = read_latest(root)
        if latest is not None and _step_of(root / latest) is not None and checkpoint_problem(root / latest) is None:
            return CheckpointInfo(root / latest, _step_of(root / latest))
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    where = Path(root) if root is not None else path.parent
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint '{path}' not found; available in '{where}': {_available(where)}")
    if (path / COMPLETE_MARKER).exists() or _step_of(path) is not None:
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointCorruptError(
                f"checkpoint '{path}' is incomplete or corrupt: {problem}; "
                f"available in '{path.parent}': {_available(path.parent)}"
            )
        step = _step_of(path)
        if step is None:
            step = int(json.loads((path / COMPLETE_MARKER).read_text())["step"])
        return CheckpointInfo(path, step)
    inside = resolve_checkpoint(path, "auto") if path.is_dir() else None
    if inside is None:
        raise CheckpointNotFoundError(
            f"checkpoint '{path}' not found: it is neither a checkpoint (no '{COMPLETE_MARKER}' marker) "
            f"nor a directory with complete step_<n> checkpoints; available in '{where}': {_available(where)}"
        )
    return inside


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_complete_marker(tmp_dir: PathLike, step: int, **info) -> None:
    """Write ``COMPLETE`` into ``tmp_dir``, listing every file already there with its size.
    Call after every rank has finished writing."""
    tmp_dir = Path(tmp_dir)
    files = {
        str(p.relative_to(tmp_dir)): p.stat().st_size
        for p in sorted(tmp_dir.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }
    manifest = dict(step=step, saved_at=time.time(), files=files, **info)
    partial = tmp_dir / f".{COMPLETE_MARKER}.partial"
    with open(partial, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, tmp_dir / COMPLETE_MARKER)
    _fsync(tmp_dir)


def link_files(source: PathLike, target: PathLike) -> None:
    """Hard-link every file of ``source`` into ``target`` (created if absent), copying where
    links cannot be made (another file system). Deleting either directory later leaves the
    other whole."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(exist_ok=True)
            continue
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def publish(tmp_dir: PathLike, final_dir: PathLike) -> None:
    """Rename a complete ``tmp_dir`` to ``final_dir`` and point ``latest`` at it.

    An existing ``final_dir`` (the same step saved again, e.g. after resuming from an older
    checkpoint) is first moved aside to ``step_<n>.old-<nonce>`` and deleted after the rename.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    root = final_dir.parent
    aside = None
    if final_dir.exists():
        aside = root / f"{final_dir.name}.old-{tmp_dir.name.rsplit('-', 1)[-1]}"
        os.rename(final_dir, aside)
    os.rename(tmp_dir, final_dir)
    _fsync(root)
    partial = root / f".{LATEST_POINTER}.partial"
    with open(partial, "w") as f:
        f.write(final_dir.name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, root / LATEST_POINTER)
    _fsync(root)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def prune(root: PathLike, keep_last: Optional[int], current: PathLike) -> list[Path]:
    """Delete what a completed save makes obsolete; returns the deleted directories.

    The ``keep_last`` complete checkpoints with the highest steps are kept, and always
    ``current`` (the one just published); ``None`` keeps every checkpoint. Leftover
    ``.tmp-`` / ``.old-`` directories of earlier saves are deleted too. Call only after
    ``current`` is complete and published.
    """
    root, current = Path(root), Path(current)
    deleted = []
    if keep_last is not None:
        found = [info.path for info in list_checkpoints(root)]
        keep = set(found[-keep_last:]) | {current}
        deleted += [path for path in found if path not in keep]
    deleted += [
        child
        for child in root.iterdir()
        if child.is_dir() and (_TMP_DIR.match(child.name) or _OLD_DIR.match(child.name))
    ]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted
