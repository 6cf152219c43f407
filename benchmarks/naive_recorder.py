"""The obvious recorder, kept as the reference the real one is measured against.

It records the same content as `stacktrace_lab.record` (every register, the
instruction's text, symbol, kind, label, offset, bytes and source line, reads,
writes and stack snapshots) the way one
would first write it with unicorn's Python binding: `Uc.reg_read` for each
register in the code hook, a `mem_read` of every stack window at every step,
and binding-level hooks for memory reads and writes. Rows are Python lists
turned into Arrow arrays once per row group, and written with the same schema,
so the two files can be compared for equal content.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pyarrow as pa
from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn.unicorn_py3.unicorn import Uc, UcError

from stacktrace_lab.arch import REGISTERS
from stacktrace_lab.disassembly import Disassembler
from stacktrace_lab.record.machine.machine import UC_IDS, Machine
from stacktrace_lab.record.recorder import (
    DEFAULT_ROW_GROUP,
    build_program,
    machine_spec,
    snapshot_windows,
    source_lines,
)
from stacktrace_lab.scenario import Scenario
from stacktrace_lab.trace.format import ACCESS_TYPE, SourceLines, schema
from stacktrace_lab.trace.writer import TraceWriter


def record_naive(scenario: Scenario, output: Path, max_steps: int) -> int:
    """Record `scenario` into `output` (rows only: no metadata needed to compare speed)."""
    program, regions = build_program(scenario)
    spec = machine_spec(program, regions, scenario.entry)
    machine = Machine(spec)  # the same mapped memory and initial state
    uc = machine.uc
    windows = snapshot_windows(regions, 512)
    trace_schema = schema(windows)
    disassembler = Disassembler(program.code, program.base, program.symbols)
    source_line = SourceLines(source_lines(scenario, program), (spec.code_region,))
    rows: list[list[Any]] = []
    reads_at = 1 + len(REGISTERS) + 7  # after step, registers and the 7 instruction columns
    steps = 0

    def flush(writer: TraceWriter) -> None:
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        arrays = [pa.array(columns[0], pa.int64())]
        arrays += [pa.array(columns[1 + i], pa.uint64()) for i in range(len(REGISTERS))]
        k = 1 + len(REGISTERS)
        for i in range(k, k + 4):  # insn, symbol, kind, label
            arrays.append(pa.array(columns[i], pa.string()).dictionary_encode())
        arrays.append(pa.array(columns[k + 4], pa.int64()))
        arrays.append(pa.array(columns[k + 5], pa.binary()))
        arrays.append(pa.array(columns[k + 6], pa.string()).dictionary_encode())
        arrays.append(pa.array(columns[reads_at], ACCESS_TYPE))
        arrays.append(pa.array(columns[reads_at + 1], ACCESS_TYPE))
        for j, window in enumerate(windows.values()):
            arrays.append(pa.array(columns[reads_at + 2 + j], pa.binary(window.size)))
        writer.write(pa.RecordBatch.from_arrays(arrays, schema=trace_schema))
        rows.clear()

    with TraceWriter(output, trace_schema) as writer:

        def on_code(uc: Uc, address: int, _size: int, _user: Any) -> None:
            nonlocal steps
            if steps >= max_steps:
                uc.emu_stop()
                return
            if len(rows) == DEFAULT_ROW_GROUP:
                flush(writer)
            registers = [uc.reg_read(uid) for uid in UC_IDS]
            snapshots = [bytes(uc.mem_read(w.base, w.size)) for w in windows.values()]
            insn = disassembler.decode(address)
            label = disassembler.label(address)
            source = source_line(address)
            rows.append(
                [
                    steps,
                    *registers,
                    insn.text,
                    disassembler.symbol(address),
                    insn.kind,
                    None if label is None else label[0],
                    None if label is None else label[1],
                    insn.data,
                    None if source is None else f"{source[0]}:{source[1]}",
                    [],
                    [],
                    *snapshots,
                ]
            )
            steps += 1

        def on_memory(uc: Uc, access: int, address: int, size: int, value: int, _user: Any) -> None:
            row = rows[-1]
            if access == UC_MEM_WRITE:
                data = (value & (2**64 - 1)).to_bytes(8, "little")[:size]
                accesses = row[reads_at + 1]
            else:
                data = bytes(uc.mem_read(address, size))
                accesses = row[reads_at]
            # Merge the two halves of a 16-byte SSE access, as the format asks.
            last = accesses[-1] if accesses else None
            if last is not None and last["addr"] + last["size"] == address:
                last["size"] += size
                last["data"] += data
            else:
                accesses.append({"addr": address, "size": size, "data": data})

        uc.hook_add(UC_HOOK_CODE, on_code)
        uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_memory)
        with contextlib.suppress(UcError):  # a fault ends the run, as in the real one
            uc.emu_start(spec.entry, spec.sentinel)
        flush(writer)
        writer._writer.close()  # type: ignore[union-attr]  # rows only, no metadata
        writer._writer = None
        writer._temp.replace(output)
    return steps
