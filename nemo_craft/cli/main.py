"""``nemo-craft``: one console script, one subcommand per job.

    nemo-craft train    [overrides...]      # the RL loop (Hydra-style key=value overrides)
    nemo-craft plan     [overrides...]      # check a parallel layout and its memory on paper
    nemo-craft envs     check NAME [--seeds K]
    nemo-craft evaluate [overrides...]
    nemo-craft convert  ...                 # Hugging Face <-> megatron checkpoints
    nemo-craft sweep    conf/sweep/NAME.yaml [--dry-run] [--slurm] [--collect] [--only k=v]

Each subcommand lives in its own module with ``main(argv) -> int``; imports are lazy so
``nemo-craft envs`` does not pay for megatron-core.
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "train": ("nemo_craft.cli.train", "run the RL loop"),
    "plan": ("nemo_craft.cli.plan", "plan a parallel layout and its memory without a GPU"),
    "envs": ("nemo_craft.cli.envs", "check an agentic environment by replaying its privileged plan"),
    "evaluate": ("nemo_craft.cli.evaluate", "evaluate a checkpoint on an environment split"),
    "convert": ("nemo_craft.cli.convert", "convert checkpoints between Hugging Face and megatron"),
    "sweep": (
        "nemo_craft.cli.sweep",
        "run a methods x envs x models x seeds sweep (here or as SLURM arrays) and tabulate it",
    ),
}


_NEEDS_MEGATRON = ("train", "evaluate", "convert")
"""Commands that build a megatron model: an unsupported megatron-core is one line, not a traceback."""


def _megatron_problem() -> str | None:
    from nemo_craft.parallel.mcore_compat import UnsupportedMegatronError, require_supported

    try:
        require_supported()
    except UnsupportedMegatronError as err:
        return str(err)
    return None


def _usage() -> str:
    lines = ["usage: nemo-craft COMMAND [args...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"nemo-craft: unknown command {name!r}; allowed: {', '.join(_COMMANDS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    if name in _NEEDS_MEGATRON:
        problem = _megatron_problem()
        if problem is not None:
            print(f"nemo-craft: {problem}", file=sys.stderr)
            return 2
    module = importlib.import_module(_COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
