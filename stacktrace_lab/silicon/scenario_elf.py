"""A scenario's machine as a static ELF: the same bytes at the same addresses as in the emulator.

The recorder's machine (docs/machine.md) becomes an executable the kernel can
load: one PT_LOAD per region, at its page-aligned address and size with the
same permissions, nothing mapped in between (the guard pages stay guard
pages). The program's code is loaded at `CODE_BASE` as assembled; declared
regions are zero-filled like the emulator's.

The kernel starts a process at the ELF entry with its own stack, so the entry
is a start stub at `STUB_BASE`, far from everything the scenario maps. It
puts the machine in the recorder's initial state and jumps to the scenario's
entry: the sentinel return address in the top slot of the first stack, rsp
pointing at it, every other register as the recorder sets it, rflags 0x202
(user mode cannot clear IF: the `interrupt-flag` normalisation). The stub
changes flags only with its `popfq`, before loading the registers with `mov`,
which leaves flags alone.

Native equivalents of the recorder's stops:
- `returned`: the entry function's `ret` pops the sentinel (0xdead0000,
  unmapped): the stepper stops when rip reaches it, before the fetch faults;
- `halted`: `hlt` is privileged, the CPU raises #GP and Linux sends SIGSEGV
  with rip still at the `hlt`;
- `spin`: the same rip with the same registers twice in a row (only a jump to
  itself does that), as in the recorder;
- `exit`: the exit or exit_group system call ends the process;
- `fault`: SIGSEGV, SIGBUS, SIGILL or SIGFPE; when the fetch of the
  instruction itself faulted, that instruction is not a step (it never ran).
"""

from __future__ import annotations

import struct
from pathlib import Path

from ..arch import PAGE, REGISTERS
from ..record.machine.machine import MachineSpec

#: Where the start stub is loaded: below the code, with unmapped pages between.
STUB_BASE = 0x200000
#: rflags the stub loads: IF (bit 9) cannot be cleared from user mode.
STUB_RFLAGS = 0x202

_PF_X, _PF_W, _PF_R = 1, 2, 4
_PT_LOAD, _PT_GNU_STACK = 1, 0x6474E551
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
#: x86-64 register numbers as the instruction encoding uses them.
_REG_NUMBER = {
    name: n
    for n, name in enumerate(
        ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", *(f"r{i}" for i in range(8, 16)))
    )
}


def _movabs(register: str, value: int) -> bytes:
    """`movabs $value, %register` (REX.W B8+r imm64): flags unchanged."""
    n = _REG_NUMBER[register]
    return bytes((0x48 | (n >> 3), 0xB8 + (n & 7))) + struct.pack("<Q", value)


def start_stub(registers: dict[str, int], memory: dict[int, bytes], entry: int) -> bytes:
    """Code that writes `memory` (8-byte words), sets `registers` and jumps to `entry`."""
    code = bytearray()
    for addr, data in sorted(memory.items()):
        for offset in range(0, len(data), 8):
            word = int.from_bytes(data[offset : offset + 8].ljust(8, b"\0"), "little")
            code += _movabs("rax", word) + _movabs("rbx", addr + offset)
            code += b"\x48\x89\x03"  # mov %rax, (%rbx)
    # Flags first: pushfq/popfq need a stack, and a `mov` after them keeps flags.
    rsp = registers.get("rsp", 0)
    code += _movabs("rsp", rsp)
    code += b"\x68" + struct.pack("<I", registers.get("rflags", STUB_RFLAGS) | STUB_RFLAGS)
    code += b"\x9d"  # popfq
    code += b"\x48\xc7\x44\x24\xf8\x00\x00\x00\x00"  # movq $0, -8(%rsp): undo the push
    for name in REGISTERS:
        if name not in ("rip", "rsp", "rflags"):
            code += _movabs(name, registers.get(name, 0))
    jump_from = STUB_BASE + len(code) + 5
    code += b"\xe9" + struct.pack("<i", entry - jump_from)  # jmp entry
    return bytes(code)


def _flags(perms: str) -> int:
    return (
        (_PF_R if "r" in perms else 0)
        | (_PF_W if "w" in perms else 0)
        | (_PF_X if "x" in perms else 0)
    )


def write_machine_elf(path: Path, spec: MachineSpec) -> Path:
    """Write the executable for one machine: its mappings as segments, the stub as entry."""
    stub = start_stub(spec.registers, spec.memory, spec.entry)
    # (vaddr, file bytes, memory size, flags); file data is page-aligned in the file.
    segments: list[tuple[int, bytes, int, int]] = [(STUB_BASE, stub, len(stub), _PF_R | _PF_X)]
    for mapping in spec.mappings:
        if not mapping.size:
            continue  # only bytes for pages mapped by another entry
        pages = bytearray(mapping.size)
        for piece in spec.mappings:  # every piece of data that falls in these pages
            lo = max(piece.data_at, mapping.start)
            hi = min(piece.data_at + len(piece.data), mapping.start + mapping.size)
            if piece.data and lo < hi:
                pages[lo - mapping.start : hi - mapping.start] = piece.data[
                    lo - piece.data_at : hi - piece.data_at
                ]
        data = bytes(pages).rstrip(b"\0")
        segments.append((mapping.start, data, mapping.size, _flags(mapping.perms)))
    headers_size = _EHDR.size + _PHDR.size * (len(segments) + 1)
    offset = (headers_size + PAGE - 1) // PAGE * PAGE
    phdrs = bytearray()
    body = bytearray()
    for vaddr, data, memsz, flags in segments:
        file_offset = offset + len(body) if data else 0
        phdrs += _PHDR.pack(_PT_LOAD, flags, file_offset, vaddr, vaddr, len(data), memsz, PAGE)
        if data:
            body += data + bytes(-len(data) % PAGE)
    phdrs += _PHDR.pack(_PT_GNU_STACK, _PF_R | _PF_W, 0, 0, 0, 0, 0, 16)
    ident = b"\x7fELF" + bytes((2, 1, 1, 0)) + bytes(8)  # 64-bit, little-endian, SysV
    ehdr = _EHDR.pack(
        ident, 2, 62, 1, STUB_BASE, _EHDR.size, 0, 0, _EHDR.size, _PHDR.size,
        len(segments) + 1, 64, 0, 0,
    )  # fmt: skip
    path.write_bytes((ehdr + phdrs).ljust(offset, b"\0") + body)
    path.chmod(0o755)
    return path
