"""ALFWorld games generated offline from what the ``alfworld`` wheel ships.

A game is a PDDL problem over the ALFRED domain (``alfred.pddl``) in TextWorld-PDDL form plus the
task text inserted into the ALFRED grammar (``alfred.twl2``), written as ``game.tw-pddl`` with a
``traj_data.json`` beside it, as the official games are. The scene comes from one of the wheel's
floor plans (``gen/layouts/FloorPlan*-openable.json``: receptacles and their poses;
``FloorPlan*-objects.json``: the object types present); the target object(s) and 6-12 distractors
are put into receptacles that can hold them (``gen/constants.py``), and the goal comes from the
ALFRED goal library (``gen/goal_library.py``). Same seed => byte-identical files.

Task types: pick_and_place_simple, pick_two_obj_and_place, pick_clean_then_place_in_recep,
pick_heat_then_place_in_recep, pick_cool_then_place_in_recep ("look at object in light" is not
generated). Object placement is random rather than physics-based: scores on these games are NOT
comparable with published ALFWorld numbers; report them as "ALFWorld-generated".
"""

from __future__ import annotations

import json
import os
import random
from functools import cache, lru_cache
from pathlib import Path

TASK_TYPES = (
    "pick_and_place_simple",
    "pick_two_obj_and_place",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
)
# the appliance each state-change task needs, and the Val-action set its object must be in
_NEEDS = {
    "pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable"),
    "pick_heat_then_place_in_recep": ("Microwave", "Heatable"),
    "pick_cool_then_place_in_recep": ("Fridge", "Coolable"),
}
_GEN_VERSION = 2


def _pddl_name(text: str) -> str:
    """ALFRED ids as PDDL names (alfworld.gen.game_states.PlannedGameState.fix_pddl_str_chars)."""
    for old, new in (
        ("-", "_minus_"),
        ("|", "_bar_"),
        ("+", "_plus_"),
        (".", "_dot_"),
        (",", "_comma_"),
    ):
        text = text.replace(old, new)
    return text


@lru_cache(maxsize=1)
def _alfworld():
    import alfworld
    import alfworld.gen.constants as constants
    import alfworld.gen.goal_library as goals

    root = Path(alfworld.__file__).parent
    data = root / "data"
    return (
        constants,
        goals,
        (data / "alfred.pddl").read_text(),
        (data / "alfred.twl2").read_text(),
        root / "gen" / "layouts",
    )


@cache
def _scene(layouts: Path, plan: str) -> tuple[dict[str, tuple[str, list]], tuple[str, ...]]:
    constants = _alfworld()[0]
    openable = json.loads((layouts / f"{plan}-openable.json").read_text())
    receptacles = {}
    for rid, pose in sorted(openable.items()):
        parts = rid.split("|")
        rtype = parts[-1] if parts[-1] in ("SinkBasin", "BathtubBasin") else parts[0]
        if rtype in constants.RECEPTACLES and rtype not in constants.MOVABLE_RECEPTACLES_SET:
            receptacles[rid] = (rtype, pose)
    present = tuple(sorted(set(json.loads((layouts / f"{plan}-objects.json").read_text()))))
    return receptacles, present


def floor_plans() -> list[str]:
    layouts = _alfworld()[4]
    return sorted(
        {p.name.split("-")[0] for p in layouts.glob("FloorPlan*-openable.json")},
        key=lambda n: int(n[len("FloorPlan") :]),
    )


def _choose(rng: random.Random, task_type: str, plans: list[str]):
    constants, goals, *_, layouts = _alfworld()
    for _ in range(200):
        plan = rng.choice(plans)
        receptacles, present = _scene(layouts, plan)
        rtypes = sorted({t for t, _ in receptacles.values()})
        appliance, ability = _NEEDS.get(task_type, (None, None))
        if appliance and appliance not in rtypes:
            continue
        candidates = []
        for obj in present:
            if obj in constants.RECEPTACLES and obj not in constants.MOVABLE_RECEPTACLES_SET:
                continue
            if ability and obj not in constants.VAL_ACTION_OBJECTS[ability]:
                continue
            holders = [r for r in rtypes if obj in constants.VAL_RECEPTACLE_OBJECTS.get(r, ())]
            parents = [r for r in holders if r != appliance]
            if len(holders) >= 2 and parents:
                candidates.append((obj, holders, parents))
        if candidates:
            obj, holders, parents = rng.choice(candidates)
            parent = rng.choice(parents)
            if any(h != parent for h in holders):
                return plan, receptacles, present, obj, parent
    raise RuntimeError(f"no floor plan fits task type {task_type}")


def generate_game(seed: int, split: str, task_types: tuple[str, ...] = TASK_TYPES) -> dict:
    """{'game.tw-pddl': ..., 'traj_data.json': ...} file contents for ``(seed, split)``.

    Floor plans are split like ALFWorld's scenes: numbers ending 1-5 train the agent (train),
    the others are held out (test), so test games are in unseen rooms."""
    constants, goals, domain, grammar, layouts = _alfworld()
    rng = random.Random(f"alfworld-gen:{_GEN_VERSION}:{split}:{seed}")
    plans = [p for p in floor_plans() if (int(p[len("FloorPlan") :]) % 10 in (6, 7, 8, 9, 0)) == (split == "test")]
    task_type = task_types[rng.randrange(len(task_types))]
    plan, receptacles, present, target, parent = _choose(rng, task_type, plans)

    def loc(pose) -> str:
        x, z, rot, horizon = pose
        return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{int(rot) // 90 % 4}|{int(horizon)}"

    rtypes = sorted({t for t, _ in receptacles.values()})
    holders_of = {
        o: [rid for rid, (t, _) in receptacles.items() if o in constants.VAL_RECEPTACLE_OBJECTS.get(t, ())]
        for o in present
    }
    n_target = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    others = [
        o
        for o in present
        if o != target
        and holders_of.get(o)
        and (o not in constants.RECEPTACLES or o in constants.MOVABLE_RECEPTACLES_SET)
    ]
    distractors = [rng.choice(others) for _ in range(rng.randint(6, 12))] if others else []
    placed: list[tuple[str, str, str]] = []  # (object id, type, receptacle id)
    used_ids: set[str] = set()
    for otype in [target] * n_target + distractors:
        options = holders_of[otype]
        if otype == target:  # the target never starts in a goal receptacle
            options = [r for r in options if receptacles[r][0] != parent]
        rid = rng.choice(options)
        while True:
            oid = f"{otype}|{rng.uniform(-3, 3):+06.2f}|{rng.uniform(0, 2):+06.2f}|{rng.uniform(-3, 3):+06.2f}"
            if oid not in used_ids:
                used_ids.add(oid)
                break
        placed.append((oid, otype, rid))

    locations = sorted({loc(pose) for _, pose in receptacles.values()})
    start = f"loc|{rng.randint(-20, 20)}|{rng.randint(-20, 20)}|{rng.randrange(4)}|30"
    if start in locations:
        start = "loc|99|99|0|30"
    # only the types in play, plus the constants the domain's actions name (smaller grounding)
    all_rtypes = sorted(set(rtypes) | {"SinkBasin", "Microwave", "Fridge"})
    otypes = sorted({t for _, t, _ in placed} | {"ButterKnife", "Knife"})
    objs = ["agent1 - agent"]
    objs += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in all_rtypes]
    objs += [f"{_pddl_name(oid)} - object" for oid, _, _ in placed]
    objs += [f"{_pddl_name(rid)} - receptacle" for rid in receptacles]
    objs += [f"{_pddl_name(where)} - location" for where in locations + [start]]
    init = [f"(atLocation agent1 {_pddl_name(start)})"]
    for rid, (rtype, pose) in receptacles.items():
        name = _pddl_name(rid)
        init += [
            f"(receptacleType {name} {rtype}Type)",
            f"(receptacleAtLocation {name} {_pddl_name(loc(pose))})",
        ]
        if rtype in constants.OPENABLE_CLASS_SET:
            init.append(f"(openable {name})")
    for oid, otype, rid in placed:
        name = _pddl_name(oid)
        init += [
            f"(objectType {name} {otype}Type)",
            f"(pickupable {name})",
            f"(inReceptacle {name} {_pddl_name(rid)})",
            f"(objectAtLocation {name} {_pddl_name(loc(receptacles[rid][1]))})",
        ]
        for ability, pred in (
            ("Cleanable", "cleanable"),
            ("Heatable", "heatable"),
            ("Coolable", "coolable"),
            ("Sliceable", "sliceable"),
        ):
            if otype in constants.VAL_ACTION_OBJECTS[ability]:
                init.append(f"({pred} {name})")
        if otype in constants.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {name})")
    for rtype in rtypes:
        for otype in sorted({t for _, t, _ in placed}):
            if otype in constants.VAL_RECEPTACLE_OBJECTS.get(rtype, ()):
                init.append(f"(canContain {rtype}Type {otype}Type)")
    goal = goals.gdict[task_type]["pddl"].format(obj=target, recep=parent).replace("#", "-")
    problem = (
        f"(define (problem gen_{split}_{seed})\n(:domain alfred)\n(:objects\n    "
        + "\n    ".join(objs)
        + "\n)\n(:init\n    "
        + "\n    ".join(init)
        + "\n)\n"
        + goal.strip()
        + "\n"
    )
    template = goals.gdict[task_type]["templates"][rng.randrange(2)]
    task_desc = template.format(obj=target.lower(), recep=parent.lower())
    traj = {
        "task_type": task_type,
        "scene": {"floor_plan": plan},
        "pddl_params": {
            "object_target": target,
            "parent_target": parent,
            "toggle_target": "",
            "mrecep_target": "",
            "object_sliced": False,
        },
        "turk_annotations": {"anns": [{"task_desc": task_desc}]},
        "nemo_craft": {"generated": True, "seed": seed, "split": split, "version": _GEN_VERSION},
    }
    game = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", task_desc),
        "pddl_problem": problem,
        "solvable": True,
    }
    return {"game.tw-pddl": json.dumps(game), "traj_data.json": json.dumps(traj, indent=1)}


def game_dir(cache_dir: str, seed: int, split: str, task_types: tuple[str, ...] = TASK_TYPES) -> str:
    """Write (once) and return the directory of the generated game for ``(seed, split)``."""
    tag = "all" if tuple(task_types) == TASK_TYPES else "-".join(sorted(task_types))
    out = Path(os.path.expanduser(cache_dir)) / f"v{_GEN_VERSION}" / tag / split / str(seed)
    if not (out / "game.tw-pddl").exists():
        files = generate_game(seed, split, tuple(task_types))
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            tmp = out / f".{name}.{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, out / name)  # atomic: concurrent workers may write the same game
    return str(out)
