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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from ..errors import BadInput
from ..trace.format import SourceLine

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
        self._rows: dict[tuple[int, int], SourceLine] = {}
        self._whole: tuple[list[int], list[SourceLine]] | None = None
        self._dwarf_info: Any = None
        self._section = b""
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
        best: tuple[int, bool, int, int] | None = None
        for unit in units:
            addrs, values, _files = self._unit_rows(unit)
            k = bisect.bisect_right(addrs, addr) - 1
            if k >= 0:
                # Where units share an address, the whole table keeps the later
                # unit's real row, and a sequence's end only where no row is.
                rank = (addrs[k], values[k][1] > 0, unit, k)
                if best is None or rank[:3] > best[:3]:
                    best = rank
        if best is None:
            # A range with no row at its start: the index does not match the
            # line programs, so ask the whole table.
            return _nearest_in(self._all(), addr)
        return self._row(best[2], best[3])

    def _row(self, unit: int, k: int) -> SourceLine:
        row = self._rows.get((unit, k))
        if row is None:
            addrs, values, files = self._decoded[unit]
            file, line = values[k]
            row = SourceLine(addrs[k], files.get(file, "?") if line > 0 else "", line)
            self._rows[unit, k] = row
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
                        merged[addr] = self._row(unit, k)
            rows = [merged[a] for a in sorted(merged)]
            self._whole = ([r.addr for r in rows], rows)
        return self._whole

    # --- decoding ----------------------------------------------------------------------

    def _unit_rows(self, unit: int) -> _Rows:
        found = self._decoded.get(unit)
        if found is None:
            found = self._decoded[unit] = self._decode_unit(unit)
        return found

    def _decode_unit(self, unit: int) -> _Rows:
        try:
            dwarf = self._dwarf
            program = dwarf.line_program_for_CU(dwarf.get_CU_at(unit))
            if program is None:
                return [], [], {}
            header = unit_of(program)
            rows = decode(self._section, header, self.load_base, self._addr_size)
        except (BadInput, MemoryError):
            raise
        except Exception as exc:
            # pyelftools raises many types on a corrupt header; as for the whole table.
            raise BadInput(f"{self.path}: malformed DWARF line table: {exc}") from None
        addrs = sorted(rows)
        return addrs, [rows[a] for a in addrs], header.files


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
