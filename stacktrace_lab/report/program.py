"""The report header's facts about a recorded program: its build and what was recorded.

A scenario is described by its entry and syntax; a compiled program by its
binary, how it was built (the compiler and flags DWARF's `DW_AT_producer`
names, when the binary has debug information), whether it is static,
static-pie or dynamic, and the part of the run the trace holds (`--from`,
`--to`). The binary is read from the path the trace names, only if it is
still there and is still the file that was recorded (its sha256 matches);
otherwise the header says so and shows what the trace alone knows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..trace.format import TraceMetadata

#: Bytes of a binary hashed at most to tell whether it is the one recorded.
MAX_HASHED = 1 << 30


@dataclass(frozen=True)
class ProgramHeader:
    path: str
    name: str
    #: "GNU C17 13.3.0 -mtune=generic -march=x86-64 -g -O1", or None (no DWARF, or unread).
    producer: str | None
    #: "static", "static-pie", "dynamic", or None when the binary could not be read.
    linkage: str | None
    #: "from main (9,658 start-up steps not recorded) to the exit", or "the whole run".
    recorded: str
    #: Why the binary was not read (gone, changed since), or None.
    unread: str | None


def program_header(meta: TraceMetadata, trace_path: Path | None = None) -> ProgramHeader | None:
    """The header of a compiled program's report; None for a scenario. A relative
    program path is relative to where `record` ran; failing that, the program is
    looked for next to the trace (where `demo` keeps it)."""
    program = meta.program
    if program is None or program.kind != "elf":
        return None
    path = Path(program.path)
    if not path.is_file() and trace_path is not None:
        beside = trace_path.parent / path.name
        if beside.is_file():
            path = beside
    producer = linkage = unread = None
    if not path.is_file():
        unread = "the binary is no longer at this path"
    elif program.sha256 is not None and _sha256(path) != program.sha256:
        unread = "the binary at this path changed since it was recorded"
    else:
        try:
            with path.open("rb") as f:
                elf = ELFFile(f)
                linkage = _linkage(elf)
                producer = _producer(elf, {e.file for e in meta.lines if e.file})
        except (OSError, ELFError, ValueError) as exc:
            unread = f"the binary could not be read: {exc}"
    return ProgramHeader(
        path=program.path,
        name=Path(program.path).name,
        producer=producer,
        linkage=linkage,
        recorded=recorded_range(meta),
        unread=unread,
    )


def recorded_range(meta: TraceMetadata) -> str:
    """The part of the run the trace holds, in the words of `record --from/--to`."""
    start = meta.start
    to = meta.options.get("to")
    begin = "from the entry"
    if start is not None:
        begin = f"from {start.symbol} ({start.step:,} start-up steps ran unrecorded)"
    end = f"to {to}" if isinstance(to, str) and to else "to the end of the run"
    if start is None and not to:
        return "the whole run, from the entry"
    return f"{begin} {end}"


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        read = 0
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            read += len(chunk)
            if read > MAX_HASHED:
                return None
    return digest.hexdigest()


def _linkage(elf: ELFFile) -> str:
    if any(segment["p_type"] == "PT_INTERP" for segment in elf.iter_segments()):
        return "dynamic"
    return "static-pie" if elf["e_type"] == "ET_DYN" else "static"


def _producer(elf: ELFFile, sources: set[str]) -> str | None:
    """The producer of the program's own compile unit: the one named like a source
    file its line table uses, else the first that is not an assembler's."""
    if not elf.has_dwarf_info():
        return None
    names = {PurePath(s).name for s in sources}
    first: str | None = None
    for unit in elf.get_dwarf_info().iter_CUs():
        top = unit.get_top_DIE()
        producer = _text(top.attributes.get("DW_AT_producer"))
        if producer is None:
            continue
        name = _text(top.attributes.get("DW_AT_name")) or ""
        if PurePath(name).name in names:
            return producer
        if first is None and not producer.startswith("GNU AS"):
            first = producer
    return first


def _text(attribute: object) -> str | None:
    value = getattr(attribute, "value", None)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
