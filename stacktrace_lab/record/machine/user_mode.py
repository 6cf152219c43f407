"""A user-mode CPU: privileged instructions raise #GP, as at CPL 3 on real hardware.

Unicorn runs `cli`, `wrmsr`, `in`/`out`, `mov %rax, %cr0` ... silently, as
if the program were the kernel (docs/pitfalls.md), though the machine is
documented as user mode. Here each instruction is decided once, at its first
execution, from the bytes in emulated memory (so code written at run time is
covered too): `Decisions.decide` tells the machine's one code hook whether
the instruction at an address is normal, privileged (the run stops with a
`fault` naming it, before it executes), one of the CPU model's fixed-value
instructions (record/machine/cpu.py), or one unicorn runs wrongly
(record/machine/emulator_gaps.py): unsupported (the run stops with reason
`unsupported` before it executes) or alignment-checked (before every
execution its memory operand's address is computed; misaligned, the run
stops with a `fault`, the CPU's #GP). The answer is cached per address; a write into
a page that holds decided addresses forgets them (the code may have
changed), so they are decided again when they run next.

Which instructions: capstone's `X86_GRP_PRIVILEGE` group, plus those it
leaves out (`rdmsr`, `in`, `out`, `ins*`, `outs*`, `clts`), less those a
user program may run: `hlt` stays the documented `halted` stop reason (a
scenario's way to end), `iretq` to the same privilege level is allowed,
`str` reads a selector without privilege, and `rdtsc`/`rdtscp` run in user
mode on Linux (record/machine/cpu.py gives them fixed values).
"""

from __future__ import annotations

import functools
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs, CsError
from capstone import x86_const as x86
from unicorn.unicorn_py3.unicorn import Uc, UcError

from ...arch import PAGE
from .emulator_gaps import MustBeAligned, Unsupported, gap_of

GP_FAULT = "general protection fault (#GP)"
#: What an executed address holds, as the code hooks (Python or C) cache it.
NORMAL, PRIVILEGED, FIXED_VALUE, UNSUPPORTED, ALIGN_CHECK = 1, 2, 3, 4, 5
#: Set in a decision: writes to its page must be watched (every decided page is).
WATCH = 0x100
#: Bytes a privileged, fixed-value or emulator-gap instruction's opcode starts
#: with (one-byte opcodes, and 0x0f for two- and three-byte ones: rdtsc, legacy
#: SSE, fxsave, cmpxchg16b among them; the VEX/EVEX/XOP escapes c4, c5, 62 and
#: 8f; d9 for the x87 transcendental functions): an instruction whose opcode
#: byte is none of these is NORMAL without decoding it. `_core.c` has the same list.
_OPCODE_STARTS = frozenset(
    (
        0xFA,
        0xFB,
        0x0F,
        *range(0xE4, 0xE8),
        *range(0xEC, 0xF0),
        *range(0x6C, 0x70),
        0xC4,
        0xC5,
        0x62,
        0x8F,
        0xD9,
    )
)
_PREFIXES = frozenset(
    (0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, *range(0x40, 0x50))
)
_MISSED_BY_CAPSTONE = {
    x86.X86_INS_RDMSR,
    x86.X86_INS_IN,
    x86.X86_INS_OUT,
    x86.X86_INS_INSB,
    x86.X86_INS_INSW,
    x86.X86_INS_INSD,
    x86.X86_INS_OUTSB,
    x86.X86_INS_OUTSW,
    x86.X86_INS_OUTSD,
    x86.X86_INS_CLTS,
}
#: Not privileged, but no way into a 64-bit Linux process's kernel: AMD CPUs
#: raise #UD for sysenter in 64-bit mode, and on Intel Linux's 32-bit entry
#: cannot return to 64-bit code and the process dies. Stopped like a
#: privileged instruction, with its own reason (issue 26; unicorn ran it as a no-op).
_SYSENTER_FAULT = (
    "invalid opcode (#UD) at {address:#x}: sysenter is no system call in a "
    "64-bit Linux process (use syscall)"
)
_ALLOWED_IN_USER_MODE = {
    x86.X86_INS_HLT,
    x86.X86_INS_RDTSC,  # user mode unless CR4.TSD; cpu.py gives fixed values
    x86.X86_INS_RDTSCP,
    x86.X86_INS_IRET,
    x86.X86_INS_IRETD,
    x86.X86_INS_IRETQ,
    x86.X86_INS_STR,
}

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True
_cs.syntax = CS_OPT_SYNTAX_ATT  # as the trace's `insn` column spells instructions
_cs_intel = Cs(CS_ARCH_X86, CS_MODE_64)
_cs_intel.detail = True
#: The instructions the CPU model's `answer` fixes (record/machine/cpu.py; cpuid has its own hook).
_FIXED_VALUE_IDS = frozenset(
    (
        x86.X86_INS_RDTSC,
        x86.X86_INS_RDTSCP,
        x86.X86_INS_XGETBV,
        x86.X86_INS_RDRAND,
        x86.X86_INS_RDSEED,
    )
)

#: Instruction ids that `decide` must look at (privileged ones capstone misses,
#: sysenter, the fixed-value ones). The C core (record/core/native_capstone.py)
#: decides an instruction NORMAL itself only when its id is none of these and it
#: is in no privilege group, no x87 or VEX/EVEX/XOP instruction and has no 16-byte
#: memory operand (but for emulator_gaps.UNALIGNED_OK's): everything else it asks
#: `decide` about, as before.
IDS_DECIDED_IN_PYTHON = frozenset((*_MISSED_BY_CAPSTONE, x86.X86_INS_SYSENTER, *_FIXED_VALUE_IDS))


def _is_privileged(instruction_id: int, groups: list[int]) -> bool:
    if instruction_id in _ALLOWED_IN_USER_MODE:
        return False
    return (
        instruction_id in _MISSED_BY_CAPSTONE
        or instruction_id == x86.X86_INS_SYSENTER
        or x86.X86_GRP_PRIVILEGE in groups
    )


def _decode(code: bytes, address: int) -> Any:
    try:
        return next(_cs.disasm(code, address, 1), None)
    except CsError:
        return None


def privileged_instructions(code: bytes, base: int) -> dict[int, str]:
    """Address -> `mnemonic operands` of every privileged instruction that could
    start in `code`, at any offset (a jump into the middle of an instruction
    included): what `Decisions` would find if each offset ran."""
    found: dict[int, str] = {}
    for start in range(len(code)):
        instruction = _decode(code[start : start + 15], base + start)
        if instruction is not None and _is_privileged(instruction.id, instruction.groups):
            found[base + start] = f"{instruction.mnemonic} {instruction.op_str}".strip()
    return found


def fault_detail(address: int, text: str) -> str:
    if text == "sysenter":
        return _SYSENTER_FAULT.format(address=address)
    return (
        f"{GP_FAULT} at {address:#x}: {text} is a privileged instruction "
        "and the program runs in user mode"
    )


class Decisions:
    """Address -> NORMAL, PRIVILEGED, FIXED_VALUE, UNSUPPORTED or ALIGN_CHECK,
    decided at first execution.

    `kinds` is the cache the pure-Python hooks read; the C core keeps its own
    copy of the same answers (it asks `decide` on a miss). `forget` drops the
    decisions in a range of memory that was written, remapped or reprotected.
    """

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.kinds: dict[int, int] = {}
        #: Fault details of the privileged instructions, fixed-value instructions (capstone).
        self.privileged: dict[int, str] = {}
        self.fixed: dict[int, Any] = {}
        #: Why an unsupported instruction stops the run; how to find an operand's address.
        self.unsupported: dict[int, str] = {}
        self.aligned: dict[int, MustBeAligned] = {}
        #: Page -> decided addresses in it; `watched`: those pages (a write there forgets them).
        self._pages: dict[int, list[int]] = {}
        self.watched: set[int] = set()
        #: Pages written, remapped or reprotected since loading (`forget`).
        self.rewritten: set[int] = set()

    def copy_to(self, other: Decisions) -> None:
        """Give `other` (another machine's, in the same memory: `Machine.fork`) every
        decision made here, and which pages are watched and rewritten."""
        other.kinds = dict(self.kinds)
        other.privileged = dict(self.privileged)
        other.fixed = dict(self.fixed)
        other.unsupported = dict(self.unsupported)
        other.aligned = dict(self.aligned)
        other._pages = {page: list(addresses) for page, addresses in self._pages.items()}
        other.watched = set(self.watched)
        other.rewritten = set(self.rewritten)

    def decide(self, address: int) -> int:
        """The kind of the instruction at `address`, with `WATCH`: code may be
        written over (a JIT), so a write into its page decides it again."""
        kind, detail = _decided(address, self._bytes_at(address))
        if kind == PRIVILEGED:
            self.privileged[address] = detail
        elif kind == FIXED_VALUE:
            self.fixed[address] = detail
        elif kind == UNSUPPORTED:
            self.unsupported[address] = detail
        elif kind == ALIGN_CHECK:
            self.aligned[address] = detail
        self.kinds[address] = kind
        page = address // PAGE
        self._pages.setdefault(page, []).append(address)
        self.watched.add(page)
        return kind | WATCH

    def forget(self, address: int, size: int) -> None:
        """Code in `address ..< address + size` may have changed: decide it again.

        Its pages are also remembered in `rewritten`: the instructions run there
        from now on may not be the program's bytes as loaded (Machine.run_code)."""
        for page in range(address // PAGE, (address + max(size, 1) - 1) // PAGE + 1):
            for decided in self._pages.pop(page, ()):
                self.kinds.pop(decided, None)
            self.watched.discard(page)
            self.rewritten.add(page)

    def code_at(self, address: int) -> bytes:
        """Up to 15 bytes of code at `address`, as memory holds them now."""
        return self._bytes_at(address)

    def _bytes_at(self, address: int) -> bytes:
        try:
            return bytes(self.uc.mem_read(address, 15))
        except UcError:  # the instruction ends close to unmapped memory
            return bytes(self.uc.mem_read(address, -address % PAGE or PAGE))


@functools.lru_cache(maxsize=1 << 16)
def _decided(address: int, code: bytes) -> tuple[int, Any]:
    """(kind, what the hook needs) of the instruction in `code` at `address`: a
    function of the two only, so every machine of a run (the start-up, discovery
    and recording passes run the same code) decodes each instruction once."""
    if not _may_matter(code):
        return NORMAL, None
    instruction = _decode(code, address)
    if instruction is None:
        return NORMAL, None  # unicorn raises its own invalid-instruction fault
    if _is_privileged(instruction.id, instruction.groups):
        text = f"{instruction.mnemonic} {instruction.op_str}".strip()
        return PRIVILEGED, fault_detail(address, text)
    if instruction.id in _FIXED_VALUE_IDS:
        # The CPU model reads the Intel spelling (`rdrand`, not AT&T's `rdrandq`).
        return FIXED_VALUE, next(_cs_intel.disasm(code, address, 1))
    gap = gap_of(instruction)
    if isinstance(gap, Unsupported):
        return UNSUPPORTED, f"at {address:#x}: {gap.detail}"
    if isinstance(gap, MustBeAligned):
        return ALIGN_CHECK, gap
    return NORMAL, None


def _may_matter(code: bytes) -> bool:
    """Whether the opcode after the prefixes could start a privileged,
    fixed-value or emulator-gap instruction (most instructions are ruled out without capstone).
    `_core.c` makes the same test before it calls `Decisions.decide`."""
    for byte in code:
        if byte not in _PREFIXES:
            return byte in _OPCODE_STARTS
    return True
