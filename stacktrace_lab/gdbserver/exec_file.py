"""The executable gdb reads for a trace's symbols and source lines, built in memory.

A scenario's trace holds its code bytes, labels and `code.lines`, but no
file gdb could load. This module writes, into a bytes object, the smallest
ELF that gives gdb what `break hello`, `x/i $pc`, `bt`, `list` and the
line-by-line reverse commands need:

- `.text` at the code's address with the code bytes (one `PT_LOAD`);
- `.symtab`: each label as a global function symbol, sized up to the next
  label (or the end of the code), and each stack or data region as an
  object `<region>_base` in an empty section of its own;
- DWARF 4: `.debug_info` with one compile unit (one subprogram per label)
  and `.debug_line` with the trace's line table. The file names are the
  scenario's (`first-switch.toml`), in the directory of the scenario file
  when it can be found (a built-in's is inside the package), so `list` shows
  the source.

The server hands it to gdb over the protocol (`qXfer:exec-file:read` names
it, gdb reads it with `vFile:open`/`vFile:pread`): nothing is written to disk.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from ..trace.format import TraceMetadata

_EM_X86_64 = 62
_SHT_PROGBITS, _SHT_SYMTAB, _SHT_STRTAB = 1, 2, 3
_SHF_ALLOC, _SHF_EXECINSTR = 0x2, 0x4
_SHT_NOBITS, _SHF_WRITE = 8, 0x1
_STB_GLOBAL, _STT_OBJECT, _STT_FUNC = 1, 1, 2
#: Sections before the regions' (null, .text ... .shstrtab).
_FIRST_REGION_SECTION = 8

# DWARF constants (DWARF 4 standard, section 7).
_DW_TAG_compile_unit, _DW_TAG_subprogram = 0x11, 0x2E
_DW_AT_name, _DW_AT_low_pc, _DW_AT_high_pc = 0x03, 0x11, 0x12
_DW_AT_stmt_list, _DW_AT_comp_dir, _DW_AT_producer = 0x10, 0x1B, 0x25
_DW_AT_language, _DW_AT_external = 0x13, 0x3F
_DW_FORM_addr, _DW_FORM_data2, _DW_FORM_string = 0x01, 0x05, 0x08
_DW_FORM_sec_offset, _DW_FORM_flag_present = 0x17, 0x19
_DW_LANG_Mips_Assembler = 0x8001
_DW_LNS_copy, _DW_LNS_advance_line, _DW_LNS_set_file = 0x01, 0x03, 0x04
_DW_LNE_end_sequence, _DW_LNE_set_address = 0x01, 0x02


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _cstr(text: str) -> bytes:
    return text.encode("utf-8", "replace").replace(b"\0", b"?") + b"\0"


def scenario_source_dir(meta: TraceMetadata, cwd: Path) -> Path | None:
    """The directory of the scenario file the trace was recorded from, if it is still
    there unchanged (a built-in: inside the package), for gdb's `list`."""
    program = meta.program
    if program is None or program.kind != "scenario":
        return None
    candidates = [cwd / program.path]
    builtin = Path(__file__).resolve().parent.parent / "scenarios" / f"{program.path}.toml"
    candidates.append(builtin)
    for candidate in candidates:
        try:
            if not candidate.is_file() or candidate.stat().st_size > 16 << 20:
                continue
            digest = hashlib.sha256(candidate.read_bytes()).hexdigest()
        except OSError:
            continue
        if program.sha256 is None or digest == program.sha256:
            return candidate.resolve().parent
    return None


def _functions(meta: TraceMetadata) -> list[tuple[str, int, int]]:
    """(label, start, end) of each label inside the code, by address."""
    code_end = meta.code_base + len(meta.code)
    labels = sorted(
        (addr, name)
        for name, addr in meta.symbols.items()
        if meta.code_base <= addr < code_end and not name.startswith(".")
    )
    out = []
    for i, (addr, name) in enumerate(labels):
        # Several labels at one address: each gets the extent of the next distinct one.
        later = [a for a, _ in labels[i + 1 :] if a > addr]
        end = later[0] if later else code_end
        out.append((name, addr, end))
    return out


def _debug_sections(meta: TraceMetadata, source_dir: Path | None) -> tuple[bytes, bytes, bytes]:
    """(.debug_abbrev, .debug_info, .debug_line)."""
    low, high = meta.code_base, meta.code_base + len(meta.code)
    directory = str(source_dir) if source_dir is not None else "."
    files = sorted({entry.file for entry in meta.lines}) or [f"{meta.scenario.name}.toml"]
    abbrev = (
        _uleb(1) + _uleb(_DW_TAG_compile_unit) + b"\x01"  # has children
        + bytes((_DW_AT_name, _DW_FORM_string, _DW_AT_comp_dir, _DW_FORM_string))
        + bytes((_DW_AT_producer, _DW_FORM_string, _DW_AT_language, _DW_FORM_data2))
        + bytes((_DW_AT_low_pc, _DW_FORM_addr, _DW_AT_high_pc, _DW_FORM_addr))
        + bytes((_DW_AT_stmt_list, _DW_FORM_sec_offset, 0, 0))
        + _uleb(2) + _uleb(_DW_TAG_subprogram) + b"\x00"
        + bytes((_DW_AT_name, _DW_FORM_string, _DW_AT_external, _DW_FORM_flag_present))
        + bytes((_DW_AT_low_pc, _DW_FORM_addr, _DW_AT_high_pc, _DW_FORM_addr, 0, 0))
        + b"\x00"
    )  # fmt: skip
    dies = (
        _uleb(1)
        + _cstr(files[0])
        + _cstr(directory)
        + _cstr("stacktrace-lab gdbserver")
        + struct.pack("<HQQI", _DW_LANG_Mips_Assembler, low, high, 0)
    )
    for name, start, end in _functions(meta):
        dies += _uleb(2) + _cstr(name) + struct.pack("<QQ", start, end)
    dies += b"\x00"  # end of the compile unit's children
    unit = struct.pack("<HIB", 4, 0, 8) + dies
    info = struct.pack("<I", len(unit)) + unit

    header_rest = (
        struct.pack("<BBBbBB", 1, 1, 1, -5, 14, 13)
        + bytes((0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 1))
        + _cstr(directory)
        + b"\x00"
        + b"".join(_cstr(name) + _uleb(1) + _uleb(0) + _uleb(0) for name in files)
        + b"\x00"
    )
    program = bytearray()
    line, file = 1, 1
    for entry in sorted(meta.lines, key=lambda e: e.addr):
        if not low <= entry.addr < high or entry.line <= 0:
            continue
        index = files.index(entry.file) + 1
        if index != file:
            program += bytes((_DW_LNS_set_file,)) + _uleb(index)
            file = index
        program += (
            b"\x00" + _uleb(9) + bytes((_DW_LNE_set_address,)) + struct.pack("<Q", entry.addr)
        )
        if entry.line != line:
            program += bytes((_DW_LNS_advance_line,)) + _sleb(entry.line - line)
            line = entry.line
        program += bytes((_DW_LNS_copy,))
    program += b"\x00" + _uleb(9) + bytes((_DW_LNE_set_address,)) + struct.pack("<Q", high)
    program += b"\x00" + _uleb(1) + bytes((_DW_LNE_end_sequence,))
    after_length = struct.pack("<HI", 4, len(header_rest)) + header_rest + bytes(program)
    line_section = struct.pack("<I", len(after_length)) + after_length
    return abbrev, info, line_section


def scenario_elf(meta: TraceMetadata, source_dir: Path | None = None) -> bytes:
    """An ELF executable with the trace's code, labels and line table."""
    code = meta.code
    functions = _functions(meta)
    strtab = bytearray(b"\0")
    symtab = bytearray(b"\0" * 24)
    for name, start, end in functions:
        offset = len(strtab)
        strtab += _cstr(name)
        info = (_STB_GLOBAL << 4) | _STT_FUNC
        symtab += struct.pack("<IBBHQQ", offset, info, 0, 1, start, end - start)
    # Each stack and data region as an empty (NOBITS) section with a `<name>_base`
    # object, the assembler's own name for it: gdb then shows a stack slot as
    # `<green_base+32>`. The section holds no bytes: memory comes from the server.
    regions = [r for r in meta.regions if r.kind != "code"]
    for i, region in enumerate(regions):
        offset = len(strtab)
        strtab += _cstr(f"{region.name}_base")
        info = (_STB_GLOBAL << 4) | _STT_OBJECT
        section = _FIRST_REGION_SECTION + i
        symtab += struct.pack("<IBBHQQ", offset, info, 0, section, region.base, region.size)
    abbrev, info_section, line_section = _debug_sections(meta, source_dir)

    names = [".text", ".symtab", ".strtab", ".debug_abbrev", ".debug_info", ".debug_line"]
    names.append(".shstrtab")
    names += [f".{region.kind}.{region.name}" for region in regions]
    shstrtab = bytearray(b"\0")
    name_offsets = []
    for name in names:
        name_offsets.append(len(shstrtab))
        shstrtab += _cstr(name)
    bodies = [code, bytes(symtab), bytes(strtab), abbrev, info_section, line_section]
    bodies.append(bytes(shstrtab))

    header_size, phdr_size, shdr_size = 64, 56, 64
    # .text sits at an offset congruent to its address modulo the page size,
    # as a loadable segment must.
    text_offset = header_size + phdr_size
    text_offset += (meta.code_base - text_offset) % 0x1000
    layout = bytearray(text_offset)
    offsets = []
    for body in bodies:
        while len(layout) % 8:
            layout.append(0)
        offsets.append(len(layout))
        layout += body
    while len(layout) % 8:
        layout.append(0)
    section_headers_at = len(layout)

    entry = meta.symbols.get(meta.scenario.entry, meta.initial.get("rip", meta.code_base))
    shnum = len(names) + 1
    elf_header = (
        b"\x7fELF" + bytes((2, 1, 1, 0)) + bytes(8)
        + struct.pack("<HHIQQQIHHHHHH", 2, _EM_X86_64, 1, entry, header_size,
                      section_headers_at, 0, header_size, phdr_size, 1, shdr_size,
                      shnum, _FIRST_REGION_SECTION - 1)
    )  # fmt: skip
    program_header = struct.pack(
        "<IIQQQQQQ", 1, 5, offsets[0], meta.code_base, meta.code_base, len(code), len(code), 0x1000
    )
    layout[0:header_size] = elf_header
    layout[header_size : header_size + phdr_size] = program_header

    section_headers = bytearray(shdr_size)  # the null section
    kinds = [_SHT_PROGBITS, _SHT_SYMTAB, _SHT_STRTAB, _SHT_PROGBITS, _SHT_PROGBITS]
    kinds += [_SHT_PROGBITS, _SHT_STRTAB]
    for i, (name_at, kind, offset, body) in enumerate(
        zip(name_offsets[: len(bodies)], kinds, offsets, bodies, strict=True)
    ):
        flags = _SHF_ALLOC | _SHF_EXECINSTR if i == 0 else 0
        address = meta.code_base if i == 0 else 0
        link = 3 if kind == _SHT_SYMTAB else 0  # .symtab's names are in .strtab (index 3)
        symbol_info = 1 if kind == _SHT_SYMTAB else 0  # first global symbol
        entsize = 24 if kind == _SHT_SYMTAB else 0
        align = 16 if i == 0 else 8 if kind == _SHT_SYMTAB else 1
        section_headers += struct.pack(
            "<IIQQQQIIQQ", name_at, kind, flags, address, offset, len(body),
            link, symbol_info, align, entsize,
        )  # fmt: skip
    for name_at, region in zip(name_offsets[len(bodies) :], regions, strict=True):
        section_headers += struct.pack(
            "<IIQQQQIIQQ", name_at, _SHT_NOBITS, _SHF_ALLOC | _SHF_WRITE, region.base,
            section_headers_at, region.size, 0, 0, 8, 0,
        )  # fmt: skip
    return bytes(layout + section_headers)
