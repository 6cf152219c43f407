"""A debugger-like query layer over a recorded trace.

Registers at a step, the executed-instruction listing, the stack telescope of
a region at a step with who last wrote each slot, provenance of a slot's
value, and the planted returns (stack switches). Reads only the trace file:
nothing here imports the emulator.
"""

from .provenance import PlantedReturn, Provenance, SlotRef, parse_slot, planted_returns, provenance
from .rows import StepRow, first_step_at, instruction_listing, row_at
from .telescope import Slot, Telescope, describe_pointer, telescope

__all__ = [
    "PlantedReturn",
    "Provenance",
    "Slot",
    "SlotRef",
    "StepRow",
    "Telescope",
    "describe_pointer",
    "first_step_at",
    "instruction_listing",
    "parse_slot",
    "planted_returns",
    "provenance",
    "row_at",
    "telescope",
]
