"""Measure the gold action sequence of every ScienceWorld (task, variation) and write the lengths
into the package, so that turn limits can be checked without Java or the engine.

    python scripts/scienceworld_plan_lengths.py --workers 2        # all 30 tasks, 7,207 variations
    python scripts/scienceworld_plan_lengths.py --tasks boil melt  # measure some tasks again

Generating a gold path runs ScienceWorld's own gold agent: ~0.5 s a variation for most tasks,
5-60 s for the genetics ones (the shipped table took ~2.5 hours with two workers on a busy
2-core machine), so every measured chunk is appended to ``--cache`` at once and a rerun only
measures what is missing. ScienceWorld draws some gold paths at random among equivalent ones (their
lengths differ by up to ~15% for the genetics tasks); ``--draws K`` keeps the longest of K.
The output is a Python module (no package-data setup needed): ``PLAN_LENGTHS[task][variation]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "nemo_craft" / "envs" / "scienceworld_plan_lengths.py"
CACHE = Path.home() / ".cache" / "nemo_craft" / "scienceworld_plan_lengths.jsonl"
CHUNK = 20

_ENGINE = None


def _engine():
    """One engine (one JVM) per worker process, started on first use."""
    global _ENGINE
    if _ENGINE is None:
        from scienceworld import ScienceWorldEnv

        _ENGINE = ScienceWorldEnv("", envStepLimit=1000)
    return _ENGINE


def task_sizes(tasks: list[str]) -> dict[str, int]:
    """Number of variations of each task (all splits together: variations are 0..n-1)."""
    engine = _engine()
    known = list(engine.get_task_names())
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        raise SystemExit(f"unknown ScienceWorld task(s) {unknown}; known: {known}")
    return {task: int(engine.get_max_variations(task)) for task in (tasks or known)}


def split_ranges(task: str) -> dict[str, tuple[int, int]]:
    """ScienceWorld's train / dev / test variations of ``task`` as [start, stop) ranges; the
    environment maps seeds with these, so they must be contiguous (they are in 1.2.3)."""
    engine = _engine()
    engine.load(task, 0, "")
    ranges = {}
    for split, getter in (
        ("train", engine.get_variations_train),
        ("dev", engine.get_variations_dev),
        ("test", engine.get_variations_test),
    ):
        variations = sorted(getter())
        if variations != list(range(variations[0], variations[-1] + 1)):
            raise SystemExit(f"{task}: the {split} variations are not contiguous: {variations}")
        ranges[split] = (variations[0], variations[-1] + 1)
    return ranges


def measure(job: tuple[str, list[int], str, int]) -> tuple[str, dict[int, int], float]:
    """Gold plan lengths of some variations of one task (the longest of ``draws`` draws)."""
    task, variations, simplifications, draws = job
    engine, t0, lengths = _engine(), time.perf_counter(), {}
    for variation in variations:
        longest = 0
        for _ in range(draws):
            engine.load(task, variation, simplifications, generateGoldPath=True)
            longest = max(longest, len(engine.get_gold_action_sequence()))
        lengths[variation] = longest
    return task, lengths, time.perf_counter() - t0


def load_cache(path: Path, simplifications: str) -> dict[str, dict[int, int]]:
    """Lengths measured by earlier runs with the same simplifications."""
    done: dict[str, dict[int, int]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["simplifications"] == simplifications:
            done.setdefault(row["task"], {}).update({int(k): v for k, v in row["lengths"].items()})
    return done


def jobs(
    sizes: dict[str, int], done: dict[str, dict[int, int]], simplifications: str, draws: int
) -> Iterator[tuple[str, list[int], str, int]]:
    """Chunks of the variations still to measure, the slowest tasks' first."""
    for task in sorted(sizes, key=lambda t: ("mendelian" not in t and "inclined" not in t, t)):
        todo = [v for v in range(sizes[task]) if v not in done.get(task, {})]
        for k in range(0, len(todo), CHUNK):
            yield task, todo[k : k + CHUNK], simplifications, draws


def write_module(
    path: Path, lengths: dict[str, dict[int, int]], sizes: dict[str, int], simplifications: str, draws: int
) -> None:
    """The lengths and split ranges as a Python module, one line per task."""
    import scienceworld

    version = getattr(scienceworld, "__version__", "unknown")
    lines = [
        '"""Length of the gold action sequence of every ScienceWorld (task, variation) and the variations',
        f"of each split, measured by ``scripts/scienceworld_plan_lengths.py`` (scienceworld {version},",
        f'simplifications "{simplifications}", the longest of {draws} draw(s) a variation). Generated:',
        'do not edit by hand, run the script again."""',
        "",
        f"SCIENCEWORLD_VERSION = {version!r}",
        f"SIMPLIFICATIONS = {simplifications!r}",
        f"DRAWS = {draws}",
        "",
        "# task -> split -> [start, stop) of its variation numbers",
        "SPLIT_RANGES: dict[str, dict[str, tuple[int, int]]] = {",
    ]
    for task in sorted(sizes):
        lines.append(f"    {task!r}: {split_ranges(task)!r},")
    lines += ["}", "", "# task -> plan length of each variation (index = ScienceWorld's variation number)"]
    rows = {task: tuple(lengths[task][v] for v in range(sizes[task])) for task in sorted(sizes)}
    path.write_text("\n".join(lines + plan_length_lines(rows)) + "\n")


def plan_length_lines(rows: dict[str, tuple[int, ...]]) -> list[str]:
    """``PLAN_LENGTHS`` as source lines; a task whose lengths equal an earlier task's (the find-*
    tasks share their rooms and gold paths) is written as an alias of it, not a second copy."""
    lines, first_of = ["PLAN_LENGTHS: dict[str, tuple[int, ...]] = {"], {}
    aliases = []
    for task, row in rows.items():
        if row in first_of:
            aliases.append(f"PLAN_LENGTHS[{task!r}] = PLAN_LENGTHS[{first_of[row]!r}]  # the same sequences")
            continue
        first_of[row] = task
        lines.append(f"    {task!r}: (")
        text = ", ".join(map(str, row)) + ","
        lines += textwrap.wrap(text, 99, initial_indent=" " * 8, subsequent_indent=" " * 8)
        lines.append("    ),")
    return lines + ["}"] + aliases


def measure_missing(
    todo: list, workers: int, cache_path: Path, simplifications: str, done: dict[str, dict[int, int]]
) -> None:
    """Measure the chunks in ``todo``, appending each to the cache as soon as it is done."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"{sum(len(j[1]) for j in todo)} variations to measure in {len(todo)} chunks", flush=True)
    # spawn: a forked worker would share the parent's connection to its JVM
    with mp.get_context("spawn").Pool(workers) as pool, cache_path.open("a") as cache:
        for task, lengths, seconds in pool.imap_unordered(measure, todo):
            row = {"task": task, "simplifications": simplifications, "lengths": lengths}
            cache.write(json.dumps(row) + "\n")
            cache.flush()
            done.setdefault(task, {}).update(lengths)
            print(f"{task}: {len(lengths)} variations, longest {max(lengths.values())} ({seconds:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=[], help="task names (default: all 30)")
    parser.add_argument("--simplifications", default="easy", help="as ScienceWorldConfig (default easy)")
    parser.add_argument("--draws", type=int, default=1, help="gold paths drawn per variation (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes, one JVM each (default 1)")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"measured chunks (default {CACHE})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the module to write (default {OUT})")
    args = parser.parse_args(argv)
    if args.draws < 1 or args.workers < 1:
        parser.error(f"--draws and --workers must be >= 1, got {args.draws} and {args.workers}")
    done = load_cache(args.cache, args.simplifications)
    for task in args.tasks:  # named tasks are measured again
        done.pop(task, None)
    todo = list(jobs(task_sizes(args.tasks), done, args.simplifications, args.draws))
    measure_missing(todo, args.workers, args.cache, args.simplifications, done)
    sizes, done = task_sizes([]), load_cache(args.cache, args.simplifications)  # every task
    missing = {t: n - len(done.get(t, {})) for t, n in sizes.items() if len(done.get(t, {})) < n}
    if missing:
        print(f"not written: variations still to measure {missing}", file=sys.stderr)
        return 1
    write_module(args.out, done, sizes, args.simplifications, args.draws)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
