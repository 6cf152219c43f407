"""The normalisations: differences between the two runs that say nothing about the CPU model.

Each is named, applied to whole columns at once (numpy), and counted, so a
report says how many rows each one touched. Both runs are normalised the
same way; none of them hides a difference in a value the program can
compute with, except where the architecture itself leaves it undefined.

- `rep-extra-step`: an emulated run recorded before the recorder counted
  `rep` steps as the CPU does has one extra row per `rep` string instruction
  (the same instruction again with rcx == 0, doing nothing). Dropped.
- `interrupt-flag`: rflags IF (bit 9). Linux runs user code with IF set and
  user mode cannot clear it; unicorn starts with rflags 0x2.
- `trap-flag`: rflags TF (bit 8), which the tracer sets to single-step and
  which ptrace shows in rflags. Only in the rflags column: where TF would
  leak into a value (r11 after a `syscall`, the word `pushf` pushes) the
  native stepper clears it at the source, as an untraced CPU has it.
IF also in r11 after a `syscall` (r11 = rflags at the syscall), in the rows
until r11 is written again.
- `resume-flag`: rflags RF (bit 16), which the CPU sets in the flags a
  single-step trap saves in the middle of a `rep` string instruction; no
  program can read it (pushf pushes it clear).
- `undefined-flags`: the flags an instruction leaves architecturally
  undefined (capstone's detail mode; AF for shifts added), from the row after
  it until an instruction defines that flag again, and in r11 where it holds
  the rflags a `syscall` saved while they were undefined. Each CPU generation
  may leave different values there; programs must not read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..arch import REGISTERS
from .instructions import InstructionTable, RowFacts

RIP = REGISTERS.index("rip")
RCX = REGISTERS.index("rcx")
R11 = REGISTERS.index("r11")
RFLAGS = REGISTERS.index("rflags")
TF = np.uint64(1 << 8)
IF = np.uint64(1 << 9)
RF = np.uint64(1 << 16)
#: The six status flags capstone describes, as rflags bits.
STATUS_FLAGS = (0, 2, 4, 6, 7, 11)

NORMALISATIONS = ("rep-extra-step", "interrupt-flag", "trap-flag", "resume-flag", "undefined-flags")


@dataclass
class Normalised:
    native: np.ndarray  # (rows, len(REGISTERS)) uint64, masked
    emulated: np.ndarray
    #: normalisation name -> rows it changed (in either run)
    rows_touched: dict[str, int] = field(default_factory=dict)
    #: emulated row index -> original emulated step (after rep-extra-step drops)
    emulated_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def drop_rep_extra_steps(emulated: np.ndarray, table: InstructionTable) -> np.ndarray:
    """Indices of the emulated rows to keep (`rep-extra-step`)."""
    if len(emulated) < 2:
        return np.arange(len(emulated))
    rips = emulated[:, RIP]
    repeated = np.zeros(len(rips), dtype=bool)
    repeated[1:] = (rips[1:] == rips[:-1]) & (emulated[1:, RCX] == 0)
    if repeated.any():
        inverse, instructions = table.per_row(rips[repeated])
        is_rep = np.array([i.rep_string for i in instructions], dtype=bool)[inverse]
        candidates = np.flatnonzero(repeated)
        repeated[:] = False
        repeated[candidates[is_rep]] = True
    return np.flatnonzero(~repeated)


def undefined_flag_masks(facts: RowFacts) -> np.ndarray:
    """Per row, the rflags bits that hold an undefined value (left by an earlier instruction)."""
    undefined, defined = facts.undefined_flags, facts.defined_flags
    rows = len(undefined)
    masks = np.zeros(rows, dtype=np.uint64)
    if rows < 2:
        return masks
    positions = np.arange(rows)
    for bit in STATUS_FLAGS:
        flag = np.uint64(1 << bit)
        undefines = (undefined & flag) != 0
        touches = undefines | ((defined & flag) != 0)
        # The last instruction before each row that wrote this flag, defined or not.
        last = np.maximum.accumulate(np.where(touches, positions, -1))
        last_before = np.empty(rows, dtype=np.int64)
        last_before[0] = -1
        last_before[1:] = last[:-1]
        left_undefined = (last_before >= 0) & undefines[np.maximum(last_before, 0)]
        masks[left_undefined] |= flag
    return masks


def rflags_in_r11(r11: np.ndarray, facts: RowFacts, saved_at_start: bool = False) -> np.ndarray:
    """Rows where r11 still holds the rflags a `syscall` saved.

    `saved_at_start`: the first row's r11 comes from a syscall before the
    rows (the comparison starts at `--from`)."""
    rows = len(r11)
    if rows == 0:
        return np.zeros(rows, dtype=bool)
    after_syscall = np.zeros(rows, dtype=bool)
    after_syscall[0] = saved_at_start
    after_syscall[1:] = facts.is_syscall[:-1]
    # A run of rows with the same r11 starts at a change of r11 or right after a syscall.
    starts = np.ones(rows, dtype=bool)
    starts[1:] = (r11[1:] != r11[:-1]) | after_syscall[1:]
    run = np.cumsum(starts) - 1
    saved: np.ndarray = after_syscall[np.flatnonzero(starts)][run]
    return saved


def _syscall_before(facts: RowFacts) -> np.ndarray:
    """Per row, the row of the last `syscall` before it (0 where there is none)."""
    rows = len(facts.is_syscall)
    last = np.maximum.accumulate(np.where(facts.is_syscall, np.arange(rows), -1))
    before = np.zeros(rows, dtype=np.int64)
    before[1:] = np.maximum(last[:-1], 0)
    return before


def normalise(
    native: np.ndarray,
    emulated: np.ndarray,
    table: InstructionTable,
    r11_saved_at_start: bool = False,
) -> Normalised:
    keep = drop_rep_extra_steps(emulated, table)
    counts = {"rep-extra-step": len(emulated) - len(keep)}
    emulated = emulated[keep]
    rows = min(len(native), len(emulated))
    n = native[:rows].copy()
    e = emulated[:rows].copy()
    keep = keep[:rows]
    facts = table.row_facts(n[:, RIP])

    saved = rflags_in_r11(n[:, R11], facts, r11_saved_at_start)
    # TF only in rflags: the native stepper clears the tracer's TF where it
    # would leak into a value (r11 after a syscall, the word pushf pushes).
    for name, bit, in_r11_too in (("interrupt-flag", IF, True), ("trap-flag", TF, False)):
        in_rflags = ((n[:, RFLAGS] ^ e[:, RFLAGS]) & bit) != 0
        in_r11 = saved & (((n[:, R11] ^ e[:, R11]) & bit) != 0) & in_r11_too
        counts[name] = int((in_rflags | in_r11).sum())
        n[:, RFLAGS] &= ~bit
        e[:, RFLAGS] &= ~bit
        if in_r11_too:
            n[saved, R11] &= ~bit
            e[saved, R11] &= ~bit

    # RF: the CPU sets it in the rflags a debug trap saves in the middle of a
    # `rep` string instruction (the single step after one iteration). No
    # program can see it (pushf pushes it clear, popf cannot set it from
    # user mode's point of view before the next instruction completes).
    counts["resume-flag"] = int((((n[:, RFLAGS] ^ e[:, RFLAGS]) & RF) != 0).sum())
    n[:, RFLAGS] &= ~RF
    e[:, RFLAGS] &= ~RF
    masks = undefined_flag_masks(facts)
    # r11 after a syscall holds rflags as they were at it, undefined flags included.
    r11_masks = np.where(saved, masks[_syscall_before(facts)], np.uint64(0))
    counts["undefined-flags"] = int(
        (
            (((n[:, RFLAGS] ^ e[:, RFLAGS]) & masks) != 0)
            | (((n[:, R11] ^ e[:, R11]) & r11_masks) != 0)
        ).sum()
    )
    n[:, RFLAGS] &= ~masks
    e[:, RFLAGS] &= ~masks
    n[:, R11] &= ~r11_masks
    e[:, R11] &= ~r11_masks
    return Normalised(n, e, counts, keep)
