"""Explaining a trace: the shared pass over its stack events, and the invariants.

`derive_facts(trace)` reads a trace once (never its snapshot columns) into
numpy arrays of stack events; each invariant in `INVARIANTS` is a pure
function of those facts; `check(trace)` runs them all. Nothing here imports
the recorder: a trace file is all it needs. (`decoded.py` decodes instruction
bytes with capstone and borrows the assembler front end's comma splitter,
`record/asm/operands.py`, plain text functions that import no emulator.)
"""

from .check import check
from .events import TraceFacts, derive_facts
from .invariants import INVARIANTS, Invariant
from .model import CheckResult, Findings, InvariantResult, PlantedReturn, Violation

__all__ = [
    "INVARIANTS",
    "CheckResult",
    "Findings",
    "Invariant",
    "InvariantResult",
    "PlantedReturn",
    "TraceFacts",
    "Violation",
    "check",
    "derive_facts",
]
