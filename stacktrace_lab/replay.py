"""Replay: run a trace's own program again and check every recorded step against the file.

A trace is self-contained: its metadata holds the code bytes, the layout, the
initial registers and the options, and its step-0 stack snapshots hold the
initial memory (the sentinel return address under the entry frame; all other
memory starts zeroed). `replay()` builds the same machine from those alone,
with no scenario file, runs it under the recorder's own hooks and turns each
chunk of steps into an Arrow batch by the recorder's own path
(`record.columns.build_batch`), then compares it column by column with the
same rows of the file. The first step where any column differs is reported,
with every column that differs there. A file whose rows were edited by hand
(a register value changed and the file rewritten) is caught at that step.

This module is on the recorder side: it imports the emulator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from unicorn.unicorn_py3.unicorn import UcError

from .arch import REGISTERS
from .disassembly import Disassembler, InstructionTable
from .errors import BadInput
from .layout import SENTINEL_RETURN
from .limits import DEFAULT_LIMITS
from .record.core.columns import SnapshotState, build_batch, thread_column
from .record.machine.machine import Chunk, Machine, MachineSpec, RunResult, scenario_spec
from .record.machine.threads import DEFAULT_SLICE
from .record.recorder import Description, prepare_machine
from .safe_output import Interrupted
from .trace.format import THREAD_FIELD, SyscallRecord, hook_schema, signed64
from .trace.reader import Trace

#: Values longer than this are shortened in a report.
_SHOWN = 120


@dataclass(frozen=True)
class Difference:
    """The first step at which the replay and the file disagree."""

    step: int
    columns: tuple[str, ...]  # every column that differs at that step, in file order
    recorded: str  # the first column's value in the file
    replayed: str  # and in the replay
    detail: str  # one sentence

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "columns": list(self.columns),
            "recorded": self.recorded,
            "replayed": self.replayed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ReplayResult:
    steps_compared: int
    difference: Difference | None

    @property
    def matches(self) -> bool:
        return self.difference is None


class _Diverged(Exception):
    def __init__(self, difference: Difference) -> None:
        super().__init__(difference.detail)
        self.difference = difference


def machine_spec_of(trace: Trace) -> MachineSpec:
    """The machine a trace was recorded on, from the trace alone."""
    meta = trace.metadata
    try:
        code_region = meta.region("code")
        entry = meta.initial["rip"]
    except KeyError as exc:
        raise BadInput(f"{trace.path}: cannot replay: the metadata has no {exc}") from None
    if trace.num_rows == 0:
        raise BadInput(f"{trace.path}: cannot replay: the trace has no steps")
    memory = {}
    for window in meta.snapshots.values():
        if window.column in trace.column_names:
            memory[window.base] = bytes(trace.slice(0, 1, [window.column]).column(0)[0].as_py())
    spec = scenario_spec(
        code=meta.code,
        code_region=code_region,
        regions=[r for r in meta.regions if r.kind != "code"],
        entry=entry,
        registers={name: value for name, value in meta.initial.items() if name != "rip"},
        memory=memory,
        sentinel=int(meta.options.get("sentinel_return", SENTINEL_RETURN)),
    )
    spec.max_output = int(meta.options.get("max_output", DEFAULT_LIMITS.max_output_bytes))
    return spec


def elf_description(trace: Trace, binary: str | None = None) -> Description:
    """The machine an ELF trace was recorded on: its program again, checked by sha256."""
    from .record.linux.elf_front import describe_elf

    meta = trace.metadata
    assert meta.program is not None
    path = Path(binary or meta.program.path)
    if not path.is_file():
        raise BadInput(
            f"{trace.path}: cannot replay: the program {path} is not there "
            "(give its path with --program)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != meta.program.sha256:
        raise BadInput(
            f"{trace.path}: cannot replay: {path} is not the program recorded "
            f"(sha256 {digest[:16]}..., the trace's {str(meta.program.sha256)[:16]}...)"
        )
    options = meta.options
    # A dynamically linked program's libraries (every file it read) as recorded.
    from .record.linux.files import changed_files

    recorded_files = options.get("files", [])
    changed = changed_files(recorded_files if isinstance(recorded_files, list) else [])
    if changed is not None:
        raise BadInput(f"{trace.path}: cannot replay on this machine: {changed}")
    description = describe_elf(
        path,
        [str(a) for a in options.get("args", [])],
        options.get("from"),
        options.get("to"),
        int(options.get("max_steps") or trace.num_rows),
        allow_read=[str(p) for p in options.get("allow_read", [])],
        # A threaded program: the same schedule (record/machine/threads.py).
        thread_slice=meta.thread_slice or DEFAULT_SLICE,
    )
    # The recorded regions, not the new discovery's: the snapshots are theirs.
    description.spec = replace(description.spec, regions=list(meta.regions))
    return description


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:#x}"
    elif isinstance(value, bytes):
        text = value.hex()
    elif isinstance(value, list) and all(isinstance(v, dict) and "addr" in v for v in value):
        # A reads/writes entry list: `8 bytes at 0x10011ff0 = 3e00400000000000`.
        text = (
            "["
            + ", ".join(
                f"{v['size']} bytes at {v['addr']:#x} = {bytes(v['data']).hex()}" for v in value
            )
            + "]"
        )
    else:
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _plain(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array, dictionary text decoded (dictionaries may differ, texts may not)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if isinstance(array.type, pa.DictionaryType):
        array = array.dictionary_decode()
    return array


def first_difference(recorded: pa.Array, replayed: pa.Array) -> int | None:
    """The first row at which two arrays of equal length differ, or None."""
    if recorded.equals(replayed):
        return None
    try:
        # Null on one side only differs; null on both sides (no source line) does not.
        unequal = pc.fill_null(pc.not_equal(recorded, replayed), False)
        one_null = pc.xor(pc.is_null(recorded), pc.is_null(replayed))
        hits = pc.indices_nonzero(pc.or_(unequal, one_null))
        if len(hits):
            return int(hits[0].as_py())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    # Nested columns (reads, writes): compare row by row, only once a difference is known.
    for i, (a, b) in enumerate(zip(recorded.to_pylist(), replayed.to_pylist(), strict=True)):
        if a != b:
            return i
    return None


class _Comparer:
    """Compares each replayed batch with the same rows of the file."""

    def __init__(self, trace: Trace, columns: list[str]) -> None:
        self.trace = trace
        self.columns = columns
        self.compared = 0

    def check(self, batch: pa.RecordBatch) -> None:
        first = int(batch.column(0)[0].as_py()) if batch.num_rows else self.compared
        n = batch.num_rows
        total = self.trace.num_rows
        if first + n > total:
            replayed_row = {
                name: batch.column(name)[total - first].as_py()
                for name in ("rip", "insn")
                if total - first < n
            }
            if first < total:
                self.check(batch.slice(0, total - first))
            raise _Diverged(
                Difference(
                    step=total,
                    columns=("(rows)",),
                    recorded="end of trace",
                    replayed=f"{replayed_row.get('rip', 0):#x} {replayed_row.get('insn', '')}",
                    detail=f"the trace ends after {total} steps, but the replay runs on",
                )
            )
        recorded_table = self.trace.slice(first, first + n, self.columns)
        found: list[tuple[int, str]] = []
        for name in self.columns:
            row = first_difference(_plain(recorded_table.column(name)), _plain(batch.column(name)))
            if row is not None:
                found.append((row, name))
        if not found:
            self.compared = first + n
            return
        row = min(r for r, _ in found)
        self.compared = first + row
        names = tuple(name for r, name in found if r == row)
        recorded = _plain(recorded_table.column(names[0]))[row].as_py()
        replayed = _plain(batch.column(names[0]))[row].as_py()
        where = f"{batch.column('rip')[row].as_py():#x} {_plain(batch.column('insn'))[row].as_py()}"
        raise _Diverged(
            Difference(
                step=first + row,
                columns=names,
                recorded=_show(recorded),
                replayed=_show(replayed),
                detail=(
                    f"{', '.join(names)} {'differs' if len(names) == 1 else 'differ'} at {where}"
                    f" -- the file has {_show(recorded)}, the replay {_show(replayed)}"
                ),
            )
        )


def _call(c: SyscallRecord) -> tuple[object, ...]:
    """A call as both sides log it (the result as the signed number the trace keeps)."""
    return (c.step, c.nr, c.name, c.args, None if c.result is None else signed64(c.result))


def _compare_end(trace: Trace, result: RunResult) -> Difference | None:
    """After all rows matched: the step count, stop, final registers, output and syscalls."""
    meta = trace.metadata
    if result.steps < trace.num_rows:
        return Difference(
            step=result.steps,
            columns=("(rows)",),
            recorded=f"{trace.num_rows} steps",
            replayed=f"{result.steps} steps",
            detail=(
                f"the replay stopped after {result.steps} steps ({result.stop.reason}: "
                f"{result.stop.detail}), but the trace has {trace.num_rows}"
            ),
        )
    last = trace.num_rows - 1
    replayed_reason = result.stop.reason
    if meta.stop.reason == "limit" and replayed_reason == "max_steps":
        replayed_reason = "limit"  # the replay stops where the recording hit its limit
    checks: list[tuple[str, object, object]] = [
        ("stop.reason", meta.stop.reason, replayed_reason),
        ("stop.step", meta.stop.step, result.stop.step),
        ("stdout", meta.stdout, result.stdout.decode("utf-8", "backslashreplace")),
        ("stderr", meta.stderr, result.stderr.decode("utf-8", "backslashreplace")),
    ]
    checks += [(f"final.{r}", meta.final.get(r), result.final.get(r)) for r in REGISTERS]
    if meta.version >= 2:  # version 1 did not log system calls
        checks.append(
            (
                "syscalls",
                [_call(c) for c in trace.syscalls()],
                [_call(c) for c in result.syscalls],
            )
        )
    for name, recorded, replayed in checks:
        if recorded != replayed:
            return Difference(
                step=last,
                columns=(name,),
                recorded=_show(recorded),
                replayed=_show(replayed),
                detail=(
                    f"after the last step ({last}) the metadata's {name} is {_show(recorded)}, "
                    f"the replay's {_show(replayed)}"
                ),
            )
    return None


def _source_difference(trace: Trace) -> Difference | None:
    """Whether the trace's source, assembled again, gives its recorded code.

    The replay runs the recorded code bytes; the source is what the reports
    show beside them. Editing `scenario.source` alone (issue 26) would pass
    every step. Checked for inline sources (every line-table entry names the
    .toml): file programs may include files, defines and stubs the trace does
    not hold, and a source that does not assemble alone (a stub's symbol) is
    not a finding either.
    """
    from .record.recorder import build_program
    from .scenario import RegionSpec, Scenario

    meta = trace.metadata
    if not meta.lines or not all(line.file.endswith(".toml") for line in meta.lines):
        return None
    declared = [r for r in meta.regions if r.kind in ("stack", "data") and r.name != ".data"]
    scenario = Scenario(
        name=meta.scenario.name,
        description=meta.scenario.description,
        syntax=meta.scenario.syntax,
        entry=meta.scenario.entry,
        source=meta.scenario.source,
        stacks=tuple(RegionSpec(r.name, r.size) for r in declared if r.kind == "stack"),
        data=tuple(RegionSpec(r.name, r.size) for r in declared if r.kind == "data"),
    )
    try:
        program, _ = build_program(scenario)
    except BadInput:
        return None
    if program.code == meta.code:
        return None
    at = next(
        (i for i, (a, b) in enumerate(zip(program.code, meta.code, strict=False)) if a != b),
        min(len(program.code), len(meta.code)),
    )
    return Difference(
        step=0,
        columns=("scenario.source",),
        recorded=_show(meta.code[at : at + 16]),
        replayed=_show(program.code[at : at + 16]),
        detail=(
            f"the metadata's scenario.source does not assemble to the recorded code: "
            f"they differ from code+{at:#x} (was the source edited?)"
        ),
    )


def replay(
    trace: Trace, progress: Callable[[int], None] | None = None, binary: str | None = None
) -> ReplayResult:
    """Re-run `trace`'s program from its own recorded state and compare every step.

    A scenario's trace holds its code; an ELF trace names its program, which
    must be there (`binary` if it moved) with the same sha256."""
    meta = trace.metadata
    windows = dict(meta.snapshots)
    if meta.program is not None and meta.program.kind == "elf":
        description = elf_description(trace, binary)
        machine, _start = prepare_machine(description)
        table = InstructionTable(
            Disassembler.of_segments(description.code_segments, description.symbols),
            meta.source_line,
        )
    else:
        edited = _source_difference(trace)
        if edited is not None:
            return ReplayResult(0, edited)
        spec = machine_spec_of(trace)
        try:
            machine = Machine(spec)
        except UcError as exc:
            # Only an edited file gets here: the recorder's own layouts always map.
            raise BadInput(
                f"{trace.path}: the trace's layout cannot be mapped again ({exc})"
            ) from None
        table = InstructionTable(
            Disassembler(meta.code, meta.code_base, meta.symbols), meta.source_line
        )
    try:
        snapshots = [
            SnapshotState(w, machine.read_or_zero(w.base, w.size)) for w in windows.values()
        ]
    except UcError as exc:
        raise BadInput(f"{trace.path}: the trace's layout cannot be mapped again ({exc})") from None
    batch_schema = hook_schema(windows)  # system calls are compared at the end
    columns = [name for name in trace.column_names if name in batch_schema.names]
    comparer = _Comparer(trace, [*columns, THREAD_FIELD.name])
    # The file's own step limit, so a trace cut at max_steps replays to the
    # same cut; but never more than one step past the file's rows, whatever
    # its options say: that step is enough to see that the replay runs on
    # (or how it stops: a spin is seen one step late), and a forged huge
    # `max_steps` cannot make the replay run forever.
    max_steps = min(int(meta.options.get("max_steps") or trace.num_rows), trace.num_rows + 1)
    if meta.stop.reason == "limit":
        # A recording stopped by a size limit: replay the same rows, no more.
        max_steps = trace.num_rows
    chunk_rows = min(int(meta.options.get("row_group_size") or 65536), 65536)  # bounded memory

    def on_chunk(chunk: Chunk) -> None:
        batch = build_batch(chunk, table, snapshots, batch_schema)
        comparer.check(batch.append_column(THREAD_FIELD, thread_column(chunk)))
        if progress is not None:
            progress(chunk.first_step + chunk.rows)

    try:
        result = machine.run(max_steps, chunk_rows, on_chunk)
    except _Diverged as diverged:
        return ReplayResult(comparer.compared, diverged.difference)
    if result.interrupted:
        raise Interrupted(result.interrupted)
    return ReplayResult(result.steps, _compare_end(trace, result))
