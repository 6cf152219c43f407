"""Small static x86-64 ELF executables built byte by byte, for hostile-input tests.

`program(asm)` assembles AT&T text with keystone (a dependency already) into
one `r-x` segment at 0x400000 and returns the file's bytes; `elf_file` lays
out any program headers the caller gives, including ones no linker would
write (a `p_memsz` of 1 TiB, a segment over the stack, big-endian), so each
test says exactly which field is hostile.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from keystone import KS_ARCH_X86, KS_MODE_64, KS_OPT_SYNTAX_ATT, Ks

BASE = 0x400000
EHDR_SIZE = 64
PHDR_SIZE = 56
PT_LOAD = 1
PF_X, PF_W, PF_R = 1, 2, 4


@dataclass(frozen=True)
class Phdr:
    vaddr: int
    data: bytes
    flags: int = PF_R | PF_X
    memsz: int | None = None  # None: len(data)
    p_type: int = PT_LOAD
    #: Set to override where the data is said to lie in the file.
    offset: int | None = None
    filesz: int | None = None
    align: int = 0x1000


def assemble(asm: str, address: int = BASE) -> bytes:
    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    ks.syntax = KS_OPT_SYNTAX_ATT
    encoding, _ = ks.asm(asm, address)
    return bytes(encoding or b"")


def elf_file(
    phdrs: list[Phdr],
    entry: int,
    *,
    ei_data: int = 1,
    phentsize: int = PHDR_SIZE,
    phoff: int = EHDR_SIZE,
    e_type: int = 2,
) -> bytes:
    """Header, program headers, then each segment's data at an offset congruent to its
    vaddr modulo the page (as the kernel needs), unless the Phdr says otherwise."""
    table_end = EHDR_SIZE + PHDR_SIZE * len(phdrs)
    blobs = bytearray()
    rows = []
    cursor = (table_end + 0xFFF) // 0x1000 * 0x1000
    for p in phdrs:
        offset = cursor + p.vaddr % 0x1000
        start = offset - table_end
        blobs += bytes(start - len(blobs)) + p.data
        cursor = (offset + len(p.data) + 0xFFF) // 0x1000 * 0x1000
        rows.append(
            struct.pack(
                "<IIQQQQQQ",
                p.p_type,
                p.flags,
                p.offset if p.offset is not None else offset,
                p.vaddr,
                p.vaddr,
                p.filesz if p.filesz is not None else len(p.data),
                p.memsz if p.memsz is not None else len(p.data),
                p.align,
            )
        )
    ident = b"\x7fELF" + bytes([2, ei_data, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        e_type,
        62,  # EM_X86_64
        1,
        entry,
        phoff,
        0,  # no section headers
        0,
        EHDR_SIZE,
        phentsize,
        len(phdrs),
        0,
        0,
        0,
    )
    return header + b"".join(rows) + bytes(blobs)


def program(asm: str, *extra: Phdr) -> bytes:
    """`asm` as the code segment at BASE (entry at its first byte), plus `extra` segments.

    Immediates in hex: keystone's AT&T mode reads `$60` as 0x60."""
    code = assemble(asm, BASE)
    return elf_file([Phdr(BASE, code), *extra], BASE)


EXIT_0 = """
    movl $0x3c, %eax
    xorl %edi, %edi
    syscall
"""
