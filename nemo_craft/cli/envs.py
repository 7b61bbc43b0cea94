"""``nemo-craft envs check NAME [--seeds K]``: replay the privileged plan on K seeded instances.
``nemo-craft envs limits NAME``: the turn limit of each task kind (and, for ScienceWorld, how many
variations each split leaves out because their plans do not fit).

Both use the environment settings a run uses: those of ``nemo-craft train env=NAME [--run
overrides]`` (conf/env/NAME.yaml, and the CPU demo's for the tiny model, e.g. Sokoban's 6 turns),
with ``--set key=value`` on top; the first line printed says which."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import yaml

from nemo_craft.envs.registry import ENVIRONMENTS, MissingEngineError, env_class, make_config, make_env


def _parse_overrides(pairs: Sequence[str]) -> dict:
    cfg = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        cfg[key] = yaml.safe_load(value)
    return cfg


def run_env_config(name: str, run_overrides: Sequence[str] = (), changes: dict | None = None) -> dict:
    """The env config of ``nemo-craft train env=NAME *run_overrides``, with ``changes`` on top."""
    from omegaconf import OmegaConf

    from nemo_craft.config import compose

    cfg = compose([f"env={name}", *run_overrides])
    return {**OmegaConf.to_container(cfg.env.config, resolve=True), **(changes or {})}


def describe(name: str, cfg: dict) -> str:
    """One line: the settings checked (and, for ALFWorld, which games)."""
    shown = ", ".join(f"{k}={cfg[k]}" for k in ("max_turns", "template", "data", "dataset") if k in cfg)
    line = f"{name}: the run's environment settings ({shown}; change with --run or --set)"
    if name == "alfworld" and cfg.get("data") == "auto":
        source = (
            f"official games under $ALFWORLD_DATA={os.environ['ALFWORLD_DATA']}"
            if os.environ.get("ALFWORLD_DATA")
            else 'no $ALFWORLD_DATA: games generated offline (label scores "ALFWorld-generated")'
        )
        line += f"\n{name}: {source}"
    return line


def replay(env, seed: int) -> tuple[bool, str, bool]:
    """Reset ``seed`` and replay ``expert_actions()``: (success, detail, plan too long). A plan
    longer than the episode's turn limit is reported as such, not replayed: it cannot succeed."""
    env.reset(seed)
    plan, limit = env.expert_actions(), env.turn_limit()
    if len(plan) > limit:
        return False, f"plan={len(plan):3d} > turn limit {limit}: the expert plan cannot finish", True
    info, total, done = {}, 0.0, False
    for text in plan:
        _, reward, done, info = env.step(text)
        total += reward
        if done:
            break
    ok = bool(info.get("success")) and done
    detail = (
        f"turns={info.get('turn', 0):3d} plan={len(plan):3d} limit={limit:3d} reward={total:+.3f} "
        f"score={info.get('score', 0.0):.3f}"
    )
    return ok, detail, False


def check(name: str, seeds: Sequence[int], cfg: dict, out=None) -> bool:
    """Reset each seed, replay ``expert_actions()``; True when every episode succeeds."""
    out = out if out is not None else sys.stdout
    env = make_env(name, **cfg)
    all_ok, too_long = True, 0
    try:
        for seed in seeds:
            t0 = time.perf_counter()
            try:
                ok, detail, long_plan = replay(env, seed)
            except Exception as err:  # report and go on to the next seed
                ok, detail, long_plan = False, f"error: {type(err).__name__}: {err}", False
            all_ok &= ok
            too_long += long_plan
            print(
                f"{name} seed={seed:<6d} success={str(ok):5s} {detail} ({time.perf_counter() - t0:.2f} s)",
                file=out,
                flush=True,
            )
    finally:
        env.close()
    if too_long:
        print(f"{name}: {too_long} expert plan(s) longer than the turn limit", file=out)
    return all_ok


def limits(name: str, cfg: dict, out=None) -> None:
    """Print the turn limit of each task kind of ``name`` under ``cfg`` (no engine is started)."""
    out = out if out is not None else sys.stdout
    rows = env_class(name).turn_limits(make_config(name, **cfg))
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys), file=out)
    for row in rows:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in keys), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nemo-craft envs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="replay the privileged plan on seeded instances")
    chk.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    chk.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    lim = sub.add_parser("limits", help="turn limit of each task kind (and variations left out)")
    for cmd in (chk, lim):
        cmd.add_argument("name", choices=sorted(ENVIRONMENTS))
        cmd.add_argument(
            "--run",
            nargs="*",
            default=[],
            metavar="OVERRIDE",
            help="overrides of the run whose env settings to use, e.g. --run model=smollm2_135m",
        )
        cmd.add_argument(
            "--set",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="environment config overrides, e.g. --set height=8 num_boxes=2",
        )
    args = parser.parse_args(argv)
    try:
        cfg = run_env_config(args.name, args.run, _parse_overrides(args.set))
        # `limits` prints a table: the settings line goes to stderr there
        print(describe(args.name, cfg), file=sys.stderr if args.command == "limits" else sys.stdout, flush=True)
        if args.command == "limits":
            limits(args.name, cfg)
            return 0
        if args.seeds < 1:
            parser.error(f"--seeds must be >= 1, got {args.seeds}")
        ok = check(args.name, range(args.start, args.start + args.seeds), cfg)
    except (ValueError, MissingEngineError) as err:  # a bad value, or an engine to install: one line
        print(f"envs {args.command}: {err}", file=sys.stderr)
        return 2
    print(f"{args.name}: {'all' if ok else 'NOT all'} {args.seeds} plan replays succeeded")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
