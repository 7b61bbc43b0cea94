"""Checkpoint files are read with torch.load(weights_only=True): a trainer state that carries code
is refused without running it; the files the trainer writes (RNG states included) load that way."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from nemo_craft.runtime.checkpoint import CheckpointCorruptError, CheckpointManager, _read
from nemo_craft.runtime.checkpoint_state import capture_rng_state, restore_rng_state


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does on load: call anything
        return (os.mkdir, (self.marker,))


def test_a_trainer_state_that_carries_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"step": 3, "scheduler": None, "extra_state": _Payload(str(marker))}, tmp_path / "trainer_state.pt")
    with pytest.raises(CheckpointCorruptError, match="trainer_state.pt"):
        CheckpointManager.trainer_state(str(tmp_path))
    assert not marker.exists()


def test_the_trainers_own_files_load_with_weights_only(tmp_path):
    state = {"step": 3, "scheduler": {"max_lr": 3e-4, "lr_decay_style": "cosine"}, "extra_state": {"nan_steps": 0}}
    torch.save(state, tmp_path / "trainer_state.pt")
    assert CheckpointManager.trainer_state(str(tmp_path)) == state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    restore_rng_state(_read(tmp_path, "rng.pt"))
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_an_older_rng_file_with_a_numpy_array_still_loads(tmp_path):
    np.random.seed(5)
    old = {**capture_rng_state(), "numpy": np.random.get_state()}  # how checkpoints stored it before
    torch.save(old, tmp_path / "rng.pt")
    expected = np.random.rand(2).tolist()
    restore_rng_state(_read(tmp_path, "rng.pt"))
    assert np.random.rand(2).tolist() == expected
