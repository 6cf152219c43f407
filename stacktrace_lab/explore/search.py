"""Find the previous or next step of a kind: a call, a ret, a stack change, an access.

What the stepper's find buttons ask a served trace. Calls, rets and stack
changes come from the shared analysis pass (`TraceFacts`), already in memory
as one small array per step. Accesses to a slot are searched in the `reads`
and `writes` columns row group by row group, starting next to the step and
moving away from it, so a nearby hit costs one row group however long the
trace. A register's accesses are the steps whose instruction reads or writes
it (capstone's register use, once per distinct instruction) or that change it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import numpy as np
import numpy.typing as npt

from ..analysis.events import TraceFacts
from ..arch import REGISTERS
from ..errors import BadInput
from .memory import flatten_accesses
from .registers import RegisterUse, register_use
from .rows import group_starts, instruction_listing

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

KINDS = ("call", "ret", "stack", "access")


def _nearest(steps: I64, start: int, direction: int) -> int | None:
    """The first of the sorted `steps` after `start` (direction 1) or before it (-1)."""
    if direction > 0:
        i = int(np.searchsorted(steps, start, side="right"))
        return int(steps[i]) if i < steps.size else None
    i = int(np.searchsorted(steps, start, side="left")) - 1
    return int(steps[i]) if i >= 0 else None


class StepSearch:
    """Searches over one trace, sharing its analysis pass."""

    def __init__(self, facts: TraceFacts) -> None:
        self.facts = facts
        self.trace = facts.trace
        self._starts = group_starts(self.trace)
        self._registers: dict[str, U64] = {}
        self._use: dict[int, RegisterUse] | None = None

    @cached_property
    def _calls(self) -> I64:
        return self.facts.calls

    @cached_property
    def _rets(self) -> I64:
        return self.facts.returns.step

    @cached_property
    def _stack_changes(self) -> I64:
        return self.facts.switch_steps()

    def kind(self, what: str, start: int, direction: int) -> int | None:
        """The nearest call, ret or stack change (a step after which rsp is in another stack)."""
        steps = {"call": self._calls, "ret": self._rets, "stack": self._stack_changes}.get(what)
        if steps is None:
            raise BadInput(f"unknown search '{what}' (one of {', '.join(KINDS)})")
        return _nearest(steps, start, direction)

    def _column(self, name: str) -> U64:
        if name not in self._registers:
            self._registers[name] = self.trace.column(name)
        return self._registers[name]

    def register_access(self, register: str, start: int, direction: int) -> int | None:
        """The nearest step whose instruction reads or writes `register` (capstone's
        register use of the instruction, and any step that changed its value)."""
        if register not in REGISTERS:
            raise BadInput(f"unknown register '{register}'")
        values = self._column(register)
        final = np.uint64(self.facts.meta.final.get(register, values[-1] if values.size else 0))
        hit = values != np.append(values[1:], final)
        rip = self._column("rip")
        if self._use is None:
            self._use = register_use((i.addr, i.data) for i in instruction_listing(self.trace))
        users = [addr for addr, use in self._use.items() if use.touches(register)]
        hit |= np.isin(rip, np.array(users, dtype=np.uint64))
        return _nearest(np.flatnonzero(hit).astype(np.int64), start, direction)

    def _groups_from(self, start: int, direction: int) -> Iterator[int]:
        g = int(np.searchsorted(self._starts, start, side="right")) - 1
        g = min(max(g, 0), self.trace.num_row_groups - 1)
        while 0 <= g < self.trace.num_row_groups:
            yield g
            g += direction

    def access(self, addr: int, size: int, start: int, direction: int) -> int | None:
        """The nearest step that reads or writes any byte of `addr ..< addr + size`."""
        lo, hi = np.uint64(addr), np.uint64(addr + size)
        for g in self._groups_from(start, direction):
            table = self.trace.row_group(g, ["step", "reads", "writes"])
            hits = []
            for column in ("reads", "writes"):
                log = flatten_accesses(table, column)
                touches = (log.addr < hi) & (log.addr + log.size.astype(np.uint64) > lo)
                hits.append(log.step[touches])
            steps = np.unique(np.concatenate(hits))
            found = _nearest(steps, start, direction)
            if found is not None:
                return found
        return None
