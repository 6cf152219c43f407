"""`record()` and `record_elf()`: a program in, a trace file out.

A front end (a scenario: assemble and lay out; an ELF program: load it as a
Linux process and discover its stacks) writes one `Description`; from there
on one path serves both: run the machine under the hooks -> per chunk of
steps, build an Arrow batch and append it as a row group -> write the
metadata and rename the finished file into place.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from .. import __version__
from ..disassembly import Disassembler, InstructionTable
from ..errors import BadInput
from ..layout import SENTINEL_RETURN, Region, code_region, place_regions, region_symbols
from ..limits import DEFAULT_LIMITS, Limits
from ..safe_output import Interrupted
from ..scenario import Scenario
from ..trace.format import (
    DEFAULT_SNAPSHOT_LIMIT,
    ProgramInfo,
    ScenarioInfo,
    SnapshotWindow,
    SourceLine,
    StartInfo,
    StopInfo,
    SyscallRecord,
    TraceMetadata,
    as_stored,
    hook_schema,
    schema,
    syscall_column,
)
from ..trace.reader import load_trace
from ..trace.writer import TraceWriter
from .core.columns import SnapshotState, build_batch, thread_column
from .core.hooks import native_module
from .core.native_capstone import NativeFacts, native_capstone
from .core.windows import Extent, choose_windows
from .machine import initial_state
from .machine.machine import Chunk, Machine, MachineSpec, RunResult, scenario_spec
from .machine.syscalls import ENOSYS, BareKernel
from .machine.threads import DEFAULT_SLICE

if TYPE_CHECKING:  # the assembler is imported when a scenario is built, not for a program
    from .asm.assembler import Program

DEFAULT_ROW_GROUP = 65536
#: Snapshot bytes one row group may hold: a group's rows are buffered in
#: memory, and 65536 rows of a 1 MiB snapshot would be 64 GiB. With the
#: default 512-byte snapshots, groups stay at 65536 rows up to 8 stacks.
MAX_GROUP_SNAPSHOT_BYTES = 256 << 20


#: `progress(steps)` while recording; a program's recording also calls
#: `progress(steps, phase)` before, for "start-up" (the unrecorded run to
#: `--from`) and "discovery" (its stack discovery pass).
Progress = Callable[..., None]


@dataclass(frozen=True)
class RecordOptions:
    max_steps: int | None = None  # None: the scenario's own
    snapshot_limit: int = DEFAULT_SNAPSHOT_LIMIT
    row_group_size: int = DEFAULT_ROW_GROUP
    #: Program size, output and trace size bounds (limits.py).
    limits: Limits = DEFAULT_LIMITS
    #: Instructions a thread runs before the next runnable one (record/machine/threads.py).
    thread_slice: int = DEFAULT_SLICE

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise BadInput(f"--max-steps must be at least 1, got {self.max_steps}")
        if not 8 <= self.snapshot_limit <= 1 << 20:
            raise BadInput(
                f"--snapshot-limit must be between 8 and 1048576, got {self.snapshot_limit}"
            )
        if self.thread_slice < 1:
            raise BadInput(f"--thread-slice must be at least 1, got {self.thread_slice}")
        if self.row_group_size < 1:
            raise BadInput(f"row group size must be at least 1, got {self.row_group_size}")


@dataclass
class Description:
    """What a front end hands the recorder: the machine, and what the trace says of it."""

    spec: MachineSpec
    info: ScenarioInfo
    program: ProgramInfo
    symbols: dict[str, int]
    #: (address, bytes) of the code, for disassembly.
    code_segments: list[tuple[int, bytes]]
    max_steps: int
    #: For error messages: the scenario file or the program.
    path: str
    #: Code embedded in the trace (a scenario's; an ELF's stays in its file).
    code_base: int = 0
    code: bytes = b""
    #: The source lines, in full or asked for as code runs (a program's DWARF).
    lines: tuple[SourceLine, ...] | LineSource = ()
    #: Store only the line rows that name an executed instruction (a program's
    #: DWARF table has tens of thousands); a scenario keeps all its lines.
    trim_lines: bool = False
    #: Where recording starts when not at the entry: (symbol, address) (`--from`).
    start: tuple[str, int] | None = None
    #: The recording options that a replay needs again.
    options: dict[str, Any] = field(default_factory=dict)
    #: Where rsp went in each stack, by name, when a pass before the recording
    #: saw it (a program's discovery pass): each snapshot window is placed there.
    extents: dict[str, Extent] = field(default_factory=dict)
    #: A machine on the way to `start` (a copy of the discovery pass's at the
    #: program's entry, `Machine.fork`): the recording fast-forwards it the rest of
    #: the way instead of running the dynamic loader again. Used once.
    prepared: Machine | None = field(default=None, repr=False, compare=False)
    #: A machine at the recording's start itself, the same state as a new one (the
    #: discovery pass's, rewound: `Machine.rewind`), with the code that pass ran
    #: translated already. Used once.
    rewound: Machine | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Recording:
    path: Path
    metadata: TraceMetadata


def tool_versions() -> dict[str, str]:
    versions = {"stacktrace_lab": __version__}
    for dist in ("unicorn", "capstone", "keystone-engine"):
        versions[dist.split("-")[0]] = installed_version(dist)
    return versions


def installed_version(dist: str) -> str:
    """`importlib.metadata.version(dist)`, or "unknown" when it is not installed.

    The `<name>-<version>.dist-info` directory importlib.metadata would find first
    (sys.path in order) is read directly: importing importlib.metadata (its email
    parser) costs 0.04 CPU s of every `record` (docs/performance.md). Anything
    else (an .egg-info, a zip on sys.path) is left to importlib.metadata."""
    wanted = _dist_name(dist)
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info") and _dist_name(name.partition("-")[0]) == wanted:
                found = _metadata_version(Path(entry or ".", name, "METADATA"))
                if found is not None:
                    return found
                break  # unreadable: importlib.metadata decides
        else:
            continue
        break
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _dist_name(name: str) -> str:
    """A distribution's name as importlib.metadata compares them (PEP 503, `_` for `-`)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _metadata_version(path: Path) -> str | None:
    """The `Version:` header of a METADATA file (the headers end at the first blank line)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if not line:
            return None
        key, _, value = line.partition(":")
        if key.lower() == "version":
            return value.strip()
    return None


def lay_out(scenario: Scenario) -> list[Region]:
    declared = [(s.name, "stack", s.size) for s in scenario.stacks]
    declared += [(d.name, "data", d.size) for d in scenario.data]
    return place_regions(declared)  # type: ignore[arg-type]


def build_program(
    scenario: Scenario, limits: Limits = DEFAULT_LIMITS
) -> tuple[Program, list[Region]]:
    """Assemble the scenario and check the labels it must define."""
    from .asm.assembler import assemble
    from .asm.precheck import precheck_program

    regions = lay_out(scenario)
    constants = region_symbols(regions)
    program = assemble(precheck_program(scenario, constants, limits), constants)
    size = len(program.code) + len(program.data)
    if size > limits.max_program_bytes:
        raise BadInput(
            f"{scenario.source_file}: the program is {size} bytes, larger than "
            f"the limit of {limits.max_program_bytes} bytes (--max-program-size)"
        )
    if program.data:
        # The program's own .data/.rodata/.bss, on pages after the code.
        regions.append(Region(".data", "data", program.data_base, len(program.data), "rw-"))
    if scenario.entry not in program.labels:
        raise BadInput(
            f"{scenario.path}: entry label '{scenario.entry}' is not defined in the program"
        )
    for i, ret in enumerate(scenario.expect.rets):
        if ret.target not in program.labels:
            raise BadInput(
                f"{scenario.path}: field 'expect.ret[{i}].target': "
                f"label '{ret.target}' is not defined in the program"
            )
    return program, regions


def machine_spec(
    program: Program,
    regions: list[Region],
    entry: str,
    max_output: int = DEFAULT_LIMITS.max_output_bytes,
) -> MachineSpec:
    first_stack = next(r for r in regions if r.kind == "stack")
    rsp = first_stack.top - 8
    spec = scenario_spec(
        code=program.code,
        code_region=code_region(len(program.code)),
        regions=regions,
        entry=program.labels[entry],
        registers={"rsp": rsp, "rflags": initial_state.RFLAGS},
        memory={
            rsp: SENTINEL_RETURN.to_bytes(8, "little"),
            **({program.data_base: program.data} if program.data else {}),
        },
        sentinel=SENTINEL_RETURN,
    )
    spec.max_output = max_output
    return spec


def scenario_info(scenario: Scenario) -> ScenarioInfo:
    return ScenarioInfo(
        name=scenario.name,
        description=scenario.description,
        syntax=scenario.syntax,
        entry=scenario.entry,
        source=scenario.source,
        expect=scenario.expect,
        breaks=scenario.breaks,
    )


def source_lines(scenario: Scenario, program: Program) -> tuple[SourceLine, ...]:
    """`code.lines`: each line's first address, with the file the line is in.

    The file is named relative to the scenario file (`switch.s` for
    `file = "switch.s"`), or is the scenario file's own name when the program
    is inline, so the trace does not depend on where it was recorded.
    """
    # The front end keeps where each line came from (file relative to the
    # scenario, line): with `files = [...]` and `#include`, lines of one
    # program come from several files.
    return tuple(
        SourceLine(addr, Path(file).as_posix(), line)
        for addr, (file, line) in sorted(program.locations.items())
    )


def program_info(scenario: Scenario) -> ProgramInfo:
    return ProgramInfo("scenario", scenario.given_as, scenario.sha256)


def describe_scenario(scenario: Scenario, limits: Limits = DEFAULT_LIMITS) -> Description:
    """The scenario front end: assemble, lay out, one machine description."""
    program, regions = build_program(scenario, limits)
    return Description(
        spec=machine_spec(program, regions, scenario.entry, limits.max_output_bytes),
        info=scenario_info(scenario),
        program=program_info(scenario),
        symbols=program.symbols,
        code_segments=[(program.base, program.code)],
        max_steps=scenario.max_steps,
        path=scenario.path,
        code_base=program.base,
        code=program.code,
        lines=source_lines(scenario, program),
        options={"sentinel_return": SENTINEL_RETURN},
    )


class LineSource(Protocol):
    """A line table asked one address at a time (record/linux/dwarf_lines.py reads a
    program's DWARF this way, only the compile units that ran)."""

    def nearest(self, addr: int) -> SourceLine | None:
        """The table's row at or below `addr`, or None."""
        ...


class LineTable:
    """A `LineSource` over rows held in full (a scenario's lines)."""

    def __init__(self, lines: tuple[SourceLine, ...]) -> None:
        self._lines = sorted(lines, key=lambda e: e.addr)
        self._addrs = [e.addr for e in self._lines]

    def nearest(self, addr: int) -> SourceLine | None:
        i = bisect.bisect_right(self._addrs, addr) - 1
        return self._lines[i] if i >= 0 else None


class LineUse:
    """The `source` column's lookup (format v2's rule), remembering which rows answered.

    Storing only those rows gives readers the same answers for every executed
    address: a row between the one that answered and the address would have
    answered instead.
    """

    def __init__(
        self, lines: tuple[SourceLine, ...] | LineSource, code: tuple[Region, ...]
    ) -> None:
        self._source = LineTable(lines) if isinstance(lines, tuple) else lines
        self._code = code
        # The code regions by base, for a bisection (they do not overlap; if they
        # did, the first in `code` holding an address would be the one).
        ordered = sorted((r for r in code if r.size > 0), key=lambda r: r.base)
        disjoint = all(a.top <= b.base for a, b in itertools.pairwise(ordered))
        self._ordered = ordered if disjoint else None
        self._bases = [r.base for r in ordered]
        self._used: dict[int, SourceLine] = {}

    def _region_of(self, addr: int) -> Region | None:
        if self._ordered is None:
            return next((r for r in self._code if r.contains(addr)), None)
        i = bisect.bisect_right(self._bases, addr) - 1
        return self._ordered[i] if i >= 0 and addr < self._ordered[i].top else None

    def __call__(self, addr: int) -> tuple[str, int] | None:
        return self._answer(addr, self._source.nearest(addr))

    def _answer(self, addr: int, row: SourceLine | None) -> tuple[str, int] | None:
        if row is None:
            return None
        self._used[row.addr] = row
        # SourceLines' rule (trace/format.py), on the row that answered.
        # Line 0 is DWARF's "no source line from here" (the end of a sequence,
        # code compiled without debug information after it).
        if row.line == 0:
            return None
        region = self._region_of(addr)
        if region is None or row.addr < region.base:
            return None
        return row.file, row.line

    def many(self, addrs: list[int]) -> list[tuple[str, int] | None]:
        """The lookup of each address, in order: the same answers and rows used as a
        call per address, with the table asked for all of them at once where it can
        (dwarf_lines: one search for the addresses outside its compile units)."""
        nearest_many = getattr(self._source, "nearest_many", None)
        if nearest_many is None:
            return [self(addr) for addr in addrs]
        found: list[tuple[str, int] | None] = []
        for addr, row in zip(addrs, nearest_many(addrs), strict=True):
            found.append(self._answer(addr, row))
        return found

    def used(self) -> tuple[SourceLine, ...]:
        return tuple(self._used[addr] for addr in sorted(self._used))


def snapshot_windows(
    regions: list[Region], limit: int, extents: dict[str, Extent] | None = None
) -> dict[str, SnapshotWindow]:
    """Each stack's window: the whole stack, or `limit` bytes where rsp went, else
    its top; and for a stack whose rsp went below its base, the bytes it reached
    there (`<stack>__below`). See record/core/windows.py."""
    return choose_windows(regions, limit, extents or {})


def record(
    scenario: Scenario,
    output: str | Path,
    options: RecordOptions | None = None,
    progress: Progress | None = None,
) -> Recording:
    limits = (options or RecordOptions()).limits
    return record_description(describe_scenario(scenario, limits), output, options, progress)


def prepare_machine(
    description: Description, progress: Progress | None = None
) -> tuple[Machine, StartInfo | None]:
    """A machine at the point where recording starts, after `--from`'s fast-forward
    (and how many steps that ran)."""
    if description.start is None:
        machine, description.rewound = description.rewound, None
        if machine is None:
            return Machine(description.spec), None
        machine.spec = description.spec  # with the regions discovery found
        machine.kernel.max_output = description.spec.max_output
        if description.spec.sentinel is not None:
            machine.stop_translated(description.spec.sentinel)  # the pass did not stop there
        return machine, None
    symbol, addr = description.start
    machine, description.prepared = description.prepared, None
    if machine is not None and _same_output_cap(machine, description.spec):
        # Part of the way there already (`Description.prepared`): the rest is run.
        machine.spec = description.spec  # with the regions discovery found
        machine.kernel.max_output = description.spec.max_output
    else:
        machine = Machine(description.spec)
    if progress is not None:
        progress(0, "start-up")
    early = machine.fast_forward(addr, progress=phase(progress, "start-up"))
    if early is not None:
        raise BadInput(
            f"{description.path}: the program never reached {symbol} ({addr:#x}): "
            f"{early.reason}: {early.detail}"
        )
    if progress is not None:
        progress(machine.fast_forwarded, "start-up")
    return machine, StartInfo(symbol, machine.fast_forwarded)


def _same_output_cap(machine: Machine, spec: MachineSpec) -> bool:
    """Whether the start-up `machine` ran wrote what a machine of `spec` would have:
    the output cap (`--max-output`, set after discovery) only matters to output."""
    kernel = machine.kernel
    if kernel.max_output == spec.max_output:
        return True
    return not kernel.stdout and not kernel.stderr and not any(kernel.dropped.values())


def phase(progress: Progress | None, name: str) -> Callable[[int], None] | None:
    """`progress` for one phase: a callable of the steps only."""
    if progress is None:
        return None
    return lambda steps: progress(steps, name)


@contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Python's cycle collector looks only at objects made from here on (`gc.freeze`).

    A program's description (its symbols, line table, the discovery pass's evidence)
    is hundreds of thousands of objects; a recording allocates as it learns new
    addresses, and each collection of the older generations it set off walked them
    all (9 and 31 ms in one recording of the C example, whose 10,000 steps cost ~50
    ms). Left as it is when something else froze objects (`gc.unfreeze` would undo
    that)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def record_description(
    description: Description,
    output: str | Path,
    options: RecordOptions | None = None,
    progress: Progress | None = None,
) -> Recording:
    with _older_objects_frozen():
        return _record_description(description, output, options, progress)


def _record_description(
    description: Description,
    output: str | Path,
    options: RecordOptions | None,
    progress: Progress | None,
) -> Recording:
    options = options or RecordOptions()
    limits = options.limits
    # The output cap applies to every front end's machine (scenario or ELF).
    description.spec.max_output = limits.max_output_bytes
    spec = description.spec
    machine, start = prepare_machine(description, progress)
    windows = snapshot_windows(spec.regions, options.snapshot_limit, description.extents)
    snapshots = [SnapshotState(w, machine.read_or_zero(w.base, w.size)) for w in windows.values()]
    code_regions = tuple(r for r in spec.regions if r.kind == "code")
    lines = LineUse(description.lines, code_regions)
    disassembler = Disassembler.of_segments(description.code_segments, description.symbols)
    capstone_core = native_capstone(native_module())
    native_facts = (
        None if capstone_core is None else NativeFacts(capstone_core, disassembler.segments)
    )
    table = InstructionTable(
        disassembler,
        lines,
        native_facts,
        None if native_facts is None else native_facts.of_code,
    )
    # As the file stores them: the snapshot columns as dictionaries (trace/format.py).
    trace_schema = as_stored(schema(windows))
    row_schema = as_stored(hook_schema(windows))  # `syscall` is built here, from the kernel's log
    max_steps = options.max_steps or description.max_steps
    snapshot_bytes = max(sum(w.size for w in windows.values()), 1)
    # A group is also at most an eighth of the trace size limit, so the run
    # stops close to that limit (it is checked after each group is written).
    group_bytes = min(MAX_GROUP_SNAPSHOT_BYTES, limits.max_trace_bytes // 8)
    group_rows = max(min(options.row_group_size, group_bytes // snapshot_bytes), 1)
    options = replace(options, row_group_size=group_rows)

    with (
        TraceWriter(output, trace_schema) as writer,
        ThreadPoolExecutor(1) as converting,
        ThreadPoolExecutor(1) as writing,
    ):
        # Three stages run at once: the emulation (C, without the GIL) of a chunk,
        # the conversion of the chunk before it into Arrow arrays (numpy, Arrow),
        # and the Parquet encoding of the one before that (Arrow releases the GIL in
        # write_table). Each stage holds at most one chunk, so memory stays bounded.
        pending: list[Future[None]] = []
        counts = SyscallCounts()

        def convert(chunk: Chunk, calls: list[SyscallRecord]) -> pa.RecordBatch:
            batch = build_batch(chunk, table, snapshots, row_schema)
            made = syscall_column(calls, chunk.first_step, chunk.rows)
            return pa.RecordBatch.from_arrays(
                [*batch.columns, made, thread_column(chunk)], schema=trace_schema
            )

        def write(converted: Future[pa.RecordBatch], end: int) -> None:
            writer.write(converted.result())  # re-raises what went wrong converting
            if progress is not None:
                progress(end)

        def on_chunk(chunk: Chunk) -> None:
            # The chunk before the previous one is written, the previous one converted
            # (re-raises what went wrong there).
            while len(pending) > 1:
                pending.pop(0).result()
            # The chunk's system calls leave the kernel's log with it: the log
            # holds at most one chunk's calls, however long the run.
            calls = counts.take(machine.kernel, chunk.first_step + chunk.rows)
            converted = converting.submit(convert, chunk, calls)
            pending.append(writing.submit(write, converted, chunk.first_step + chunk.rows))
            # The trace so far (the last two chunks are still being converted and
            # written) has reached the size limit: stop, and keep every step up to here.
            if writer.bytes_written >= limits.max_trace_bytes:
                machine.request_stop(
                    "limit",
                    f"the trace reached the size limit of {limits.max_trace_bytes} bytes "
                    "(--max-trace-size)",
                )

        result = machine.run(max_steps, options.row_group_size, on_chunk)
        for written in pending:
            written.result()
        if result.interrupted:
            raise Interrupted(result.interrupted)
        if result.steps == 0:
            # An empty trace explains nothing; it means the entry faulted at once.
            raise BadInput(
                f"{description.path}: the program stopped before its first step: "
                f"{result.stop.detail}"
            )
        if description.trim_lines or not isinstance(description.lines, tuple):
            description = replace(description, lines=lines.used())
        metadata = _metadata(description, start, windows, result, options, max_steps, counts)
        path = writer.commit(metadata, check=lambda written: _check_opens(written, Path(output)))
    return Recording(path=path, metadata=metadata)


def _unreadable(path: Path, exc: BadInput) -> BadInput:
    reason = str(exc).removeprefix(f"{path}: ")
    return BadInput(
        f"{path}: not written: the trace would not open ({reason}); this is a bug in "
        "stacktrace-lab, please report it with the program"
    )


def _check_opens(written: Path, output: Path) -> None:
    """The written file (`output`'s temporary file) opens with the same reader every
    command uses, metadata and rows: a trace `record` exits 0 for is one every
    command opens."""
    try:
        load_trace(written)
    except BadInput as exc:
        raise _unreadable(output, BadInput(str(exc).replace(str(written), str(output)))) from None


def _metadata(
    description: Description,
    start: StartInfo | None,
    windows: dict[str, SnapshotWindow],
    result: RunResult,
    options: RecordOptions,
    max_steps: int,
    counts: SyscallCounts,
) -> TraceMetadata:
    return TraceMetadata(
        scenario=description.info,
        regions=tuple(description.spec.regions),
        symbols=description.symbols,
        code_base=description.code_base,
        code=description.code,
        lines=description.lines if isinstance(description.lines, tuple) else (),
        program=description.program,
        syscall_counts=counts.by_name(),
        start=start,
        snapshots=windows,
        initial=result.initial,
        final=result.final,
        steps=result.steps,
        stop=StopInfo(result.stop.reason, result.stop.step, result.stop.detail),
        stdout=result.stdout.decode("utf-8", "backslashreplace"),
        stderr=result.stderr.decode("utf-8", "backslashreplace"),
        options={
            "max_steps": max_steps,
            "snapshot_limit": options.snapshot_limit,
            "row_group_size": options.row_group_size,
            **description.options,
            **_non_default_limits(options.limits),
        },
        tool=tool_versions(),
        extra={**_cut_output(result), **_threads(result, description)},
    )


def _threads(result: RunResult, description: Description) -> dict[str, object]:
    """`threads`, when the program made any: the slice of the schedule (instructions a
    thread runs before the next one) and each thread's number, tid and exit status."""
    if not result.threads:
        return {}
    return {"threads": {"slice": description.spec.thread_slice, "list": result.threads}}


class SyscallCounts:
    """Takes each chunk's calls out of the kernel's log, counting them by name."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.enosys: Counter[str] = Counter()

    def take(self, kernel: BareKernel, end: int) -> list[SyscallRecord]:
        """The logged calls made before step `end`, removed from the log."""
        taken = [c for c in kernel.log if c.step < end]
        kernel.log = [c for c in kernel.log if c.step >= end]
        for call in taken:
            self.calls[call.name] += 1
            if call.result == -ENOSYS:
                self.enosys[call.name] += 1
        return taken

    def by_name(self) -> dict[str, tuple[int, int]]:
        return {name: (self.calls[name], self.enosys[name]) for name in sorted(self.calls)}


def _non_default_limits(limits: Limits) -> dict[str, int]:
    """Recording limits that differ from the defaults (replay needs the output cap);
    defaults are left out so that traces stay as they were before limits existed."""
    found = {}
    if limits.max_output_bytes != DEFAULT_LIMITS.max_output_bytes:
        found["max_output"] = limits.max_output_bytes
    if limits.max_trace_bytes != DEFAULT_LIMITS.max_trace_bytes:
        found["max_trace_size"] = limits.max_trace_bytes
    return found


def _cut_output(result: RunResult) -> dict[str, object]:
    """When output went over its cap: `output_cut: {stdout, stderr}`, the bytes not kept."""
    if not (result.stdout_dropped or result.stderr_dropped):
        return {}
    return {"output_cut": {"stdout": result.stdout_dropped, "stderr": result.stderr_dropped}}
