"""DWARF line tables, decoded one compile unit at a time, only where code ran.

A program's full line table is tens of thousands of rows, and its libraries'
more: Rust's std is one compile unit of 120,000 rows, glibc's separate debug
file 2,000 units. pyelftools decodes them at about 100,000 rows a second,
seconds per run. The trace needs only the rows that answer for an executed
address, so `LineIndex` reads `.debug_aranges` (which compile unit covers
which addresses) once, and decodes a unit's line program the first time an
address in it is asked about, with a small decoder of its own (about ten
times pyelftools' speed; pyelftools still reads the headers and file names).

The answers are the whole table's: `nearest(addr)` is the row the full,
merged table (`all_rows`, what `elf.line_table` returns) has at or below
`addr`; tests/test_dynamic.py compares the two on every instruction of the
example programs and of glibc's debug file.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from elftools.elf.elffile import ELFFile

from ...errors import BadInput
from ...trace.format import SourceLine

_T = TypeVar("_T")

# Standard opcodes (DWARF 5, 6.2.5.2) and extended ones (6.2.5.3).
LNS_COPY, LNS_ADVANCE_PC, LNS_ADVANCE_LINE, LNS_SET_FILE = 1, 2, 3, 4
LNS_CONST_ADD_PC, LNS_FIXED_ADVANCE_PC = 8, 9
LNE_END_SEQUENCE, LNE_SET_ADDRESS, LNE_DEFINE_FILE = 1, 2, 3


@dataclass(frozen=True)
class _Unit:
    """One compile unit's line program: where it is in .debug_line and how to read it."""

    start: int
    end: int
    min_length: int
    line_base: int
    line_range: int
    opcode_base: int
    opcode_lengths: tuple[int, ...]
    files: dict[int, str]


#: One unit's rows: sorted addresses, and (file number, line) at each (line 0: a
#: sequence's end), with the unit's file names.
_Rows = tuple[list[int], list[tuple[int, int]], dict[int, str]]


#: The sections a unit's line program header and rows are read from (`_header`, `decode`).
_UNIT_SECTIONS = (".debug_info", ".debug_abbrev", ".debug_line", ".debug_line_str", ".debug_str")


class LineIndex:
    """One ELF file's line table, relocated to `load_base`, decoded lazily by unit.

    Units are named by their offset in .debug_info; the whole table merges them
    in that order (a later unit's row wins where two share an address)."""

    def __init__(self, path: Path, load_base: int) -> None:
        self.path = path
        self.load_base = load_base
        #: (low, high, unit) from .debug_aranges, by low address; None: no aranges.
        self._ranges: list[tuple[int, int, int]] | None = None
        #: The highest `high` of the ranges up to each index (covering lookups stop early).
        self._reach: list[int] = []
        self._lows: list[int] = []
        self._decoded: dict[int, _Rows] = {}
        self._rows: dict[tuple[int, int, int], SourceLine] = {}
        #: Large units: their sequences (first address, start, end in .debug_line),
        #: and the rows of those decoded, by (unit, sequence).
        self._sequences: dict[int, list[tuple[int, int, int]]] = {}
        self._pieces: dict[tuple[int, int], _Rows] = {}
        self._headers: dict[int, _Unit | None] = {}
        self._whole: tuple[list[int], list[SourceLine]] | None = None
        self._dwarf_info: Any = None
        self._section = b""
        #: Debug sections by name, read (and decompressed) the first time one is needed.
        self._sections: dict[str, bytes] = {}
        with path.open("rb") as f:
            elf = ELFFile(f)
            self.has_lines = bool(elf.get_section_by_name(".debug_line"))
            self._addr_size = 8 if elf.elfclass == 64 else 4
            aranges = elf.get_section_by_name(".debug_aranges")
            if self.has_lines and aranges is not None:
                self._read_aranges(aranges.data())

    @property
    def _dwarf(self) -> Any:
        """pyelftools' DWARF reader, opened the first time a unit is decoded: it reads
        every debug section (libc's .debug_info is 6 MiB), which --from main often
        never needs for the loader."""
        if self._dwarf_info is None:
            with self.path.open("rb") as f:
                # Relocations apply to object files only; a program's or a debug
                # file's DWARF is final (and looking for them costs 30 ms on libc's).
                self._dwarf_info = ELFFile(f).get_dwarf_info(relocate_dwarf_sections=False)
                line_section = self._dwarf_info.debug_line_sec
                if line_section is not None:
                    line_section.stream.seek(0)
                    self._section = line_section.stream.read()
        return self._dwarf_info

    # --- which unit covers an address -----------------------------------------------

    def _read_aranges(self, data: bytes) -> None:
        """.debug_aranges (DWARF 5, 6.1.2): sets of (address, length) per unit."""
        base = self.load_base
        ranges: list[tuple[int, int, int]] = []
        pos = 0
        while pos + 4 <= len(data):
            length = int.from_bytes(data[pos : pos + 4], "little")
            offset_size = 4
            if length == 0xFFFFFFFF:  # 64-bit DWARF
                length = int.from_bytes(data[pos + 4 : pos + 12], "little")
                offset_size, pos = 8, pos + 8
            header = pos + 4
            end = header + length
            if length < 2 + offset_size + 2 or end > len(data):
                raise BadInput(f"{self.path}: malformed .debug_aranges")
            unit = int.from_bytes(data[header + 2 : header + 2 + offset_size], "little")
            addr_size = data[header + 2 + offset_size]
            if addr_size not in (4, 8):
                raise BadInput(f"{self.path}: malformed .debug_aranges")
            # The pairs start at a multiple of twice the address size from the set.
            first = header + 2 + offset_size + 2
            pair = 2 * addr_size
            at = pos + -(-(first - pos) // pair) * pair
            while at + pair <= end:
                low = int.from_bytes(data[at : at + addr_size], "little")
                size = int.from_bytes(data[at + addr_size : at + pair], "little")
                at += pair
                if low == 0 and size == 0:
                    break
                if size > 0:
                    ranges.append((base + low, base + low + size, unit))
            pos = end
        ranges.sort()
        reach, highest = [], 0
        for _low, high, _unit in ranges:
            highest = max(highest, high)
            reach.append(highest)
        self._ranges, self._reach, self._lows = ranges, reach, [r[0] for r in ranges]

    def _covering(self, addr: int) -> tuple[list[int], int | None]:
        """(the units whose ranges hold `addr`, the highest end of a range starting
        at or below it)."""
        assert self._ranges is not None
        i = bisect.bisect_right(self._lows, addr) - 1
        units: list[int] = []
        j = i
        while j >= 0 and self._reach[j] > addr:
            low, high, unit = self._ranges[j]
            if low <= addr < high and unit not in units:
                units.append(unit)
            j -= 1
        return units, (self._reach[i] if i >= 0 else None)

    # --- answers -----------------------------------------------------------------------

    def nearest(self, addr: int) -> SourceLine | None:
        """The whole table's row at or below `addr` (line 0 there: "no line from
        here"), or None when it has none."""
        if not self.has_lines:
            return None
        if self._ranges is None:
            return _nearest_in(self._all(), addr)
        units, gap = self._covering(addr)
        if not units:
            # Outside every unit's ranges: the whole table's row below is the
            # end of the sequence before (line 0), where the last range ends.
            return SourceLine(gap, "", 0) if gap is not None else None
        best: tuple[int, bool, int, tuple[int, int], int] | None = None
        for unit in units:
            piece = self._piece(unit, addr)
            addrs, values, _files = self._rows_of(piece)
            k = bisect.bisect_right(addrs, addr) - 1
            if k >= 0:
                # Where units share an address, the whole table keeps the later
                # unit's real row, and a sequence's end only where no row is.
                rank = (addrs[k], values[k][1] > 0, unit, piece, k)
                if best is None or rank[:3] > best[:3]:
                    best = rank
        if best is None:
            # A range with no row at its start: the index does not match the
            # line programs, so ask the whole table.
            return _nearest_in(self._all(), addr)
        return self._row(best[3], best[4])

    def nearest_many(self, addrs: list[int]) -> list[SourceLine | None]:
        """`nearest` of each address. Those outside every unit's ranges (most of a
        static program's: its C library has no line table) are answered by one search
        of all of them; the others one at a time."""
        if not self.has_lines or self._ranges is None or not self._lows or not addrs:
            return [self.nearest(addr) for addr in addrs]
        wanted = np.array(addrs, dtype=np.uint64)
        found = np.searchsorted(np.array(self._lows, dtype=np.uint64), wanted, side="right") - 1
        reach = np.array(self._reach, dtype=np.uint64)[np.maximum(found, 0)]
        # No range starts at or below it, or every one that does ends at or below it:
        # `_covering` finds no unit (and the row is the sequence end where they end).
        outside = ((found < 0) | (reach <= wanted)).tolist()
        gaps = reach.tolist()
        below = (found < 0).tolist()
        # One row per gap (a frozen dataclass: making one per address was most of the time).
        ends: dict[int, SourceLine] = {}
        return [
            self.nearest(addr)
            if not out
            else None
            if low
            else ends.get(gap) or ends.setdefault(gap, SourceLine(gap, "", 0))
            for addr, out, low, gap in zip(addrs, outside, below, gaps, strict=True)
        ]

    def _rows_of(self, piece: tuple[int, int]) -> _Rows:
        unit, sequence = piece
        return self._unit_rows(unit) if sequence < 0 else self._pieces[piece]

    def _piece(self, unit: int, addr: int) -> tuple[int, int]:
        """Where `addr`'s rows are: (unit, -1) for a unit decoded whole, or (unit,
        sequence) for one sequence of a large unit (Rust's std is 290 KB of line
        program; a run needs a few of its 1,200 sequences)."""
        sequences = self._sequences.get(unit)
        if sequences is None:
            header = self._header_of(unit)
            sequences = []
            if header is not None and header.end - header.start >= SPLIT_BYTES:
                program, line = header, self._section_named(".debug_line")
                sequences = self._decoding(lambda: skim(line, program))
            self._sequences[unit] = sequences
        # The sequence starting last at or below `addr` (sequences do not overlap).
        i = bisect.bisect_right(sequences, (addr - self.load_base, 1 << 64)) - 1
        if i < 0:
            return unit, -1
        if (unit, i) not in self._pieces:
            _first, start, end = sequences[i]
            header = self._header_of(unit)
            assert header is not None
            part = _Unit(start, end, *header_rest(header))
            line = self._section_named(".debug_line")
            rows = self._decoding(lambda: decode(line, part, self.load_base, self._addr_size))
            addrs = sorted(rows)
            self._pieces[unit, i] = (addrs, [rows[a] for a in addrs], part.files)
        return unit, i

    def _row(self, piece: tuple[int, int], k: int) -> SourceLine:
        row = self._rows.get((*piece, k))
        if row is None:
            addrs, values, files = self._rows_of(piece)
            file, line = values[k]
            row = SourceLine(addrs[k], files.get(file, "?") if line > 0 else "", line)
            self._rows[(*piece, k)] = row
        return row

    def all_rows(self) -> tuple[SourceLine, ...]:
        """Every row, merged as the whole table is (each address once)."""
        return tuple(self._all()[1]) if self.has_lines else ()

    def _all(self) -> tuple[list[int], list[SourceLine]]:
        if self._whole is None:
            merged: dict[int, SourceLine] = {}
            for cu in self._dwarf.iter_CUs():
                unit = cu.cu_offset
                addrs, values, _files = self._unit_rows(unit)
                for k, (addr, (_file, line)) in enumerate(zip(addrs, values, strict=True)):
                    if line > 0 or addr not in merged:
                        merged[addr] = self._row((unit, -1), k)
            rows = [merged[a] for a in sorted(merged)]
            self._whole = ([r.addr for r in rows], rows)
        return self._whole

    # --- decoding ----------------------------------------------------------------------

    def _unit_rows(self, unit: int) -> _Rows:
        found = self._decoded.get(unit)
        if found is None:
            found = self._decoded[unit] = self._decode_unit(unit)
        return found

    def _header_of(self, unit: int) -> _Unit | None:
        if unit not in self._headers:
            try:
                self._headers[unit] = self._header(unit)
            except (BadInput, MemoryError):
                raise
            except Exception:
                # A form this reader does not know (or damage): pyelftools decides.
                self._headers[unit] = self._header_by_pyelftools(unit)
        return self._headers[unit]

    def _decoding(self, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except (BadInput, MemoryError):
            raise
        except Exception as exc:
            raise BadInput(f"{self.path}: malformed DWARF line table: {exc}") from None

    def _decode_unit(self, unit: int) -> _Rows:
        header = self._header_of(unit)
        if header is None:
            return [], [], {}
        line = self._section_named(".debug_line")
        rows = self._decoding(lambda: decode(line, header, self.load_base, self._addr_size))
        addrs = sorted(rows)
        return addrs, [rows[a] for a in addrs], header.files

    def _section_named(self, name: str) -> bytes:
        found = self._sections.get(name)
        if found is None:
            # The first unit read needs every one of these: one parse of the ELF file
            # for all (pyelftools parses the section headers again for each file
            # opened and names every section at the first lookup, 5-10 ms a time).
            with self.path.open("rb") as f:
                elf = ELFFile(f)
                for wanted in (name, *_UNIT_SECTIONS):
                    if wanted not in self._sections:
                        section = elf.get_section_by_name(wanted)
                        self._sections[wanted] = bytes(section.data()) if section else b""
            found = self._sections[name]
        return found

    def _header(self, unit: int) -> _Unit | None:
        """The unit's line program header, read directly: its DW_AT_stmt_list from
        the unit's first entry, then the header (pyelftools takes 3 ms a unit)."""
        offset = stmt_list(
            self._section_named(".debug_info"), self._section_named(".debug_abbrev"), unit
        )
        if offset is None:
            return None
        return line_header(
            self._section_named(".debug_line"),
            offset,
            lambda at: _cstring(self._section_named(".debug_line_str"), at),
            lambda at: _cstring(self._section_named(".debug_str"), at),
        )

    def _header_by_pyelftools(self, unit: int) -> _Unit | None:
        try:
            dwarf = self._dwarf
            program = dwarf.line_program_for_CU(dwarf.get_CU_at(unit))
            if program is None:
                return None
            header = unit_of(program)
        except (BadInput, MemoryError):
            raise
        except Exception as exc:
            # pyelftools raises many types on a corrupt header; as for the whole table.
            raise BadInput(f"{self.path}: malformed DWARF line table: {exc}") from None
        if self._section_named(".debug_line") != self._section:
            raise BadInput(f"{self.path}: .debug_line read twice differently")
        return header


def _nearest_in(table: tuple[list[int], list[SourceLine]], addr: int) -> SourceLine | None:
    addrs, rows = table
    k = bisect.bisect_right(addrs, addr) - 1
    return rows[k] if k >= 0 else None


def unit_of(program: Any) -> _Unit:
    header = program.header
    return _Unit(
        start=program.program_start_offset,
        end=program.program_end_offset,
        min_length=header["minimum_instruction_length"],
        line_base=header["line_base"],
        line_range=header["line_range"],
        opcode_base=header["opcode_base"],
        opcode_lengths=tuple(header["standard_opcode_lengths"]),
        files=file_names(program),
    )


#: A sequence's end in `decode`'s rows: no file, line 0.
_END = (0, 0)


def decode(data: bytes, unit: _Unit, load_base: int, addr_size: int) -> dict[int, tuple[int, int]]:
    """One line program's rows: address -> (file number, line). Within it a later
    real row replaces an earlier one at the same address, and a sequence's end
    (line 0) fills only an address no row has, as in the whole table. A file
    the program defines (DW_LNE_define_file) is added to `unit.files`."""
    rows: dict[int, tuple[int, int]] = {}
    opcode_base, line_range, line_base = unit.opcode_base, unit.line_range, unit.line_base
    min_length = unit.min_length
    if line_range == 0:
        raise BadInput("line_range is 0")
    # What each special opcode adds to the address and line, precomputed.
    advance = [0] * 256
    step = [0] * 256
    for op in range(opcode_base, 256):
        adjusted = op - opcode_base
        advance[op] = (adjusted // line_range) * min_length
        step[op] = line_base + adjusted % line_range
    const_add = advance[255] if opcode_base <= 255 else 0
    lengths = unit.opcode_lengths
    address, file, line = 0, 1, 1
    pos, end = unit.start, unit.end
    if end > len(data):
        raise BadInput("a line program runs past .debug_line")
    while pos < end:
        op = data[pos]
        pos += 1
        if op >= opcode_base:
            address += advance[op]
            line += step[op]
            if line > 0:
                rows[load_base + address] = (file, line)
        elif op == 0:
            length, pos = _uleb(data, pos)
            next_pos = pos + length
            if length == 0 or next_pos > end:
                raise BadInput("an extended opcode runs past its line program")
            ex = data[pos]
            if ex == LNE_END_SEQUENCE:
                rows.setdefault(load_base + address, _END)
                address, file, line = 0, 1, 1
            elif ex == LNE_SET_ADDRESS:
                address = int.from_bytes(data[pos + 1 : pos + 1 + addr_size], "little")
            elif ex == LNE_DEFINE_FILE:
                # DWARF 2-4: a file added to the table (a name, then three ULEBs).
                name_end = data.index(b"\0", pos + 1)
                name = data[pos + 1 : name_end].decode("utf-8", "replace")
                unit.files[len(unit.files) + 1] = name
            pos = next_pos
        elif op == LNS_COPY:
            if line > 0:
                rows[load_base + address] = (file, line)
        elif op == LNS_ADVANCE_PC:
            value, pos = _uleb(data, pos)
            address += value * min_length
        elif op == LNS_ADVANCE_LINE:
            value, pos = _sleb(data, pos)
            line += value
        elif op == LNS_SET_FILE:
            file, pos = _uleb(data, pos)
        elif op == LNS_CONST_ADD_PC:
            address += const_add
        elif op == LNS_FIXED_ADVANCE_PC:
            address += data[pos] | data[pos + 1] << 8
            pos += 2
        else:
            # set_column, negate_stmt, basic_block, prologue/epilogue, isa and any
            # newer opcode: skip its ULEB operands, as the header counts them.
            for _ in range(lengths[op - 1] if op - 1 < len(lengths) else 0):
                _value, pos = _uleb(data, pos)
    return rows


# --- reading a unit's headers directly (DWARF 2-5) --------------------------------------

DW_AT_STMT_LIST = 0x10
#: Forms of a fixed size: 0 = the offset size (4 or 8), -1 = the address size.
_FIXED_FORMS = {
    0x01: -1, 0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: 0, 0x11: 1, 0x12: 2,
    0x13: 4, 0x14: 8, 0x17: 0, 0x19: 0, 0x1C: 4, 0x1D: 0, 0x1E: 16, 0x1F: 0, 0x20: 8,
    0x21: 0, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3,
    0x2C: 4, 0x1F20: 0, 0x1F21: 0,
}  # fmt: skip
#: Forms whose value is one ULEB128.
_ULEB_FORMS = {0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02}
_BLOCK_FORMS = {0x03: 2, 0x04: 4, 0x0A: 1}  # block2, block4, block1: the length's size


class _Unknown(Exception):
    """A form or layout this reader does not handle (pyelftools is asked instead)."""


def _int(data: bytes, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise _Unknown("past the section's end")
    return int.from_bytes(data[pos : pos + size], "little")


def _skip_form(data: bytes, pos: int, form: int, addr_size: int, offset_size: int) -> int:
    size = _FIXED_FORMS.get(form)
    if size is not None:
        return pos + (offset_size if size == 0 else addr_size if size < 0 else size)
    if form in _ULEB_FORMS or form == 0x0D:  # sdata skips as a ULEB does
        return _uleb(data, pos)[1]
    if form in _BLOCK_FORMS:
        length = _int(data, pos, _BLOCK_FORMS[form])
        return pos + _BLOCK_FORMS[form] + length
    if form in (0x09, 0x18):  # block, exprloc: a ULEB length
        length, pos = _uleb(data, pos)
        return pos + length
    if form == 0x08:  # string
        return data.index(b"\0", pos) + 1
    if form == 0x10:  # ref_addr: the address size in DWARF 2, else the offset size
        return pos + offset_size
    if form == 0x16:  # indirect: the form comes first
        form, pos = _uleb(data, pos)
        return _skip_form(data, pos, form, addr_size, offset_size)
    raise _Unknown(f"form {form:#x}")


def stmt_list(info: bytes, abbrev: bytes, unit: int) -> int | None:
    """DW_AT_stmt_list of the unit at `unit` in .debug_info (where its line program
    is in .debug_line), or None when the unit has none."""
    length = _int(info, unit, 4)
    offset_size, pos = 4, unit + 4
    if length == 0xFFFFFFFF:
        length, offset_size, pos = _int(info, unit + 4, 8), 8, unit + 12
    version = _int(info, pos, 2)
    pos += 2
    if version >= 5:
        unit_type, addr_size = info[pos], info[pos + 1]
        abbrev_at = _int(info, pos + 2, offset_size)
        pos += 2 + offset_size
        pos += {4: 8, 5: 8, 2: 8 + offset_size, 6: 8 + offset_size}.get(unit_type, 0)
    elif version >= 2:
        abbrev_at = _int(info, pos, offset_size)
        addr_size = info[pos + offset_size]
        pos += offset_size + 1
    else:
        raise _Unknown(f"DWARF version {version}")
    code, pos = _uleb(info, pos)
    if code == 0:
        return None
    specs = _abbreviation(abbrev, abbrev_at, code)
    for attribute, form in specs:
        if attribute == DW_AT_STMT_LIST:
            if form in (0x17, 0x06):  # sec_offset; data4 (DWARF 2-3)
                return _int(info, pos, offset_size if form == 0x17 else 4)
            if form == 0x07:
                return _int(info, pos, 8)
            raise _Unknown(f"stmt_list as form {form:#x}")
        pos = _skip_form(info, pos, form, addr_size, offset_size)
    return None


def _abbreviation(abbrev: bytes, pos: int, code: int) -> list[tuple[int, int]]:
    """The (attribute, form) pairs of abbreviation `code` in the table at `pos`."""
    while True:
        found, pos = _uleb(abbrev, pos)
        if found == 0:
            raise _Unknown(f"no abbreviation {code}")
        _tag, pos = _uleb(abbrev, pos)
        pos += 1  # has children
        specs: list[tuple[int, int]] = []
        while True:
            attribute, pos = _uleb(abbrev, pos)
            form, pos = _uleb(abbrev, pos)
            if attribute == 0 and form == 0:
                break
            if form == 0x21:  # implicit_const: its value is here, not in the entry
                _value, pos = _sleb(abbrev, pos)
            specs.append((attribute, form))
        if found == code:
            return specs


def line_header(
    line: bytes,
    offset: int,
    line_str: Callable[[int], str],
    debug_str: Callable[[int], str],
) -> _Unit:
    """The line program header at `offset` in .debug_line (DWARF 2-5, 6.2.4), with
    its file names as `file_names` gives them."""
    length = _int(line, offset, 4)
    offset_size, pos = 4, offset + 4
    if length == 0xFFFFFFFF:
        length, offset_size, pos = _int(line, offset + 4, 8), 8, offset + 12
    end = pos + length
    version = _int(line, pos, 2)
    pos += 2
    if version >= 5:
        pos += 2  # address_size, segment_selector_size
    header_length = _int(line, pos, offset_size)
    pos += offset_size
    start = pos + header_length
    min_length = line[pos]
    pos += 2 if version >= 4 else 1  # maximum_operations_per_instruction from DWARF 4
    pos += 1  # default_is_stmt
    line_base = line[pos] - 256 if line[pos] >= 128 else line[pos]
    line_range, opcode_base = line[pos + 1], line[pos + 2]
    pos += 3
    lengths = tuple(line[pos : pos + opcode_base - 1])
    pos += opcode_base - 1
    names: dict[int, str] = {}
    if version < 5:
        dirs: list[str] = []
        while line[pos] != 0:
            text_end = line.index(b"\0", pos)
            dirs.append(line[pos:text_end].decode("utf-8", "replace"))
            pos = text_end + 1
        pos += 1
        number = 1
        while line[pos] != 0:
            text_end = line.index(b"\0", pos)
            name = line[pos:text_end].decode("utf-8", "replace")
            dir_index, pos = _uleb(line, text_end + 1)
            _mtime, pos = _uleb(line, pos)
            _size, pos = _uleb(line, pos)
            directory = dirs[dir_index - 1] if 0 < dir_index <= len(dirs) else ""
            names[number] = _joined(directory, name)
            number += 1
    else:
        strings = {0x08: None, 0x1F: line_str, 0x0E: debug_str}

        def entries(pos: int) -> tuple[list[dict[int, object]], int]:
            count = line[pos]
            pos += 1
            formats = []
            for _ in range(count):
                kind, pos = _uleb(line, pos)
                form, pos = _uleb(line, pos)
                formats.append((kind, form))
            total, pos = _uleb(line, pos)
            found = []
            for _ in range(total):
                values: dict[int, object] = {}
                for kind, form in formats:
                    if form in strings:
                        reader = strings[form]
                        if reader is None:
                            text_end = line.index(b"\0", pos)
                            values[kind] = line[pos:text_end].decode("utf-8", "replace")
                            pos = text_end + 1
                        else:
                            values[kind] = reader(_int(line, pos, offset_size))
                            pos += offset_size
                    elif form in (0x0F, 0x0B, 0x05, 0x06, 0x07):
                        if form == 0x0F:
                            values[kind], pos = _uleb(line, pos)
                        else:
                            size = {0x0B: 1, 0x05: 2, 0x06: 4, 0x07: 8}[form]
                            values[kind], pos = _int(line, pos, size), pos + size
                    else:
                        pos = _skip_form(line, pos, form, 8, offset_size)
                        if kind in (1, 2):  # a path or directory index in a form not read
                            raise _Unknown(f"a file entry's form {form:#x}")
                found.append(values)
            return found, pos

        dir_entries, pos = entries(pos)
        dirs = [str(d.get(1, "")) for d in dir_entries]
        file_entries, pos = entries(pos)
        for number, entry in enumerate(file_entries):
            dir_index = int(entry.get(2, 0))  # type: ignore[call-overload]
            directory = dirs[dir_index] if 0 < dir_index < len(dirs) else ""
            names[number] = _joined(directory, str(entry.get(1, "")))
    if line_range == 0 or start > end or end > len(line):
        raise _Unknown("an implausible header")
    return _Unit(start, end, min_length, line_base, line_range, opcode_base, lengths, names)


def _joined(directory: str, name: str) -> str:
    return name if name.startswith("/") or not directory else f"{directory.rstrip('/')}/{name}"


def _cstring(data: bytes, at: int) -> str:
    end = data.index(b"\0", at)
    return data[at:end].decode("utf-8", "replace")


#: A unit whose line program is larger than this is decoded a sequence at a time.
SPLIT_BYTES = 32 << 10


def header_rest(unit: _Unit) -> tuple[int, int, int, int, tuple[int, ...], dict[int, str]]:
    """A unit's header fields after its start and end."""
    return (
        unit.min_length, unit.line_base, unit.line_range, unit.opcode_base,
        unit.opcode_lengths, unit.files,
    )  # fmt: skip


def skim(data: bytes, unit: _Unit) -> list[tuple[int, int, int]]:
    """A line program's sequences, by first address: (the address its first
    DW_LNE_set_address gives, where it starts, where it ends), found by stepping
    over the opcodes without making rows (a third of `decode`'s time). A
    sequence with a row before its DW_LNE_set_address, or a program that does
    not end a sequence, gives []: the unit is then decoded whole."""
    sequences: list[tuple[int, int, int]] = []
    opcode_base, lengths = unit.opcode_base, unit.opcode_lengths
    pos, end = unit.start, unit.end
    start, first = pos, -1
    skip = _opcode_run(opcode_base, lengths) if opcode_base >= 1 else None
    while pos < end:
        if first >= 0 and skip is not None:
            # Inside a sequence, every opcode but an extended one is stepped
            # over without a look: the whole run of them at once, in C.
            run = skip(data, pos, end)
            assert run is not None  # a run of none matches
            pos = run.end()
            if pos >= end:
                break
        op = data[pos]
        pos += 1
        if op >= opcode_base:
            if first < 0:
                return []
            continue
        if op == 0:
            length, pos = _uleb(data, pos)
            if length == 0 or pos + length > end:
                raise BadInput("an extended opcode runs past its line program")
            ex = data[pos]
            if ex == LNE_END_SEQUENCE:
                if first < 0:
                    return []
                sequences.append((first, start, pos + length))
                start, first = pos + length, -1
            elif ex == LNE_SET_ADDRESS and first < 0:
                first = int.from_bytes(data[pos + 1 : pos + 9], "little")
            pos += length
        elif op == LNS_FIXED_ADVANCE_PC:
            pos += 2
        elif first < 0 and op in (LNS_COPY, LNS_ADVANCE_PC, LNS_CONST_ADD_PC):
            return []
        else:
            for _ in range(lengths[op - 1] if op - 1 < len(lengths) else 0):
                while data[pos] & 0x80:
                    pos += 1
                pos += 1
    if start < end:
        return []
    sequences.sort()
    return sequences


@functools.lru_cache(maxsize=16)
def _opcode_run(
    opcode_base: int, lengths: tuple[int, ...]
) -> Callable[[bytes, int, int], re.Match[bytes] | None]:
    """A matcher of the longest run of opcodes `skim` steps over inside a sequence
    (all but extended ones, opcode 0), by the same rules as its loop: a special
    opcode is one byte, DW_LNS_fixed_advance_pc two more, any other standard
    opcode its header's count of LEB128 operands. An opcode cut short by the
    end is left for the loop (which reads it as before)."""
    leb = rb"[\x80-\xff]*[\x00-\x7f]"
    by_operands: dict[bytes, list[int]] = {}
    for op in range(1, min(opcode_base, 256)):
        if op == LNS_FIXED_ADVANCE_PC:
            operands = rb"[\x00-\xff]{2}"
        else:
            operands = leb * (lengths[op - 1] if op - 1 < len(lengths) else 0)
        by_operands.setdefault(operands, []).append(op)
    if opcode_base < 256:
        by_operands.setdefault(b"", []).extend(range(opcode_base, 256))
    choices = [
        b"[" + b"".join(re.escape(bytes([op])) for op in ops) + b"]" + operands
        for operands, ops in by_operands.items()
    ]
    # Each choice starts with different opcode bytes: the run never backtracks.
    return re.compile(b"(?:" + b"|".join(choices) + b")*", re.DOTALL).match


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                value -= 1 << shift
            return value, pos


def file_names(program: Any) -> dict[int, str]:
    """File number -> name, for DWARF 4 (numbered from 1) and 5 (from 0)."""
    header = program.header
    version = header["version"]
    dirs = [_text(d) for d in header["include_directory"]]
    names: dict[int, str] = {}
    for i, entry in enumerate(header["file_entry"]):
        number = i if version >= 5 else i + 1
        name = _text(entry.name)
        dir_index = entry.dir_index
        if version < 5:
            directory = dirs[dir_index - 1] if dir_index > 0 else ""
        else:
            directory = dirs[dir_index] if 0 < dir_index < len(dirs) else ""
        if name.startswith("/") or not directory:
            names[number] = name
        else:
            names[number] = f"{directory.rstrip('/')}/{name}"
    return names


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@functools.lru_cache(maxsize=16)
def line_index(path: Path, _sha256: str, load_base: int) -> LineIndex:
    """The index of one file at one load address, once per process (the hash keys
    a file that changed)."""
    try:
        return LineIndex(path, load_base)
    except (BadInput, MemoryError, OSError):
        raise
    except Exception as exc:
        # As for the headers (load_elf): pyelftools raises many types on corrupt DWARF.
        raise BadInput(f"{path}: malformed DWARF: {exc}") from None


class ObjectLines:
    """The line tables of a program and its libraries, each at its load address, as
    one `LineSource`: what `merged` rows of all of them would answer.

    A library's table that turns out damaged names nothing (the run is
    unaffected); the program's own raises BadInput, as reading it whole did.
    """

    def __init__(self, program: LineIndex | None, libraries: list[LineIndex]) -> None:
        indexes = [i for i in [program, *libraries] if i is not None]
        self._by_base = sorted(indexes, key=lambda i: i.load_base)
        self._bases = [i.load_base for i in self._by_base]
        self._program = program
        self._damaged: set[int] = set()

    def nearest_many(self, addrs: list[int]) -> list[SourceLine | None]:
        """`nearest` of each address: each object's addresses asked together."""
        by_object: dict[int, list[int]] = {}
        for i, addr in enumerate(addrs):
            by_object.setdefault(bisect.bisect_right(self._bases, addr) - 1, []).append(i)
        found: list[SourceLine | None] = [None] * len(addrs)
        for k, where in by_object.items():
            if k < 0:
                continue
            answers: list[SourceLine | None] | None = None
            if k not in self._damaged:
                try:
                    answers = self._by_base[k].nearest_many([addrs[i] for i in where])
                except BadInput:
                    answers = None  # `nearest` says which (and raises for the program's)
            for n, i in enumerate(where):
                found[i] = (
                    answers[n]
                    if answers is not None and answers[n] is not None
                    # None from this object: the object below may answer (as `nearest`).
                    else self.nearest(addrs[i])
                )
        return found

    def nearest(self, addr: int) -> SourceLine | None:
        # Objects do not overlap and each one's rows lie above its load address:
        # the merged table's row below `addr` is the first found going down.
        k = bisect.bisect_right(self._bases, addr) - 1
        while k >= 0:
            index = self._by_base[k]
            if k not in self._damaged:
                try:
                    found = index.nearest(addr)
                except BadInput:
                    if index is self._program:
                        raise
                    self._damaged.add(k)
                    found = None
                if found is not None:
                    return found
            k -= 1
        return None
