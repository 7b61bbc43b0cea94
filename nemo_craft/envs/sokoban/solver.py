"""Optimal Sokoban plans: breadth-first search over (player, boxes) with dead-square pruning.

A box on a *dead square* can never reach a target (a non-target corner is the classic case); such
states are pruned. Dead squares are found once per room by pulling a box backwards from every
target: squares no pull reaches are dead (this includes every non-target corner). BFS over single
moves gives a plan that is optimal in the number of moves.
"""

from __future__ import annotations

from collections import deque

from nemo_craft.envs.sokoban.room import ACTIONS, Room


def live_squares(room: Room) -> frozenset[int]:
    """Squares from which a lone box can still be pushed onto some target."""
    live = set(room.targets)
    queue = deque(room.targets)
    while queue:
        cell = queue.popleft()
        for action in ACTIONS:
            d = room.delta(action)
            # a box at cell - d pushed by a player at cell - 2d lands on cell
            prev, player = cell - d, cell - 2 * d
            if prev not in live and room.is_free(prev) and room.is_free(player):
                if abs((prev % room.width) - (cell % room.width)) <= 1:  # no row wrap
                    live.add(prev)
                    queue.append(prev)
    return frozenset(live)


def solve(room: Room, player: int, boxes: frozenset[int], *, max_states: int = 2_000_000) -> list[str] | None:
    """Shortest list of moves that puts every box on a target; None if none within max_states."""
    if boxes <= room.targets:
        return []
    live = live_squares(room)
    if not boxes <= live:
        return None
    start = (player, boxes)
    parent: dict[tuple[int, frozenset[int]], tuple[tuple[int, frozenset[int]], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for action in ACTIONS:
            nxt_player, nxt_boxes = room.move(state[0], state[1], action)
            nxt = (nxt_player, nxt_boxes)
            if nxt in parent or (nxt_boxes is not state[1] and not nxt_boxes <= live):
                continue
            parent[nxt] = (state, action)
            if nxt_boxes <= room.targets:
                return _backtrack(parent, nxt)
            if len(parent) >= max_states:
                return None
            queue.append(nxt)
    return None


def _backtrack(parent, state) -> list[str]:
    plan = []
    while parent[state] is not None:
        state, action = parent[state]
        plan.append(action)
    return plan[::-1]
