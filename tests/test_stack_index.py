"""`name_stacks` finds the stack rsp belongs to through an index by address
(record/linux/discovery.py `_StackIndex`), not a pass over every stack found:
the index must pick exactly the stack the plain rule picks."""

from __future__ import annotations

import random

from stacktrace_lab.layout import Region
from stacktrace_lab.record.linux.discovery import OVERFLOW_REACH, _StackIndex


def _plain_owner(stacks: list[Region], range_only: set[int], rsp: int) -> int | None:
    """The rule as written before the index: the first stack found that rsp is in,
    else the first that rsp is near (under it, or either side of a range-only one)."""
    near = [
        k
        for k, s in enumerate(stacks)
        if s.base - OVERFLOW_REACH <= rsp <= s.top + (OVERFLOW_REACH if k in range_only else 0)
    ]
    return next((k for k in near if stacks[k].base <= rsp), near[0] if near else None)


def test_the_index_picks_the_stack_the_plain_rule_picks() -> None:
    rng = random.Random(7)
    stacks: list[Region] = []
    range_only: set[int] = set()
    index = _StackIndex(stacks)
    heap = 0x4A0000
    for k in range(400):
        if k % 50 == 7:  # a range-only stack: one byte, rsp's first value
            base, size = 0x7FFF0000 - rng.randrange(1 << 20), 1
            range_only.add(k)
        elif k % 9 == 0:  # a big mapped stack
            base, size = 0x7F0000000000 + k * (3 << 20), 2 << 20
        else:  # small heap stacks, side by side
            base, size = heap, rng.choice([48, 256, 4096])
            heap += size + 16
        stacks.append(Region(f"s{k}", "stack", base, size, "rw-"))
        index.add(k, range_only=k in range_only)
        for _ in range(20):
            target = stacks[rng.randrange(len(stacks))]
            rsp = target.base + rng.randrange(-OVERFLOW_REACH - 64, target.size + 64)
            assert index.owner(rsp) == _plain_owner(stacks, range_only, rsp), (k, hex(rsp))
    assert index.owner(0x1000) is None
