"""`stacktrace-lab gdbserver`: a trace served to gdb over the remote serial protocol.

gdb attaches with `target remote :PORT` and can then step, continue, set
breakpoints and watchpoints, forwards and backwards (`reverse-stepi`,
`reverse-continue`, ...), over the recorded steps: nothing is run again.
docs/gdb.md is the user's page.

- `protocol.py`: packet framing (checksums, acks, escapes), bounded input;
- `registers.py`: the target description and which registers a trace knows;
- `memory.py`: the write index and memory at any step;
- `target.py`: the position in the trace and the searches that move it;
- `exec_file.py`: the ELF with a scenario's labels and lines, built in memory;
- `server.py`: the packets and the socket loop.

This is the analysis side: it reads the trace (and a compiled program's own
file, checked by its sha256), never the emulator.
"""

from __future__ import annotations

import hashlib
import io
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..errors import BadInput
from ..limits import MAX_PROGRAM_FILE_BYTES, read_input
from ..trace.reader import Trace
from .exec_file import scenario_elf, scenario_source_dir
from .memory import AccessIndex, Image, TraceMemory, trace_image
from .server import ExecFile, GdbServer
from .target import TraceTarget

__all__ = ["GdbServer", "ServedTrace", "open_target", "serve"]

#: Where gdb is told a scenario's generated executable is: it reads it from
#: the server (`vFile`), so the path exists nowhere else.
VIRTUAL_DIR = "/stacktrace-lab"


@dataclass
class ServedTrace:
    target: TraceTarget
    exec_file: ExecFile | None
    auxv: bytes | None
    #: A sentence for the user when something is missing (a program not found).
    note: str | None = None


def open_target(trace: Trace, program: Path | None = None, cwd: Path | None = None) -> ServedTrace:
    """Everything the server answers from: index the writes, build the initial image."""
    cwd = cwd or Path.cwd()
    meta = trace.metadata
    exec_file: ExecFile | None = None
    auxv: bytes | None = None
    note: str | None = None
    program_bytes: bytes | None = None
    if meta.program is not None and meta.program.kind == "elf":
        path = program or (cwd / meta.program.path)
        program_bytes, note = _program_bytes(trace, path)
        if program_bytes is not None:
            exec_file = ExecFile(str(path.resolve()), program_bytes)
            auxv = _auxv(program_bytes)
    elif meta.code:
        elf = scenario_elf(meta, scenario_source_dir(meta, cwd))
        exec_file = ExecFile(f"{VIRTUAL_DIR}/{meta.scenario.name}.elf", elf)
    image = trace_image(trace, program_bytes)
    if meta.program is not None and meta.program.kind == "elf" and program_bytes is None:
        image = _without_program(trace, image)
    memory = TraceMemory(image, AccessIndex(trace, "writes"))
    return ServedTrace(TraceTarget(trace, memory), exec_file, auxv, note)


def serve(served: ServedTrace, port: int, log: TextIO = sys.stderr) -> GdbServer:
    return GdbServer(served.target, served.exec_file, port, served.auxv, log)


def _program_bytes(trace: Trace, path: Path) -> tuple[bytes | None, str | None]:
    """The compiled program's bytes if `path` is the very file recorded, else a note why not."""
    expected = trace.metadata.program.sha256 if trace.metadata.program else None
    if not path.is_file():
        return None, f"the program {path} is not there (give it with --program)"
    try:
        data = read_input(path, MAX_PROGRAM_FILE_BYTES, "program", option=None)
    except BadInput as exc:
        return None, str(exc)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        return None, f"{path} is not the program recorded (its sha256 differs)"
    return data, None


def _without_program(trace: Trace, image: Image) -> Image:
    """Without the program file its code and data are unknown: leave them unmapped."""
    unknown = [
        (r.map_start, r.map_start + r.map_size)
        for r in trace.metadata.regions
        if r.kind in ("code", "data")
    ]
    mapped = []
    for lo, hi in image.mapped:
        pieces = [(lo, hi)]
        for ulo, uhi in unknown:
            pieces = [
                part
                for plo, phi in pieces
                for part in ((plo, min(phi, ulo)), (max(plo, uhi), phi))
                if part[0] < part[1]
            ]
        mapped.extend(pieces)
    return Image(tuple(mapped), image.chunks)


_AT_NULL, _AT_PHDR, _AT_PHENT, _AT_PHNUM, _AT_PAGESZ, _AT_ENTRY = 0, 3, 4, 5, 6, 9


def _auxv(program: bytes) -> bytes | None:
    """The auxiliary vector entries gdb reads to place a static-pie (as the recorder did)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    from ..record.linux.elf import PIE_BASE

    try:
        elf = ELFFile(io.BytesIO(program))
        base = PIE_BASE if elf.header["e_type"] == "ET_DYN" else 0
        phoff = int(elf.header["e_phoff"])
        phdr = next(
            (
                int(s["p_vaddr"]) + phoff - int(s["p_offset"])
                for s in elf.iter_segments()
                if s["p_type"] == "PT_LOAD"
                and int(s["p_offset"]) <= phoff < int(s["p_offset"]) + int(s["p_filesz"])
            ),
            None,
        )
        entries = [
            (_AT_PHENT, int(elf.header["e_phentsize"])),
            (_AT_PHNUM, int(elf.header["e_phnum"])),
            (_AT_PAGESZ, 4096),
            (_AT_ENTRY, base + int(elf.header["e_entry"])),
        ]
        if phdr is not None:
            entries.insert(0, (_AT_PHDR, base + phdr))
    except (ELFError, ValueError, KeyError):
        return None
    return b"".join(struct.pack("<QQ", k, v) for k, v in [*entries, (_AT_NULL, 0)])
