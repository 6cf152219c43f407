"""The trace format's one home: schema, version and metadata (docs/trace-format.md).

One row per executed instruction. Register columns hold the state before the
instruction; `kind`, `label`, `offset`, `insn_bytes` and `source` facts about
the instruction at rip (version 2); `reads` and `writes` what the instruction
itself accessed; `stack__<name>` the bytes of each stack region (or its top
bytes) before it. Trace-level facts are one JSON object under `METADATA_KEY`,
both in the Parquet key-value metadata and in the Arrow schema's metadata,
with sorted keys so that files are byte-identical run to run.

Version 3 keeps the system calls in a column of their own (`syscall`, set on
the row of each `syscall` instruction) instead of a list in the metadata, so
that the metadata stays small however long the run: a program that calls
`write` half a million times wrote a JSON list of half a million objects,
stored twice. Version 4 adds the `thread` column (which thread of the
process ran the row; the process's threads are in the metadata's `threads`).
Version 5 changes only how the file stores the rows, for recording speed:
`stack__` columns as a dictionary of each row group's window versions
(`as_stored`; readers get fixed-width rows as before) and the other integer
columns byte-stream-split (trace/writer.py). Version 1 traces (no per-instruction fact columns,
`code.lines` without file names, no `program`/`syscalls`) and version 2
traces (the syscall list in the metadata) still load: `from_json` fills in
what they lack and the reader derives the missing columns (trace/reader.py;
`thread` is 1 on every row of a trace before version 4).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import pyarrow as pa

from ..arch import REGISTERS
from ..layout import Region
from ..scenario import Expectations

FORMAT_NAME = "stacktrace-lab-trace"
FORMAT_VERSION = 5
#: Versions this code reads; older ones are upgraded on read.
READABLE_VERSIONS = (1, 2, 3, 4, 5)
METADATA_KEY = "stacktrace_lab"
STACK_PREFIX = "stack__"
DEFAULT_SNAPSHOT_LIMIT = 512

ACCESS_TYPE = pa.list_(
    # Named as Parquet's nested-list convention names it, so that the type a
    # reader gets back from the file is this very type.
    pa.field(
        "element",
        pa.struct(
            [
                pa.field("addr", pa.uint64(), nullable=False),
                pa.field("size", pa.uint16(), nullable=False),
                pa.field("data", pa.binary(), nullable=False),
            ]
        ),
    )
)
TEXT_TYPE = pa.dictionary(pa.int32(), pa.string())

#: The `syscall` column (version 3): on the row of a `syscall` instruction,
#: the call it made; null on every other row.
#: Its fields are declared nullable, as other Parquet tools write them back
#: (a null row's fields are null there); on a call's row only `result` may be.
SYSCALL_TYPE = pa.struct(
    [
        pa.field("nr", pa.uint64()),
        pa.field("name", pa.string()),
        # rdi, rsi, rdx, r10, r8, r9 as the call saw them.
        pa.field("args", pa.list_(pa.field("element", pa.uint64()))),
        # rax after the call (negative: -errno); null when it did not return.
        pa.field("result", pa.int64(), nullable=True),
    ]
)
SYSCALL_FIELD = pa.field("syscall", SYSCALL_TYPE, nullable=True)
#: The `thread` column (version 4): which thread of the process ran the row,
#: 1 for the first, then 2, 3... in creation order. Older traces read as all 1.
THREAD_FIELD = pa.field("thread", pa.uint16(), nullable=False)

#: Values of the `kind` column, decided once per instruction address from
#: capstone's detail mode (groups and operand types, not the text).
INSTRUCTION_KINDS = ("call", "ret", "jmp", "indirect-jmp", "syscall", "other")
#: Per-instruction fact columns version 2 added. All are facts about the
#: instruction at `rip`, so the reader derives them for version 1 traces.
FACT_COLUMNS = ("kind", "label", "offset", "insn_bytes", "source")
FACT_FIELDS = (
    pa.field("kind", TEXT_TYPE, nullable=False),
    # Null below the first label (the `symbol` column then shows the hex address).
    pa.field("label", TEXT_TYPE, nullable=True),
    pa.field("offset", pa.int64(), nullable=True),
    pa.field("insn_bytes", pa.binary(), nullable=False),
    # "file:line" of the source line the instruction came from, null when unknown.
    pa.field("source", TEXT_TYPE, nullable=True),
)


_TEXT = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
_BYTES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)


def stored_as(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column stored as `actual` holds the format's `expected` type.

    Exactly the type, or the same values as another Parquet tool writes them
    back: plain, large or view strings (or a dictionary with other index
    types) for a dictionary string column, large or view binaries for binary
    and fixed-width binary columns (the width is checked on reading), large
    lists, structs with the same fields. The reader casts such columns back.
    """
    if actual.equals(expected):
        return True
    if pa.types.is_dictionary(expected):
        values = actual.value_type if pa.types.is_dictionary(actual) else actual
        return any(test(values) for test in _TEXT)
    if pa.types.is_string(expected):
        return any(test(actual) for test in _TEXT)
    if pa.types.is_fixed_size_binary(expected) and pa.types.is_dictionary(actual):
        return any(test(actual.value_type) for test in _BYTES)  # format 5's snapshots
    if pa.types.is_fixed_size_binary(expected) or pa.types.is_binary(expected):
        return any(test(actual) for test in _BYTES) or pa.types.is_fixed_size_binary(actual)
    if pa.types.is_list(expected):
        is_list = pa.types.is_list(actual) or pa.types.is_large_list(actual)
        return is_list and stored_as(actual.value_type, expected.value_type)
    if pa.types.is_struct(expected):
        if not pa.types.is_struct(actual):
            return False
        names = [actual.field(i).name for i in range(actual.num_fields)]
        return all(
            expected.field(i).name in names
            and stored_as(actual.field(expected.field(i).name).type, expected.field(i).type)
            for i in range(expected.num_fields)
        )
    return False


def stack_column(name: str) -> str:
    return f"{STACK_PREFIX}{name}"


#: Suffix of the key of a stack's overflow window: `green__below`.
BELOW = "__below"


def overflow_key(stack: str) -> str:
    """The snapshot key of the bytes under `stack`'s base that an overflow reached."""
    return stack + BELOW


def overflow_stack(key: str) -> str | None:
    """The stack an overflow window's key names, or None for an ordinary key."""
    return key[: -len(BELOW)] if key.endswith(BELOW) and len(key) > len(BELOW) else None


def snapshot_misfit(
    key: str, base: int, size: int, stacks: dict[str, tuple[int, int]]
) -> str | None:
    """Why a snapshot window breaks the format's rule, or None when it keeps it.

    `stacks` maps each stack region's name to its (base, top). A window keyed
    by a stack's name lies inside that stack. A window keyed `<stack>__below`
    (an overflow window, docs/trace-format.md) is not inside any region: it
    ends exactly at that stack's base. A region's own name wins over the
    suffix, so a stack called `x__below` keeps the ordinary rule.
    """
    if key in stacks:
        lo, hi = stacks[key]
        return None if lo <= base and base + size <= hi else "is not inside its region"
    owner = overflow_stack(key)
    if owner is None or owner not in stacks:
        return "is not of a stack region"
    if base + size != stacks[owner][0]:
        return f"does not end at {owner!r}'s base"
    return None


def schema(snapshots: dict[str, SnapshotWindow], version: int = FORMAT_VERSION) -> pa.Schema:
    """The Arrow schema of a trace of `version` (the reader presents v1 as v2)."""
    fields = [pa.field("step", pa.int64(), nullable=False)]
    fields += [pa.field(name, pa.uint64(), nullable=False) for name in REGISTERS]
    fields += [
        pa.field("insn", TEXT_TYPE, nullable=False),
        pa.field("symbol", TEXT_TYPE, nullable=False),
    ]
    if version >= 2:
        fields += FACT_FIELDS
    fields += [
        pa.field("reads", ACCESS_TYPE, nullable=False),
        pa.field("writes", ACCESS_TYPE, nullable=False),
    ]
    fields += [
        pa.field(window.column, pa.binary(window.size), nullable=False)
        for window in snapshots.values()
    ]
    if version >= 3:
        fields.append(SYSCALL_FIELD)
    if version >= 4:
        fields.append(THREAD_FIELD)
    return pa.schema(fields)


#: How format 5 stores a stack snapshot column: each row's index into the row
#: group's distinct versions of the window. Parquet dictionary-encodes the
#: column either way; given the dictionary, it writes it as it is instead of
#: hashing every row's bytes again. Readers get `binary(size)` as before.
SNAPSHOT_STORED_TYPE = pa.dictionary(pa.int32(), pa.binary())


def as_stored(columns: pa.Schema) -> pa.Schema:
    """`columns` (a `schema` or `hook_schema`) as the recorder writes a format-5 file:
    the fixed-width snapshot columns as SNAPSHOT_STORED_TYPE."""
    for index, column in enumerate(columns):
        if pa.types.is_fixed_size_binary(column.type):
            columns = columns.set(index, column.with_type(SNAPSHOT_STORED_TYPE))
    return columns


def hook_schema(snapshots: dict[str, SnapshotWindow]) -> pa.Schema:
    """The columns the recording hooks fill: every column but `syscall`, which
    comes from the kernel's log, and `thread`, from the schedule (record/recorder.py)."""
    full = schema(snapshots)
    full = full.remove(full.get_field_index(THREAD_FIELD.name))
    return full.remove(full.get_field_index(SYSCALL_FIELD.name))


@dataclass(frozen=True)
class SnapshotWindow:
    """The bytes of a stack region that its `stack__` column holds."""

    column: str
    base: int
    size: int

    @property
    def top(self) -> int:
        return self.base + self.size


@dataclass(frozen=True)
class StopInfo:
    reason: str
    step: int
    detail: str


@dataclass(frozen=True)
class ScenarioInfo:
    name: str
    description: str
    syntax: str
    entry: str
    source: str
    expect: Expectations
    breaks: str | None = None


@dataclass(frozen=True)
class SourceLine:
    """The first instruction of a source line: `code.lines` entries."""

    addr: int
    #: The assembly file relative to the scenario file, or the scenario
    #: file's name for a program written inline in it (an ELF: as DWARF says).
    file: str
    line: int


class SourceLines:
    """`source_line(addr)`: the rule shared by the recorder's `source` column and the readers."""

    def __init__(self, lines: tuple[SourceLine, ...], code: tuple[Region, ...]) -> None:
        self._lines = sorted(lines, key=lambda e: e.addr)
        self._addrs = [e.addr for e in self._lines]
        self._code = code

    def __call__(self, addr: int) -> tuple[str, int] | None:
        region = next((r for r in self._code if r.contains(addr)), None)
        if region is None:
            return None
        i = bisect.bisect_right(self._addrs, addr) - 1
        # Line 0 is DWARF's "no source line from here" (the end of a sequence,
        # code compiled without debug information after it).
        if i < 0 or self._addrs[i] < region.base or self._lines[i].line == 0:
            return None
        return self._lines[i].file, self._lines[i].line


@dataclass(frozen=True)
class ProgramInfo:
    """What was recorded: a scenario file or an ELF binary, and its hash."""

    kind: Literal["scenario", "elf"]
    #: A scenario: the path as given on the command line, or the built-in's name.
    path: str
    #: sha256 (hex) of the scenario file's bytes or of the binary; None only
    #: for traces of format version 1, which did not record it.
    sha256: str | None


@dataclass(frozen=True)
class SyscallRecord:
    """One system call the program made: at `step` (the row of its `syscall`)."""

    step: int
    nr: int
    name: str
    #: rdi, rsi, rdx, r10, r8, r9 as the call saw them.
    args: tuple[int, ...]
    #: What rax held after the call (negative: -errno); None when the call
    #: did not return (exit, exit_group).
    result: int | None


@dataclass(frozen=True)
class StartInfo:
    """Recording began past the entry (`--from SYMBOL`): where, and after how many steps."""

    symbol: str
    #: Instructions that ran, unrecorded, before the trace's step 0.
    step: int


@dataclass(frozen=True)
class TraceMetadata:
    scenario: ScenarioInfo
    regions: tuple[Region, ...]
    symbols: dict[str, int]
    code_base: int
    code: bytes
    snapshots: dict[str, SnapshotWindow]
    initial: dict[str, int]
    final: dict[str, int]
    stop: StopInfo
    stdout: str
    stderr: str
    options: dict[str, Any]
    tool: dict[str, str]
    steps: int
    #: The first instruction of each source line, in address order (for
    #: listings that show the source beside the code): see `source_line`.
    lines: tuple[SourceLine, ...] = ()
    program: ProgramInfo | None = None
    #: Version 2 only: the system calls (version 3 keeps them in the `syscall`
    #: column; `Trace.syscalls()` reads either).
    syscalls: tuple[SyscallRecord, ...] = ()
    #: Version 3: how often each system call was made, by name, and how many
    #: of those the machine answered -ENOSYS (not emulated): {name: [calls, enosys]}.
    syscall_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    start: StartInfo | None = None
    format: str = FORMAT_NAME
    #: The version of the file read (a version 1 trace keeps 1 after its upgrade).
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def _source_lines(self) -> SourceLines:
        return SourceLines(self.lines, tuple(r for r in self.regions if r.kind == "code"))

    def source_line(self, addr: int) -> tuple[str, int] | None:
        """(file, line) of the code at `addr`: its line's entry, else the nearest below.

        Only inside a code region, and only from a line that starts in the
        same region: an address in a stack or past the code has no line.
        """
        return self._source_lines(addr)

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    @property
    def threads(self) -> list[dict[str, Any]]:
        """Each thread of a program that made threads (`threads.list`, checked on read:
        number, tid, ...); [] for a program that made none."""
        entry = self.extra.get("threads")
        return list(entry["list"]) if isinstance(entry, dict) else []

    @property
    def thread_slice(self) -> int | None:
        """The scheduler's slice (`threads.slice`, checked on read) of a program that made
        threads; None for a program that made none."""
        entry = self.extra.get("threads")
        return int(entry["slice"]) if isinstance(entry, dict) else None

    @property
    def stacks(self) -> tuple[Region, ...]:
        return tuple(r for r in self.regions if r.kind == "stack")

    def region_of(self, addr: int) -> Region | None:
        for region in self.regions:
            if region.contains(addr):
                return region
        return None

    def to_json(self) -> str:
        doc = {
            "format": self.format,
            "version": self.version,
            "tool": self.tool,
            "scenario": {
                "name": self.scenario.name,
                "description": self.scenario.description,
                "syntax": self.scenario.syntax,
                "entry": self.scenario.entry,
                "source": self.scenario.source,
                "expect": self.scenario.expect.to_json(),
                "breaks": self.scenario.breaks,
            },
            "layout": {
                "regions": [r.to_json() for r in self.regions],
                "symbols": self.symbols,
            },
            "code": {
                "base": self.code_base,
                "bytes": self.code.hex(),
                "lines": [[e.addr, e.file, e.line] for e in self.lines],
            },
            "program": None
            if self.program is None
            else {
                "kind": self.program.kind,
                "path": self.program.path,
                "sha256": self.program.sha256,
            },
            "snapshots": {
                name: {"column": w.column, "base": w.base, "size": w.size}
                for name, w in self.snapshots.items()
            },
            "initial": self.initial,
            "final": self.final,
            "steps": self.steps,
            "stop": {
                "reason": self.stop.reason,
                "step": self.stop.step,
                "detail": self.stop.detail,
            },
            "output": {"stdout": self.stdout, "stderr": self.stderr},
            "options": self.options,
            **self.extra,
        }
        if self.start is not None:
            doc["start"] = {"symbol": self.start.symbol, "step": self.start.step}
        if self.version < 3:
            doc["syscalls"] = [
                {
                    "step": c.step,
                    "nr": c.nr,
                    "name": c.name,
                    "args": list(c.args),
                    "result": c.result,
                }
                for c in self.syscalls
            ]
        else:
            doc["syscall_counts"] = {
                name: list(counts) for name, counts in self.syscall_counts.items()
            }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TraceMetadata:
        return cls.from_doc(json.loads(text))

    @classmethod
    def from_doc(cls, doc: Any) -> TraceMetadata:
        """`from_json` of the document already parsed (the reader parses it once)."""
        known = {
            "format",
            "version",
            "tool",
            "scenario",
            "layout",
            "code",
            "snapshots",
            "initial",
            "final",
            "steps",
            "stop",
            "output",
            "options",
            "program",
            "syscalls",
            "syscall_counts",
            "start",
        }
        version = int(doc["version"])
        s = doc["scenario"]
        if not isinstance(s.get("expect") or {}, dict):
            raise TypeError("scenario.expect must be an object")
        metadata = cls(
            format=doc["format"],
            version=version,
            tool=dict(doc.get("tool", {})),
            scenario=ScenarioInfo(
                name=s["name"],
                description=s.get("description", ""),
                syntax=s.get("syntax", "att"),
                entry=s["entry"],
                source=s["source"],
                expect=Expectations.from_json(s.get("expect") or {}),
                breaks=s.get("breaks"),
            ),
            regions=tuple(Region.from_json(r) for r in doc["layout"]["regions"]),
            symbols={k: int(v) for k, v in doc["layout"]["symbols"].items()},
            code_base=int(doc["code"]["base"]),
            code=bytes.fromhex(doc["code"]["bytes"]),
            lines=_lines(doc, version),
            program=_program(doc, version),
            syscalls=tuple(_syscall(c) for c in doc.get("syscalls") or []),
            syscall_counts={
                str(name): (int(counts[0]), int(counts[1]))
                for name, counts in (doc.get("syscall_counts") or {}).items()
            },
            start=_start(doc.get("start")),
            snapshots={
                name: SnapshotWindow(w["column"], int(w["base"]), int(w["size"]))
                for name, w in doc["snapshots"].items()
            },
            initial={k: int(v) for k, v in doc["initial"].items()},
            final={k: int(v) for k, v in doc["final"].items()},
            steps=int(doc["steps"]),
            stop=StopInfo(doc["stop"]["reason"], int(doc["stop"]["step"]), doc["stop"]["detail"]),
            stdout=doc["output"]["stdout"],
            stderr=doc["output"]["stderr"],
            options=dict(doc.get("options", {})),
            extra={k: v for k, v in doc.items() if k not in known},
        )
        _check_types(metadata)
        return metadata


def _lines(doc: dict[str, Any], version: int) -> tuple[SourceLine, ...]:
    entries = doc["code"].get("lines") or []
    if version == 1:
        # Version 1 kept [addr, line] and no file: its lines counted in the
        # scenario file for inline programs (all the built-ins), so name that.
        file = f"{doc['scenario']['name']}.toml"
        lines = [SourceLine(int(addr), file, int(line)) for addr, line in entries]
    else:
        lines = [SourceLine(int(addr), str(file), int(line)) for addr, file, line in entries]
    return tuple(sorted(lines, key=lambda e: e.addr))


def _program(doc: dict[str, Any], version: int) -> ProgramInfo:
    if version == 1:
        return ProgramInfo("scenario", str(doc["scenario"]["name"]), None)
    p = doc["program"]
    if p["kind"] not in ("scenario", "elf"):
        raise ValueError(f"program.kind must be scenario or elf, got {p['kind']!r}")
    return ProgramInfo(p["kind"], p["path"], p["sha256"])


def _syscall(c: dict[str, Any]) -> SyscallRecord:
    result = c.get("result")
    return SyscallRecord(
        step=int(c["step"]),
        nr=int(c["nr"]),
        name=c["name"],
        args=tuple(int(a) for a in c["args"]),
        result=None if result is None else int(result),
    )


def signed64(value: int) -> int:
    """A 64-bit register value as the signed number a result column holds."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


def syscall_column(calls: list[SyscallRecord], first_step: int, n_rows: int) -> pa.Array:
    """The `syscall` column of rows `first_step ..< first_step + n_rows`.

    Built from buffers (trace/arrays.py): `pa.array` of the rows would import pandas."""
    import numpy as np

    from . import arrays

    if not calls:
        return arrays.all_null(SYSCALL_TYPE, n_rows)
    rows = np.array([call.step - first_step for call in calls], dtype=np.int64)
    absent = np.ones(n_rows, dtype=np.bool_)
    absent[rows] = False
    nr = np.zeros(n_rows, dtype=np.uint64)
    nr[rows] = [call.nr for call in calls]
    # The names of the rows with a call (the last call of a row, if two had one);
    # every other row's is empty: built from those alone, not from n_rows strings.
    names: dict[int, bytes] = {}
    arg_counts = np.zeros(n_rows, dtype=np.int64)
    for row, call in zip(rows.tolist(), calls, strict=True):
        names[row] = call.name.encode()
        arg_counts[row] = len(call.args)
    named = sorted(names)
    name_lengths = np.zeros(n_rows, dtype=np.int64)
    name_lengths[named] = [len(names[row]) for row in named]
    name_offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(name_lengths, out=name_offsets[1:])
    name_bytes = b"".join(names[row] for row in named)
    args = np.array([a for call in calls for a in call.args], dtype=np.uint64)
    no_result = absent.copy()
    result = np.zeros(n_rows, dtype=np.int64)
    for row, call in zip(rows.tolist(), calls, strict=True):
        if call.result is None:
            no_result[row] = True
        else:
            result[row] = signed64(call.result)
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(arg_counts, out=offsets[1:])
    validity = pa.py_buffer(np.packbits(~absent, bitorder="little"))
    children = [
        arrays.with_nulls(nr, pa.uint64(), absent),
        pa.Array.from_buffers(
            pa.string(),
            n_rows,
            [validity, pa.py_buffer(name_offsets), pa.py_buffer(name_bytes)],
            int(absent.sum()),
        ),
        pa.Array.from_buffers(
            SYSCALL_TYPE.field("args").type,
            n_rows,
            [validity, pa.py_buffer(offsets)],
            int(absent.sum()),
            children=[arrays.numeric(args, pa.uint64())],
        ),
        arrays.with_nulls(result, pa.int64(), no_result),
    ]
    return pa.Array.from_buffers(
        SYSCALL_TYPE, n_rows, [validity], int(absent.sum()), children=children
    )


def syscalls_in(
    steps: pa.Array | pa.ChunkedArray, column: pa.Array | pa.ChunkedArray
) -> list[SyscallRecord]:
    """The calls a `syscall` column holds, with the `step` column beside it."""
    import pyarrow.compute as pc  # not at import: record does not need it (62 ms)

    made = pc.is_valid(column)
    return [
        SyscallRecord(step, call["nr"], call["name"], tuple(call["args"]), call["result"])
        for step, call in zip(
            pc.filter(steps, made).to_pylist(), pc.filter(column, made).to_pylist(), strict=True
        )
    ]


def _start(d: dict[str, Any] | None) -> StartInfo | None:
    return None if d is None else StartInfo(d["symbol"], int(d["step"]))


def _check_types(metadata: TraceMetadata) -> None:
    """Refuse hand-edited metadata whose values the rest of the code cannot use.

    `from_json` converts numbers with `int()`, but a string field holding a
    number or null, or a region of negative size, would only fail deep inside
    a command, with a traceback.
    """
    texts = {
        "scenario.name": metadata.scenario.name,
        "scenario.description": metadata.scenario.description,
        "scenario.syntax": metadata.scenario.syntax,
        "scenario.entry": metadata.scenario.entry,
        "scenario.source": metadata.scenario.source,
        "stop.reason": metadata.stop.reason,
        "stop.detail": metadata.stop.detail,
        "output.stdout": metadata.stdout,
        "output.stderr": metadata.stderr,
        **{f"snapshots.{name}.column": w.column for name, w in metadata.snapshots.items()},
        **{f"syscalls[{i}].name": c.name for i, c in enumerate(metadata.syscalls)},
        **{f"code.lines[{i}].file": e.file for i, e in enumerate(metadata.lines)},
    }
    if metadata.program is not None:
        texts["program.path"] = metadata.program.path
    if metadata.start is not None:
        texts["start.symbol"] = metadata.start.symbol
    optional_texts = {
        "scenario.breaks": metadata.scenario.breaks,
        "scenario.expect.stdout": metadata.scenario.expect.stdout,
        "scenario.expect.stop": metadata.scenario.expect.stop,
        "program.sha256": metadata.program.sha256 if metadata.program else None,
    }
    for where, value in [*texts.items(), *optional_texts.items()]:
        if not isinstance(value, str) and not (value is None and where in optional_texts):
            raise TypeError(f"{where} must be a string, got {value!r}")
    for region in metadata.regions:
        if region.base < 0 or region.size < 1:
            raise ValueError(f"region {region.name!r} has base {region.base}, size {region.size}")
    by_name = {r.name: (r.base, r.top) for r in metadata.regions}
    for name, window in metadata.snapshots.items():
        misfit = snapshot_misfit(name, window.base, window.size, by_name)
        if misfit is not None:
            raise ValueError(f"snapshot {name!r} {misfit}")
