"""Sokoban rooms: the state, the rules, and a seeded generator (reverse play from a solved state).

A room is a grid of walls and floor with target squares; a state is (player, boxes) as flat cell
indices (``row * width + col``). Generation is deterministic by seed (one ``random.Random``):
carve a room by a random walk, put the boxes on targets, then play backwards (the player walks and
pulls boxes) so the result is solvable by construction; the solver then gives the optimal plan.
"""

from __future__ import annotations

import dataclasses
import random

WALL, FLOOR = "#", "_"
TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET = ".", "$", "*", "@", "+"
LEGEND = "# wall, _ floor, . target, $ box, * box on target, @ you, + you on target"

ACTIONS = ("up", "down", "left", "right")
_DELTAS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


@dataclasses.dataclass(frozen=True)
class Room:
    """Static layout: size, wall cells, target cells."""

    height: int
    width: int
    walls: frozenset[int]
    targets: frozenset[int]

    def delta(self, action: str) -> int:
        dr, dc = _DELTAS[action]
        return dr * self.width + dc

    def is_free(self, cell: int) -> bool:
        return 0 <= cell < self.height * self.width and cell not in self.walls

    def move(self, player: int, boxes: frozenset[int], action: str) -> tuple[int, frozenset[int]]:
        """One forward move: walk, or push one box; blocked moves leave the state unchanged."""
        d = self.delta(action)
        nxt = player + d
        if not self.is_free(nxt):
            return player, boxes
        if nxt in boxes:
            beyond = nxt + d
            if not self.is_free(beyond) or beyond in boxes:
                return player, boxes
            return nxt, (boxes - {nxt}) | {beyond}
        return nxt, boxes

    def render(self, player: int, boxes: frozenset[int]) -> str:
        rows = []
        for r in range(self.height):
            row = []
            for c in range(self.width):
                i = r * self.width + c
                if i in self.walls:
                    row.append(WALL)
                elif i == player:
                    row.append(PLAYER_ON_TARGET if i in self.targets else PLAYER)
                elif i in boxes:
                    row.append(BOX_ON_TARGET if i in self.targets else BOX)
                else:
                    row.append(TARGET if i in self.targets else FLOOR)
            rows.append("".join(row))
        return "\n".join(rows)


def _carve(rng: random.Random, height: int, width: int, steps: int) -> set[int]:
    """Floor cells from a random walk with a plus-shaped brush, inside a one-cell wall border."""
    r, c = rng.randrange(1, height - 1), rng.randrange(1, width - 1)
    direction = rng.choice(list(_DELTAS.values()))
    floor: set[int] = set()
    for _ in range(steps):
        if rng.random() < 0.35:
            direction = rng.choice(list(_DELTAS.values()))
        r = min(max(r + direction[0], 1), height - 2)
        c = min(max(c + direction[1], 1), width - 2)
        for dr, dc in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            inside = 1 <= rr < height - 1 and 1 <= cc < width - 1
            if (dr, dc) == (0, 0) or (inside and rng.random() < 0.7):
                floor.add(rr * width + cc)
    return floor


def _reverse_play(
    rng: random.Random, room: Room, floor: list[int], num_boxes: int, pulls: int
) -> tuple[int, frozenset[int]] | None:
    """Scatter boxes from their targets by reverse moves; return the state with the most boxes off
    target, then the largest total distance to the nearest targets."""
    boxes = set(room.targets)
    free = [f for f in floor if f not in boxes]
    if not free:
        return None
    player = rng.choice(free)
    best, best_score = None, (0, 0)
    for _ in range(pulls):
        action = rng.choice(ACTIONS)
        d = room.delta(action)
        nxt = player + d
        if not room.is_free(nxt) or nxt in boxes:
            continue
        behind = player - d
        if behind in boxes and rng.random() < 0.8:  # pull the box behind the player along
            boxes.remove(behind)
            boxes.add(player)
        player = nxt
        off = [b for b in boxes if b not in room.targets]
        score = (len(off), sum(_min_distance(room, b) for b in off))  # all boxes off first
        if score > best_score:
            best, best_score = (player, frozenset(boxes)), score
    return best


def _min_distance(room: Room, cell: int) -> int:
    r, c = divmod(cell, room.width)
    return min(abs(r - tr) + abs(c - tc) for tr, tc in (divmod(t, room.width) for t in room.targets))


def generate_room(
    rng: random.Random, height: int, width: int, num_boxes: int, *, pulls: int, carve_steps: int
) -> tuple[Room, int, frozenset[int]] | None:
    """One generation attempt: (room, player, boxes), or None when the attempt is degenerate."""
    floor_set = _carve(rng, height, width, carve_steps)
    if len(floor_set) < num_boxes + 3:
        return None
    floor = sorted(floor_set)
    walls = frozenset(i for i in range(height * width) if i not in floor_set)
    targets = frozenset(rng.sample(floor, num_boxes))
    room = Room(height, width, walls, targets)
    start = _reverse_play(rng, room, floor, num_boxes, pulls)
    if start is None or start[1] & targets:  # every box starts off target
        return None
    return room, start[0], start[1]
