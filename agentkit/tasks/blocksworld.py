"""Blocksworld: restack lettered blocks from an initial arrangement to a goal arrangement.

The level is the number of blocks (A, B, ...). A state maps each block to what it rests
on, a block letter or "table". One move takes a clear block off its support and puts it
on the table or on another clear block. The gold plan is a shortest one, found by
breadth-first search (at most 4051 states for six blocks).
"""

from __future__ import annotations

import random
import re
from collections import deque

from agentkit.tasks.base import Draft, Suite, Task, split_steps

__all__ = ["BlocksworldSuite"]

TABLE = "table"
_MOVE = re.compile(
    r"\s*move\s+([a-z])\s+from\s+(?:the\s+)?(table|[a-z])\s+to\s+(?:the\s+)?(table|[a-z])\s*\.?\s*",
    re.IGNORECASE,
)

State = dict[str, str]
Move = tuple[str, str, str]  # (block, source, destination)


class BlocksworldSuite(Suite):
    name = "blocksworld"
    levels = (3, 4, 5, 6)
    default_level = 3
    instructions = (
        "Move one clear block per step, written 'Step k: move X from Y to Z' where Y and Z "
        "are blocks or 'the table', until the goal holds; then write 'Answer: done'."
    )

    def _generate(self, rng: random.Random, level: int) -> Draft | None:
        blocks = [chr(ord("A") + i) for i in range(level)]
        initial, goal = _random_state(rng, blocks), _random_state(rng, blocks)
        if initial == goal:
            return None
        plan = _shortest_plan(initial, goal)
        lines = [f"Step {k}: {_move_text(move)}" for k, move in enumerate(plan, 1)]
        question = (
            f"Blocks {', '.join(blocks[:-1])} and {blocks[-1]}. "
            f"Initial state: {_describe(initial)} Goal: {_describe(goal)}"
        )
        return Draft(
            question=question,
            answer="done",
            solution="\n".join(lines + ["Answer: done"]),
            data={"blocks": blocks, "initial": initial, "goal": goal},
        )

    def _reward(self, task: Task, text: str) -> float:
        """1.0 iff every step is a legal move and the final state satisfies the goal."""
        state = dict(task.data["initial"])
        for step in split_steps(text):
            state = _apply(state, _parse_move(step))
            if state is None:
                return 0.0
        goal = task.data["goal"]
        return 1.0 if all(state[block] == on for block, on in goal.items()) else 0.0

    def _check_steps(self, task: Task, text: str) -> list[bool]:
        """Step k is right iff it is a legal move in the state the earlier steps reached;
        after the first illegal or unreadable step every later step is wrong."""
        state: State | None = dict(task.data["initial"])
        checks = []
        for step in split_steps(text):
            if state is not None:
                state = _apply(state, _parse_move(step))
            checks.append(state is not None)
        return checks


def _random_state(rng: random.Random, blocks: list[str]) -> State:
    """Blocks in random order; each starts a new stack or goes on top of the previous one."""
    order = rng.sample(blocks, len(blocks))
    state = {order[0]: TABLE}
    for below, block in zip(order, order[1:]):
        state[block] = TABLE if rng.random() < 0.5 else below
    return dict(sorted(state.items()))


def _describe(state: State) -> str:
    """Stacks bottom-up, ordered by their bottom block: "A is on the table. C is on A." """
    sentences = []
    above = {on: block for block, on in state.items() if on != TABLE}
    for bottom in sorted(block for block, on in state.items() if on == TABLE):
        sentences.append(f"{bottom} is on the table.")
        block = bottom
        while block in above:
            sentences.append(f"{above[block]} is on {block}.")
            block = above[block]
    return " ".join(sentences)


def _clear(state: State) -> list[str]:
    covered = set(state.values())
    return sorted(block for block in state if block not in covered)


def _apply(state: State, move: Move | None) -> State | None:
    """The state after ``move``, or None if the move is unreadable or illegal."""
    if move is None:
        return None
    block, source, destination = move
    clear = _clear(state)
    legal = (
        block in state
        and block in clear
        and state[block] == source
        and destination != source
        and (destination == TABLE or (destination != block and destination in clear))
    )
    if not legal:
        return None
    return {**state, block: destination}


def _moves(state: State) -> list[Move]:
    clear = _clear(state)
    moves = []
    for block in clear:
        for destination in [TABLE] + clear:
            if destination != block and destination != state[block]:
                moves.append((block, state[block], destination))
    return moves


def _shortest_plan(initial: State, goal: State) -> list[Move]:
    """Breadth-first search over full states; moves are tried in a fixed order."""
    start, target = tuple(initial.items()), tuple(goal.items())
    parent: dict[tuple, tuple | None] = {start: None}
    queue = deque([start])
    while queue:
        key = queue.popleft()
        if key == target:
            break
        state = dict(key)
        for move in _moves(state):
            following = tuple({**state, move[0]: move[2]}.items())
            if following not in parent:
                parent[following] = (key, move)
                queue.append(following)
    plan = []
    key = target
    while parent[key] is not None:
        key, move = parent[key]
        plan.append(move)
    return plan[::-1]


def _parse_move(step: str) -> Move | None:
    m = _MOVE.fullmatch(step)
    if m is None:
        return None
    block, source, destination = (g.upper() if len(g) == 1 else TABLE for g in m.groups())
    return block, source, destination


def _move_text(move: Move) -> str:
    block, source, destination = move
    return f"move {block} from {_place(source)} to {_place(destination)}"


def _place(position: str) -> str:
    return "the table" if position == TABLE else position
