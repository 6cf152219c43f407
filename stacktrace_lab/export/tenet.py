"""The trace in Tenet's text format (gaasedelen/tenet, tracers/README.md).

One line per executed instruction, as Tenet's reference Pin tracer writes
them: the general-purpose registers that changed since the previous line,
then `rip` of the instruction about to run, then the memory the *previous*
instruction read (`mr=ADDR:HEX`) and wrote (`mw=ADDR:HEX`, the bytes in
memory order). The first line holds every register; a last line holds the
final state and the last instruction's accesses. Values are base 16.

rflags is left out: Tenet's amd64 architecture lists the sixteen
general-purpose registers and rip only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..arch import REGISTERS
from ..trace.reader import Trace

#: What Tenet's amd64 architecture parses (rip goes last on each line).
TENET_REGISTERS = tuple(r for r in REGISTERS if r not in ("rip", "rflags"))


def _memory(kind: str, entries: list[dict[str, object]] | None) -> list[str]:
    out = []
    for e in entries or []:
        data = e["data"]
        assert isinstance(data, bytes)
        out.append(f"{kind}={int(e['addr']):#x}:{data.hex()}")  # type: ignore[call-overload]
    return out


def _lines(trace: Trace, f: TextIO) -> int:
    previous: dict[str, int] | None = None
    pending: list[str] = []  # the previous instruction's accesses
    lines = 0
    columns = [*TENET_REGISTERS, "rip", "reads", "writes"]
    for group in trace.iter_row_groups(columns):
        data = group.to_pydict()
        for i in range(group.num_rows):
            parts = []
            for name in TENET_REGISTERS:
                value = int(data[name][i])
                if previous is None or previous[name] != value:
                    parts.append(f"{name}={value:#x}")
            previous = {name: int(data[name][i]) for name in TENET_REGISTERS}
            parts.append(f"rip={int(data['rip'][i]):#x}")
            f.write(",".join(parts + pending) + "\n")
            lines += 1
            pending = _memory("mr", data["reads"][i]) + _memory("mw", data["writes"][i])
    if previous is not None:
        final = trace.metadata.final
        parts = [
            f"{name}={int(final[name]):#x}"
            for name in TENET_REGISTERS
            if name in final and int(final[name]) != previous[name]
        ]
        parts.append(f"rip={int(final.get('rip', 0)):#x}")
        f.write(",".join(parts + pending) + "\n")
        lines += 1
    return lines


def write_tenet(trace: Trace, out: Path) -> int:
    """Write the Tenet trace (atomically); returns the number of lines."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("w", encoding="ascii") as f:
            lines = _lines(trace, f)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)  # never a half-written file, whatever failed
    return lines
