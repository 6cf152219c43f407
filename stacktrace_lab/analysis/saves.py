"""Where a function saved and restored its callee-saved registers: the advice of `callee-saved`.

When a register comes back from a call changed, the useful answer is not the
rule but the instructions: did the callee save it (`push %rbx`, `mov %rbx,
8(%rsp)`), did it restore it (`pop %rbx`, `mov 8(%rsp), %rbx`), and from which
slot. A restore from the slot where another register was saved is the classic
crossed pair (`push %rbx; push %rbp` ... `pop %rbx; pop %rbp`): both saved, both
restored, in the wrong order.

Only the callee's own instructions count (its depth: calls it makes are
skipped until they return). A call that comes back through a context switch is
read in two parts: its start until it first leaves (the saves of the switch),
and its end back from the resume (the restores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capstone import x86 as cs_x86

from ..arch import WORD
from .decoded import Decoded, OperandType, decode_rows
from .kinds import Kind

if TYPE_CHECKING:
    from .events import TraceFacts

#: At most this many rows are read from each end of a call (a save is near the entry,
#: a restore near the ret; a long callee is not read whole).
_SCAN_ROWS = 4096


@dataclass(frozen=True)
class Access:
    """One save or restore of a register: the instruction and the stack slot."""

    step: int
    rip: int
    insn: str
    slot: int


@dataclass(frozen=True)
class SaveRestore:
    register: str
    saved: Access | None
    restored: Access | None


def saves_and_restores(
    facts: TraceFacts, call_step: int, back_step: int, switched: bool
) -> dict[str, SaveRestore]:
    """For each register the callee saved or restored: its first save and last restore."""
    if switched:
        head = _rows(facts, call_step + 1, min(back_step, call_step + 1 + _SCAN_ROWS), call_step)
        tail = _rows(facts, max(call_step + 1, back_step - _SCAN_ROWS), back_step, call_step)
        accesses = _own(head, forward=True) + _own(tail, forward=False)
    elif back_step - call_step <= 2 * _SCAN_ROWS:
        accesses = _own(_rows(facts, call_step + 1, back_step, call_step), forward=True)
    else:
        head = _rows(facts, call_step + 1, call_step + 1 + _SCAN_ROWS, call_step)
        tail = _rows(facts, back_step - _SCAN_ROWS, back_step, call_step)
        accesses = _own(head, forward=True) + _own(tail, forward=False)
    saved: dict[str, Access] = {}
    restored: dict[str, Access] = {}
    for register, is_save, access in sorted(accesses, key=lambda a: a[2].step):
        if is_save:
            saved.setdefault(register, access)
        else:
            restored[register] = access
    return {r: SaveRestore(r, saved.get(r), restored.get(r)) for r in sorted({*saved, *restored})}


def _rows(facts: TraceFacts, start: int, stop: int, call_step: int) -> dict[str, list[Any]]:
    """Rows `start ..< stop` of the thread that made the call at `call_step`."""
    if stop <= start:
        return {"step": [], "rip": [], "insn": [], "insn_bytes": [], "reads": [], "writes": []}
    columns = ["step", "rip", "insn", "insn_bytes", "reads", "writes"]
    rows = facts.trace.slice(start, stop, columns).to_pydict()
    rows["kind"] = facts.kind[start:stop].tolist()
    if facts.threads.ends.size:
        # Only the rows of the thread that ran `start`: another thread's pushes and
        # pops between them are not this function's saves.
        keep = (facts.threads.same_thread(start, stop - 1, call_step) - start).tolist()
        rows = {name: [values[i] for i in keep] for name, values in rows.items()}
    out: dict[str, list[Any]] = rows
    return out


def _own(rows: dict[str, list[Any]], forward: bool) -> list[tuple[str, bool, Access]]:
    """Saves and restores among the rows run by the function itself (depth 0), reading
    forward from its entry until it leaves, or backward from its ret until it was entered."""
    n = len(rows["step"])
    if not n:
        return []
    decoded = decode_rows(rows["rip"], rows["insn_bytes"])
    out: list[tuple[str, bool, Access]] = []
    depth = 0
    order = range(n) if forward else range(n - 1, -1, -1)
    for i in order:
        kind = rows["kind"][i]
        if forward:
            if depth == 0:
                if kind == Kind.RET:
                    break  # the function left (its ret, or a switch away)
                found = _save_or_restore(decoded[i], rows, i)
                if found is not None:
                    out.append(found)
            depth += 1 if kind == Kind.CALL else -1 if kind == Kind.RET else 0
        else:
            depth += 1 if kind == Kind.RET else -1 if kind == Kind.CALL else 0
            if depth < 0 or (depth == 0 and kind == Kind.RET):
                break  # before the function was resumed or entered
            if depth == 0:
                found = _save_or_restore(decoded[i], rows, i)
                if found is not None:
                    out.append(found)
    return out


def _save_or_restore(
    insn: Decoded, rows: dict[str, list[Any]], i: int
) -> tuple[str, bool, Access] | None:
    """(register, is a save, access) when the instruction moves a whole general
    register to or from memory: `push`/`pop`, or a 64-bit `mov`."""
    ops = insn.operands
    if insn.id == cs_x86.X86_INS_PUSH and ops and ops[0].type is OperandType.REG:
        register, save = ops[0].register, True
    elif insn.id == cs_x86.X86_INS_POP and ops and ops[0].type is OperandType.REG:
        register, save = ops[0].register, False
    elif insn.id == cs_x86.X86_INS_MOV and len(ops) == 2 and ops[0].size == WORD:
        destination, source = ops
        if destination.type is OperandType.MEM and source.type is OperandType.REG:
            register, save = source.register, True
        elif destination.type is OperandType.REG and source.type is OperandType.MEM:
            register, save = destination.register, False
        else:
            return None
    else:
        return None
    accesses = rows["writes"][i] if save else rows["reads"][i]
    if register is None or not accesses:
        return None
    access = Access(
        step=int(rows["step"][i]),
        rip=int(rows["rip"][i]),
        insn=str(rows["insn"][i]),
        slot=int(accesses[0]["addr"]),
    )
    return register, save, access


def advices(
    facts: TraceFacts, registers: list[str], found: dict[str, SaveRestore], where: str
) -> tuple[list[str], list[str]]:
    """What happened to each of `registers` inside the call, and the registers the
    callee neither saved nor restored (the general rule then says what to do). Two
    registers each restored from the other's slot are one finding."""
    said: list[str] = []
    untold: list[str] = []
    done: set[str] = set()
    for register in registers:
        if register in done:
            continue
        partner = _crossed_with(register, found)
        if (
            partner is not None
            and partner in registers
            and _crossed_with(partner, found) == register
        ):
            a, b = found[register], found[partner]
            assert a.saved and a.restored and b.saved and b.restored
            first, second = sorted((a, b), key=lambda x: x.saved.step if x.saved else 0)
            assert first.saved and second.saved and first.restored and second.restored
            said.append(
                f"{register} and {partner} were saved by {_named(facts, first.saved)} and "
                f"{_named(facts, second.saved)} and restored by "
                f"{_named(facts, first.restored)} and {_named(facts, second.restored)}: "
                "restored in the wrong order, each from the other's slot (pop in the reverse "
                "order of the pushes)"
            )
            done |= {register, partner}
            continue
        text = advice(facts, register, found, where)
        (said if text is not None else untold).append(text or register)
        done.add(register)
    return said, untold


def _crossed_with(register: str, found: dict[str, SaveRestore]) -> str | None:
    """The register whose save slot `register` was restored from, if not its own."""
    mine = found.get(register)
    if mine is None or mine.saved is None or mine.restored is None:
        return None
    if mine.restored.slot == mine.saved.slot:
        return None
    for other in found.values():
        saved = other.saved
        if other.register != register and saved is not None and saved.slot == mine.restored.slot:
            return other.register
    return None


def advice(
    facts: TraceFacts, register: str, found: dict[str, SaveRestore], where: str
) -> str | None:
    """What happened to `register` inside the call, naming the instructions; None when
    the callee neither saved nor restored it (the general rule then says what to do)."""
    mine = found.get(register)
    if mine is None:
        return None
    saved, restored = mine.saved, mine.restored
    if saved is not None and restored is not None:
        if restored.slot == saved.slot:
            return (
                f"{register} was saved by {_named(facts, saved)} and restored by "
                f"{_named(facts, restored)} from the same slot, which changed in between"
            )
        other = next(
            (
                s
                for s in found.values()
                if s.register != register and s.saved is not None and s.saved.slot == restored.slot
            ),
            None,
        )
        if other is not None and other.saved is not None:
            return (
                f"{register} was saved by {_named(facts, saved)} and restored by "
                f"{_named(facts, restored)} from the slot {_named(facts, other.saved)} saved "
                f"{other.register} in: restored in the wrong order (pop in the reverse "
                "order of the pushes)"
            )
        return (
            f"{register} was saved by {_named(facts, saved)} at {facts.where(saved.slot)} but "
            f"restored by {_named(facts, restored)} from {facts.where(restored.slot)}"
        )
    if saved is not None:
        return f"{register} was saved by {_named(facts, saved)} but never restored {where}"
    assert restored is not None
    return (
        f"{register} was restored by {_named(facts, restored)} from "
        f"{facts.where(restored.slot)} but never saved there"
    )


def _named(facts: TraceFacts, access: Access) -> str:
    src = facts.source(access.rip)
    at = f"{src}, " if src else f"{facts.symbolize(access.rip)}, "
    return f"`{access.insn}` ({at}step {access.step})"


__all__ = ["Access", "SaveRestore", "advice", "advices", "saves_and_restores"]
