"""Everything a debugger shows when stopped at one step, gathered for `show`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..arch import REGISTERS
from ..layout import Region
from ..trace.reader import Trace
from .rows import (
    Access,
    Instruction,
    StepRow,
    instruction_listing,
    listing_around,
    registers_after,
    row_at,
)
from .telescope import Telescope, describe_pointer, telescope


@dataclass(frozen=True)
class RegisterView:
    name: str
    value: int  # before the instruction at the step
    changed: bool  # the previous instruction changed it
    after: int | None  # the value once this step's instruction ran, if it changes it
    points_to: str


@dataclass(frozen=True)
class StepView:
    row: StepRow
    last_step: int
    registers: tuple[RegisterView, ...]
    listing: tuple[Instruction, ...]  # executed instructions around rip, in address order
    telescope: Telescope | None

    def to_json(self, trace: Trace) -> dict[str, Any]:
        meta = trace.metadata

        def access(a: Access) -> dict[str, Any]:
            return {
                "addr": a.addr,
                "size": a.size,
                "value": a.value,
                "where": describe_pointer(meta, a.addr),
            }

        tel = self.telescope
        return {
            "trace": str(trace.path),
            "step": self.row.step,
            "thread": self.row.thread,
            "last_step": self.last_step,
            "rip": self.row.rip,
            "symbol": self.row.symbol,
            "insn": self.row.insn,
            "registers": {
                r.name: {
                    "value": r.value,
                    "changed": r.changed,
                    "after": r.after,
                    "points_to": r.points_to,
                }
                for r in self.registers
            },
            "reads": [access(a) for a in self.row.reads],
            "writes": [access(a) for a in self.row.writes],
            "listing": [
                {
                    "addr": i.addr,
                    "symbol": i.symbol,
                    "insn": i.text,
                    "current": i.addr == self.row.rip,
                }
                for i in self.listing
            ],
            "stack": None
            if tel is None
            else {
                "region": tel.region.name,
                "base": tel.region.base,
                "size": tel.region.size,
                "rsp": tel.rsp,
                "whole": tel.whole,
                "slots": [
                    {
                        "index": s.index,
                        "addr": s.addr,
                        "value": s.value,
                        "points_to": s.points_to,
                        "written_at": s.written_at,
                        "writer": s.writer.text if s.writer else None,
                    }
                    for s in tel.slots
                ],
            },
        }


def step_view(
    trace: Trace,
    step: int,
    context: int = 4,
    region: Region | None = None,
    around_rsp: bool = False,
) -> StepView:
    row = row_at(trace, step)
    before = row_at(trace, step - 1).registers if step > 0 else row.registers
    after = registers_after(trace, step)
    meta = trace.metadata
    registers = tuple(
        RegisterView(
            name=name,
            value=row.registers[name],
            changed=row.registers[name] != before[name],
            after=after[name]
            if after.get(name, row.registers[name]) != row.registers[name]
            else None,
            points_to=describe_pointer(meta, row.registers[name]) if name != "rflags" else "",
        )
        for name in REGISTERS
    )
    listing = listing_around(instruction_listing(trace), row.rip, context)
    return StepView(
        row=row,
        last_step=trace.num_rows - 1,
        registers=registers,
        listing=tuple(listing),
        telescope=telescope(trace, step, region, around_rsp),
    )
