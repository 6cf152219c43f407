"""The trace in Tenet's text format (gaasedelen/tenet, tracers/README.md).

One line per executed instruction, as Tenet's reference Pin tracer writes
them: the general-purpose registers that changed since the previous line,
then `rip` of the instruction about to run, then the memory the *previous*
instruction read (`mr=ADDR:HEX`) and wrote (`mw=ADDR:HEX`, the bytes in
memory order). The first line holds every register; a last line holds the
final state and the last instruction's accesses. Values are base 16.

rflags is left out: Tenet's amd64 architecture lists the sixteen
general-purpose registers and rip only.

Tenet follows one thread. A trace of a threaded program (format 4's `thread`
column) is exported one thread at a time, thread 1 unless asked: its rows in
order, each line's changes and accesses against that thread's previous row.
The last line (the final state) is written only for the thread that ran the
trace's last row; for another thread, the accesses of its last instruction
have no line to go on and are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..arch import REGISTERS
from ..errors import BadInput
from ..safe_output import check_target, commit_temp, create_temp, discard_temp
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


def thread_numbers(trace: Trace) -> list[int]:
    """The threads of the trace's program, by number (just [1] without threads)."""
    return sorted(int(t["number"]) for t in trace.metadata.threads) or [1]


def _lines(trace: Trace, f: TextIO, thread: int) -> int:
    previous: dict[str, int] | None = None
    pending: list[str] = []  # the previous instruction's accesses
    lines = 0
    last_thread = 1
    columns = [*TENET_REGISTERS, "rip", "reads", "writes", "thread"]
    for group in trace.iter_row_groups(columns):
        data = group.to_pydict()
        if group.num_rows:
            last_thread = int(data["thread"][-1])
        for i in range(group.num_rows):
            if data["thread"][i] != thread:
                continue
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
    if previous is not None and last_thread == thread:
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


def write_tenet(trace: Trace, out: Path | TextIO, thread: int = 1) -> int:
    """Write the Tenet trace of `thread` to a file (through safe_output: a regular
    file, whole or not at all; never a device or FIFO replaced) or to an open text
    stream; returns the number of lines."""
    known = thread_numbers(trace)
    if thread not in known:
        names = ", ".join(str(n) for n in known)
        raise BadInput(f"{trace.path}: no thread {thread} (its threads: {names})")
    if not isinstance(out, Path):
        return _lines(trace, out, thread)
    check_target(out)
    temp = create_temp(out)
    try:
        with temp.open("w", encoding="ascii") as f:
            lines = _lines(trace, f, thread)
        commit_temp(temp, out)
    finally:
        discard_temp(temp)  # never a half-written file, whatever failed
    return lines
