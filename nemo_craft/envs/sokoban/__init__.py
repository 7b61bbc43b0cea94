"""Sokoban: seeded rooms, BFS-optimal plans, text observations."""

from nemo_craft.envs.sokoban.env import SokobanConfig, SokobanEnv
from nemo_craft.envs.sokoban.room import Room
from nemo_craft.envs.sokoban.solver import solve

__all__ = ["Room", "SokobanConfig", "SokobanEnv", "solve"]
