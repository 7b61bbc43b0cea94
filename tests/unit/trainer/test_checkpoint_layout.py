"""Checkpoint discovery and the atomic save protocol on the file system (no ranks, no torch)."""

import json
import os

import pytest

from nemo_craft.runtime.checkpoint_layout import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    list_checkpoints,
    prune,
    publish,
    read_latest,
    resolve_checkpoint,
    step_dir_name,
    tmp_dir_name,
    write_complete_marker,
)


def _save(root, step, nonce="abc123", files=None):
    """What the manager does on rank 0: fill a .tmp- dir, mark it, publish it."""
    tmp = root / tmp_dir_name(step, nonce)
    (tmp / "dist").mkdir(parents=True)
    for name, text in (files or {"dist/shard.distcp": "x" * step, "trainer_state.pt": "s"}).items():
        (tmp / name).write_text(text)
    write_complete_marker(tmp, step)
    publish(tmp, root / step_dir_name(step))
    return root / step_dir_name(step)


def test_names():
    assert step_dir_name(123) == "step_000123"
    assert step_dir_name(12345678) == "step_12345678"
    assert tmp_dir_name(5, "f00d") == "step_000005.tmp-f00d"


def test_publish_renames_marks_and_points_latest(tmp_path):
    path = _save(tmp_path, 7)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000007"]
    manifest = json.loads((path / "COMPLETE").read_text())
    assert manifest["step"] == 7 and manifest["files"] == {"dist/shard.distcp": 7, "trainer_state.pt": 1}
    assert read_latest(tmp_path) == "step_000007"
    assert [(i.path.name, i.step) for i in list_checkpoints(tmp_path)] == [("step_000007", 7)]


def test_republishing_a_step_replaces_it(tmp_path):
    _save(tmp_path, 3, nonce="one", files={"a": "old"})
    _save(tmp_path, 3, nonce="two", files={"a": "newer"})
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_000003"]
    assert (tmp_path / "step_000003" / "a").read_text() == "newer"


def test_auto_prefers_latest_pointer_then_highest_complete_step(tmp_path):
    assert resolve_checkpoint(tmp_path, "auto") is None
    assert resolve_checkpoint(tmp_path / "nothing_yet", "auto") is None
    _save(tmp_path, 10)
    _save(tmp_path, 30)
    _save(tmp_path, 20)  # e.g. a run resumed from 10 that saved 20: latest is 20, not 30
    assert resolve_checkpoint(tmp_path, "auto").path.name == "step_000020"
    (tmp_path / "latest").unlink()
    assert resolve_checkpoint(tmp_path, "auto").step == 30
    (tmp_path / "latest").write_text("step_000099\n")  # dangling pointer: fall back to the scan
    assert resolve_checkpoint(tmp_path, "auto").step == 30
    assert resolve_checkpoint(tmp_path, None) is None


def test_auto_ignores_tmp_unmarked_and_damaged_dirs(tmp_path):
    _save(tmp_path, 2)
    crashed = tmp_path / tmp_dir_name(9, "dead")  # even with a marker, a .tmp- dir is not published
    crashed.mkdir()
    write_complete_marker(crashed, 9)
    (tmp_path / "step_000008").mkdir()  # no marker
    damaged = _save(tmp_path, 7)
    (damaged / "dist" / "shard.distcp").write_text("x")  # truncated after publishing
    (tmp_path / "latest").write_text("step_000007\n")
    assert resolve_checkpoint(tmp_path, "auto").step == 2
    assert [i.step for i in list_checkpoints(tmp_path)] == [2]


def test_explicit_paths(tmp_path):
    path = _save(tmp_path, 4)
    assert resolve_checkpoint(None, str(path)).step == 4
    assert resolve_checkpoint(None, str(tmp_path)).path == path  # a directory of checkpoints: its newest
    moved = tmp_path / "best"  # any directory name: the step comes from the marker
    os.rename(path, moved)
    assert resolve_checkpoint(None, str(moved)).step == 4


def test_missing_path_names_it_and_lists_available(tmp_path):
    kept = _save(tmp_path, 4)
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint '.*step_000005' not found; available in") as err:
        resolve_checkpoint(tmp_path, str(tmp_path / "step_000005"))
    assert str(kept) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="neither a checkpoint"):
        resolve_checkpoint(None, str(empty))


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("no_marker", "completion marker 'COMPLETE' is missing"),
        ("bad_marker", "'COMPLETE' is unreadable"),
        ("deleted", r"files listed in 'COMPLETE' are missing: \['trainer_state.pt'\]"),
        ("truncated", r"dist/shard.distcp \(1 bytes, expected 4\)"),
    ],
)
def test_incomplete_or_corrupt_path_says_what_is_wrong(tmp_path, damage, expected):
    path = _save(tmp_path, 4)
    if damage == "no_marker":
        (path / "COMPLETE").unlink()
    elif damage == "bad_marker":
        (path / "COMPLETE").write_text("{not json")
    elif damage == "deleted":
        (path / "trainer_state.pt").unlink()
    else:
        (path / "dist" / "shard.distcp").write_text("x")
    with pytest.raises(CheckpointCorruptError, match=rf"checkpoint '{path}' is incomplete or corrupt: .*{expected}"):
        resolve_checkpoint(tmp_path, str(path))


def test_prune_keeps_last_k_and_the_current_one_and_clears_leftovers(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / tmp_dir_name(4, "crashed")).mkdir()
    (tmp_path / "step_000003.old-abc").mkdir()
    (tmp_path / "notes").mkdir()  # not ours: left alone
    deleted = prune(tmp_path, keep_last=2, current=tmp_path / "step_000003")
    assert sorted(p.name for p in deleted) == ["step_000001", "step_000003.old-abc", "step_000004.tmp-crashed"]
    assert sorted(os.listdir(tmp_path)) == ["latest", "notes", "step_000002", "step_000003"]
    # the current checkpoint survives even when higher steps exist (resumed from an older one)
    _save(tmp_path, 9)
    current = _save(tmp_path, 5)
    prune(tmp_path, keep_last=1, current=current)
    assert [i.step for i in list_checkpoints(tmp_path)] == [5, 9]
    prune(tmp_path, keep_last=None, current=current)
    assert [i.step for i in list_checkpoints(tmp_path)] == [5, 9]
