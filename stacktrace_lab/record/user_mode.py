"""A user-mode CPU: privileged instructions raise #GP, as at CPL 3 on real hardware.

Unicorn runs `cli`, `wrmsr`, `in`/`out`, `mov %rax, %cr0` ... silently, as
if the program were the kernel (docs/pitfalls.md), though the machine is
documented as user mode. Here every address at which a privileged
instruction starts is found once, before the run, and gets a code hook of its
own that stops the run with a `fault` naming the instruction, before it
executes. No per-step cost: instructions elsewhere are not looked at again.

Which instructions: capstone's `X86_GRP_PRIVILEGE` group, plus those it
leaves out (`rdmsr`, `in`, `out`, `ins*`, `outs*`, `clts`), less those a
user program may run: `hlt` stays the documented `halted` stop reason (a
scenario's way to end), `iretq` to the same privilege level is allowed,
`str` reads a selector without privilege, and `rdtsc`/`rdtscp` run in user
mode on Linux (record/cpu.py gives them fixed values). The code is read-only, so the
instructions found before the run are the ones that can execute; every start
offset is decoded, so a jump into the middle of an instruction is covered too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs, CsError
from capstone import x86_const as x86
from unicorn import UC_HOOK_CODE
from unicorn.unicorn_py3.unicorn import Uc

GP_FAULT = "general protection fault (#GP)"
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
#: Bytes a privileged instruction's opcode starts with (one-byte opcodes, and 0x0f
#: for two-byte ones): only offsets reaching one of them through prefixes are decoded.
_OPCODE_STARTS = {0xFA, 0xFB, 0x0F, *range(0xE4, 0xE8), *range(0xEC, 0xF0), *range(0x6C, 0x70)}
_PREFIXES = {0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, *range(0x40, 0x50)}
_MAX_PREFIXES = 5

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True
_cs.syntax = CS_OPT_SYNTAX_ATT  # as the trace's `insn` column spells instructions


def _is_privileged(instruction_id: int, groups: list[int]) -> bool:
    if instruction_id in _ALLOWED_IN_USER_MODE:
        return False
    return (
        instruction_id in _MISSED_BY_CAPSTONE
        or instruction_id == x86.X86_INS_SYSENTER
        or x86.X86_GRP_PRIVILEGE in groups
    )


def privileged_instructions(code: bytes, base: int) -> dict[int, str]:
    """Address -> `mnemonic operands` of every privileged instruction that may run in `code`."""
    found: dict[int, str] = {}
    starts: set[int] = set()
    for offset, byte in enumerate(code):
        if byte not in _OPCODE_STARTS:
            continue
        # The instruction may start at this byte or at any prefix run before it.
        start = offset
        starts.add(start)
        while start > 0 and offset - start < _MAX_PREFIXES and code[start - 1] in _PREFIXES:
            start -= 1
            starts.add(start)
    for start in sorted(starts):
        try:
            instruction = next(_cs.disasm(code[start : start + 15], base + start, 1), None)
        except CsError:
            instruction = None
        if instruction is not None and _is_privileged(instruction.id, instruction.groups):
            found[base + start] = f"{instruction.mnemonic} {instruction.op_str}".strip()
    return found


def hook_privileged(uc: Uc, found: dict[int, str], fault: Callable[[str], None]) -> list[int]:
    """Hook every privileged instruction `found` (`privileged_instructions`):
    `fault(detail)` runs before it would execute. Returns the hooks' handles.

    `fault` must stop the emulation (`uc.emu_stop()`); when recording, the hooks
    are added after the recorder's own code hook, so the instruction's row is
    already counted.
    """
    handles = []
    for address, text in found.items():
        detail = (
            _SYSENTER_FAULT.format(address=address)
            if text == "sysenter"
            else f"{GP_FAULT} at {address:#x}: {text} is a privileged instruction "
            "and the program runs in user mode"
        )
        handle = uc.hook_add(UC_HOOK_CODE, _on_privileged(detail, fault), None, address, address)
        handles.append(int(handle))
    return handles


def _on_privileged(detail: str, fault: Callable[[str], None]) -> Callable[..., None]:
    def hook(_uc: Uc, _address: int, _size: int, _user: Any) -> None:
        fault(detail)

    return hook
