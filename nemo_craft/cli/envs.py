"""``nemo-craft envs check NAME [--seeds K]``: replay the privileged plan on K seeded instances."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import yaml

from nemo_craft.envs.registry import ENVIRONMENTS, make_env


def _parse_overrides(pairs: Sequence[str]) -> dict:
    cfg = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        cfg[key] = yaml.safe_load(value)
    return cfg


def check(name: str, seeds: Sequence[int], cfg: dict, out=None) -> bool:
    """Reset each seed, replay ``expert_actions()``; True when every episode succeeds."""
    out = out if out is not None else sys.stdout
    env = make_env(name, **cfg)
    all_ok = True
    try:
        for seed in seeds:
            t0 = time.perf_counter()
            try:
                env.reset(seed)
                plan = env.expert_actions()
                info, total, done = {}, 0.0, False
                for text in plan:
                    _, reward, done, info = env.step(text)
                    total += reward
                    if done:
                        break
                ok = bool(info.get("success")) and done
                detail = (
                    f"turns={info.get('turn', 0):3d} plan={len(plan):3d} reward={total:+.3f} "
                    f"score={info.get('score', 0.0):.3f}"
                )
            except Exception as err:  # report and go on to the next seed
                ok, detail = False, f"error: {type(err).__name__}: {err}"
            all_ok &= ok
            print(
                f"{name} seed={seed:<6d} success={str(ok):5s} {detail} "
                f"({time.perf_counter() - t0:.2f} s)",
                file=out,
                flush=True,
            )
    finally:
        env.close()
    return all_ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nemo-craft envs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="replay the privileged plan on seeded instances")
    chk.add_argument("name", choices=sorted(ENVIRONMENTS))
    chk.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    chk.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    chk.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="environment config overrides, e.g. --set height=8 num_boxes=2",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    seeds = range(args.start, args.start + args.seeds)
    try:
        ok = check(args.name, seeds, _parse_overrides(args.set))
    except ValueError as err:
        print(f"envs check: {err}", file=sys.stderr)
        return 2
    print(f"{args.name}: {'all' if ok else 'NOT all'} {args.seeds} plan replays succeeded")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
