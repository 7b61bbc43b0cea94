"""ALFWorld: official games via ALFWORLD_DATA, or games generated offline from the wheel."""

from nemo_craft.envs.alfworld.env import ALFWorldConfig, ALFWorldEnv
from nemo_craft.envs.alfworld.gen import TASK_TYPES, game_dir, generate_game

__all__ = ["ALFWorldConfig", "ALFWorldEnv", "TASK_TYPES", "game_dir", "generate_game"]
