"""One validation of a trace before any command uses it (docs/trace-format.md).

A trace may come from a CI artifact or a colleague: anything in it may be
forged or damaged. `load_trace` calls the two checks here, and every command
reads traces through `load_trace`, so a command only ever sees a trace whose

- metadata has exactly the documented JSON types (an integer is a JSON
  integer, not a string, float or bool) and ranges (addresses, sizes and
  register values within 64 bits, counts non-negative, options within the
  limits the recorder itself accepts);
- layout is consistent: region names unique, regions inside the 64-bit
  address space and not overlapping, one code region holding the code bytes,
  symbols inside the code, snapshot windows inside their stacks;
- columns have exactly the documented Arrow types and no nulls, and as many
  rows as the metadata's `steps`, numbered 0, 1, 2, ...

Every failure is a `BadInput` whose one line names the file and the first
thing found wrong. The checks read the Parquet footer and, only for columns a
foreign writer declared nullable, that column: a trace of the tool's own
writer is validated without reading its rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..arch import REGISTERS
from ..errors import BadInput
from ..scenario import STOP_REASONS
from .format import snapshot_misfit, stored_as

U64_LIMIT = 1 << 64
#: Bounds the recorder enforces on its own options (record/recorder.py,
#: scenario.py); a trace claiming others was not written by it.
MAX_STEPS_LIMIT = 1_000_000_000
SNAPSHOT_LIMIT_RANGE = (8, 1 << 20)
MAX_ROW_GROUP = 1 << 20
REGION_KINDS = ("code", "stack", "data", "heap", "mapped")
_PERMS = re.compile(r"^[r-][w-][x-]$")
_HEX = re.compile(r"^(?:[0-9a-f]{2})*$")


class _Invalid(Exception):
    """What is wrong, with the JSON path of the field (e.g. `layout.regions[2].base`)."""


# --- JSON shape checks: each takes (value, where) and raises _Invalid --------


def _fail(where: str, message: str) -> _Invalid:
    return _Invalid(f"{where} {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    """A JSON integer with lo <= value < hi (JSON has no other integer spelling)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"must be an integer, got {_show(value)}")
    if not lo <= value < hi:
        raise _fail(where, f"must be in [{lo}, {hi}), got {_show(value)}")
    return value


def _u64(value: Any, where: str) -> int:
    return _int(value, where, 0, U64_LIMIT)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"must be a string, got {_show(value)}")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"must be an object, got {_show(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"must be a list, got {_show(value)}")
    return value


def _field(doc: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in doc:
        raise _fail(f"{where}{key}", "is missing")
    return doc[key]


def _registers(value: Any, where: str) -> dict[str, int]:
    registers = _object(value, where)
    for name in REGISTERS:
        _u64(_field(registers, name, f"{where}."), f"{where}.{name}")
    for name, register in registers.items():
        _u64(register, f"{where}.{name}")
    return registers


def check_metadata_doc(doc: Any) -> None:
    """The metadata JSON's documented types and ranges; raises _Invalid."""
    doc = _object(doc, "the metadata")
    _text(_field(doc, "format", ""), "format")
    _int(_field(doc, "version", ""), "version", 1, 1 << 31)
    tool = _object(doc.get("tool", {}), "tool")
    for name, version in tool.items():
        _text(version, f"tool.{name}")

    scenario = _object(_field(doc, "scenario", ""), "scenario")
    for key in ("name", "entry", "source"):
        _text(_field(scenario, key, "scenario."), f"scenario.{key}")
    for key in ("description", "syntax"):
        _text(scenario.get(key, ""), f"scenario.{key}")
    _optional_text(scenario.get("breaks"), "scenario.breaks")
    expect = _object(scenario.get("expect") or {}, "scenario.expect")
    _optional_text(expect.get("stdout"), "scenario.expect.stdout")
    _optional_text(expect.get("stop"), "scenario.expect.stop")
    for i, ret in enumerate(_list(expect.get("ret", []), "scenario.expect.ret")):
        at = f"scenario.expect.ret[{i}]"
        ret = _object(ret, at)
        _text(_field(ret, "stack", f"{at}."), f"{at}.stack")
        _text(_field(ret, "target", f"{at}."), f"{at}.target")
        _int(_field(ret, "index", f"{at}."), f"{at}.index", 0, U64_LIMIT)

    layout = _object(_field(doc, "layout", ""), "layout")
    for i, region in enumerate(_list(_field(layout, "regions", "layout."), "layout.regions")):
        at = f"layout.regions[{i}]"
        region = _object(region, at)
        _text(_field(region, "name", f"{at}."), f"{at}.name")
        kind = _text(_field(region, "kind", f"{at}."), f"{at}.kind")
        if kind not in REGION_KINDS:
            raise _fail(f"{at}.kind", f"must be one of {', '.join(REGION_KINDS)}, got {kind!r}")
        base = _u64(_field(region, "base", f"{at}."), f"{at}.base")
        size = _int(_field(region, "size", f"{at}."), f"{at}.size", 1, U64_LIMIT)
        if base + size > U64_LIMIT:
            raise _fail(at, f"ends past 2^64 (base {base:#x}, size {size:#x})")
        perms = _text(_field(region, "perms", f"{at}."), f"{at}.perms")
        if not _PERMS.match(perms):
            raise _fail(f"{at}.perms", f"must look like 'rw-', got {perms!r}")
        if "label" in region:
            _text(region["label"], f"{at}.label")
    for name, addr in _object(_field(layout, "symbols", "layout."), "layout.symbols").items():
        # `_u64`'s test first, its message (an f-string each) only for a bad value:
        # a dynamically linked program has 10,000 symbols, checked twice a record.
        if type(addr) is not int or not 0 <= addr < U64_LIMIT:
            _u64(addr, f"layout.symbols.{name}")

    steps = _int(_field(doc, "steps", ""), "steps", 1, MAX_STEPS_LIMIT + 1)
    code = _object(_field(doc, "code", ""), "code")
    _u64(_field(code, "base", "code."), "code.base")
    if not _HEX.match(_text(_field(code, "bytes", "code."), "code.bytes")):
        raise _fail("code.bytes", "must be lower-case hex digits in pairs")
    version = doc["version"]
    # Version 1: [address, line]; version 2: [address, file, line].
    width = 2 if version == 1 else 3
    for i, line in enumerate(_list(code.get("lines") or [], "code.lines")):
        # The common case tested first, the messages (an f-string each) only for a
        # bad entry: a dynamically linked program has thousands of lines.
        if (
            type(line) is list
            and len(line) == width
            and type(line[0]) is int
            and 0 <= line[0] < U64_LIMIT
            and (width == 2 or type(line[1]) is str)
            and type(line[-1]) is int
            and 0 <= line[-1] < 1 << 31
        ):
            continue
        at = f"code.lines[{i}]"
        entry = _list(line, at)
        if len(entry) != width:
            shape = "[address, line]" if width == 2 else "[address, file, line]"
            raise _fail(at, f"must be {shape}, got {_show(entry)}")
        _u64(entry[0], f"{at}[0]")
        if width == 3:
            _text(entry[1], f"{at}[1]")
        _int(entry[-1], f"{at}[{len(entry) - 1}]", 0, 1 << 31)  # DWARF: 0 = no line
    if version != 1:
        _check_v2_facts(doc)

    snapshots = _object(_field(doc, "snapshots", ""), "snapshots")
    for name, window in snapshots.items():
        at = f"snapshots.{name}"
        window = _object(window, at)
        _text(_field(window, "column", f"{at}."), f"{at}.column")
        _u64(_field(window, "base", f"{at}."), f"{at}.base")
        _int(_field(window, "size", f"{at}."), f"{at}.size", 1, SNAPSHOT_LIMIT_RANGE[1] + 1)

    _registers(_field(doc, "initial", ""), "initial")
    _registers(_field(doc, "final", ""), "final")
    stop = _object(_field(doc, "stop", ""), "stop")
    reason = _text(_field(stop, "reason", "stop."), "stop.reason")
    if reason not in STOP_REASONS:
        raise _fail("stop.reason", f"must be one of {', '.join(STOP_REASONS)}, got {reason!r}")
    _int(_field(stop, "step", "stop."), "stop.step", 0, steps)
    _text(_field(stop, "detail", "stop."), "stop.detail")
    output = _object(_field(doc, "output", ""), "output")
    _text(_field(output, "stdout", "output."), "output.stdout")
    _text(_field(output, "stderr", "output."), "output.stderr")
    if "output_cut" in doc:  # bytes of output past the cap, not kept
        cut = _object(doc["output_cut"], "output_cut")
        for stream in ("stdout", "stderr"):
            _int(_field(cut, stream, "output_cut."), f"output_cut.{stream}", 0, U64_LIMIT)
    if "threads" in doc:
        _check_threads(doc["threads"])

    options = _object(doc.get("options", {}), "options")
    if "max_steps" in options:
        limit = _int(options["max_steps"], "options.max_steps", 1, MAX_STEPS_LIMIT + 1)
        if steps > limit:
            raise _fail("steps", f"is {steps}, more than options.max_steps ({limit})")
    if "snapshot_limit" in options:
        lo, hi = SNAPSHOT_LIMIT_RANGE
        _int(options["snapshot_limit"], "options.snapshot_limit", lo, hi + 1)
    if "row_group_size" in options:
        _int(options["row_group_size"], "options.row_group_size", 1, MAX_ROW_GROUP + 1)
    if "sentinel_return" in options:
        _u64(options["sentinel_return"], "options.sentinel_return")
    for key in ("max_output", "max_trace_size"):
        if key in options:
            _int(options[key], f"options.{key}", 0, U64_LIMIT)


#: The `thread` column is uint16.
MAX_THREAD_NUMBER = (1 << 16) - 1


def _check_threads(value: Any) -> None:
    """`threads` (format 4, a program that made threads): the slice and each thread."""
    threads = _object(value, "threads")
    _int(_field(threads, "slice", "threads."), "threads.slice", 1, U64_LIMIT)
    listed = _list(_field(threads, "list", "threads."), "threads.list")
    for i, entry in enumerate(listed):
        where = f"threads.list[{i}]"
        thread = _object(entry, where)
        _int(_field(thread, "number", f"{where}."), f"{where}.number", 1, MAX_THREAD_NUMBER + 1)
        _int(_field(thread, "tid", f"{where}."), f"{where}.tid", 1, 1 << 31)
        for key in ("stack_top", "tls"):
            if key in thread:
                _u64(thread[key], f"{where}.{key}")
        if thread.get("exit_status") is not None:
            _int(thread["exit_status"], f"{where}.exit_status", 0, 256)


def _check_v2_facts(doc: dict[str, Any]) -> None:
    """`program`, `syscalls` and `start`, which version 2 added."""
    program = _object(_field(doc, "program", ""), "program")
    kind = _text(_field(program, "kind", "program."), "program.kind")
    if kind not in ("scenario", "elf"):
        raise _fail("program.kind", f"must be scenario or elf, got {kind!r}")
    _text(_field(program, "path", "program."), "program.path")
    _optional_text(program.get("sha256"), "program.sha256")
    steps = doc["steps"]
    for i, call in enumerate(_list(doc.get("syscalls") or [], "syscalls")):
        at = f"syscalls[{i}]"
        call = _object(call, at)
        _int(_field(call, "step", f"{at}."), f"{at}.step", 0, steps)
        _u64(_field(call, "nr", f"{at}."), f"{at}.nr")
        _text(_field(call, "name", f"{at}."), f"{at}.name")
        for j, arg in enumerate(_list(_field(call, "args", f"{at}."), f"{at}.args")):
            _u64(arg, f"{at}.args[{j}]")
        if call.get("result") is not None:
            _int(call["result"], f"{at}.result", -(1 << 63), U64_LIMIT)
    counts = _object(doc.get("syscall_counts") or {}, "syscall_counts")
    for name, pair in counts.items():
        at = f"syscall_counts.{name}"
        pair = _list(pair, at)
        if len(pair) != 2:
            raise _fail(at, "must be [calls, enosys]")
        calls = _int(pair[0], f"{at}[0]", 0, U64_LIMIT)
        _int(pair[1], f"{at}[1]", 0, calls + 1)
    if doc.get("start") is not None:
        start = _object(doc["start"], "start")
        _text(_field(start, "symbol", "start."), "start.symbol")
        _int(_field(start, "step", "start."), "start.step", 0, U64_LIMIT)


# --- Consistency of the parsed metadata --------------------------------------


def check_layout(doc: Mapping[str, Any]) -> None:
    """Regions, code, symbols and snapshots agree with each other; raises _Invalid."""
    regions = doc["layout"]["regions"]
    names: set[str] = set()
    for region in regions:
        if region["name"] in names:
            raise _Invalid(f"layout.regions names {region['name']!r} twice")
        names.add(region["name"])
    # No two regions overlap, except that a stack may lie inside a heap, data
    # or mapped region (a program's stack found in its heap); such nested
    # stacks do not overlap each other. One pass in address order.
    # A stack as large as the region it is found in (a whole mapping) sorts after it.
    ordered = sorted(regions, key=lambda r: (r["base"], -r["size"], r["kind"] == "stack"))
    outer: dict[str, Any] | None = None
    inner_end = 0
    for region in ordered:
        end = region["base"] + region["size"]
        if outer is None or region["base"] >= outer["base"] + outer["size"]:
            outer, inner_end = region, region["base"]
            continue
        nested = (
            region["kind"] == "stack"
            and outer["kind"] in ("heap", "data", "mapped")
            and end <= outer["base"] + outer["size"]
            and region["base"] >= inner_end
        )
        if not nested:
            raise _Invalid(f"regions {outer['name']!r} and {region['name']!r} overlap")
        inner_end = end
    codes = [(r["base"], r["base"] + r["size"]) for r in regions if r["kind"] == "code"]
    if not codes:
        raise _Invalid("layout.regions has no code region")

    def in_code(addr: int, end: int | None = None) -> bool:
        return any(lo <= addr and (end if end is not None else addr) <= hi for lo, hi in codes)

    # The program's own labels stand in its code or in its .data region (GNU-as front end).
    program = codes + [(r["base"], r["base"] + r["size"]) for r in regions if r["kind"] == "data"]

    def in_program(addr: int) -> bool:
        return any(lo <= addr <= hi for lo, hi in program)

    code_base = doc["code"]["base"]
    code_end = code_base + len(doc["code"]["bytes"]) // 2
    elf = isinstance(doc.get("program"), dict) and doc["program"].get("kind") == "elf"
    if code_end == code_base and not elf:
        raise _Invalid("code.bytes is empty")
    if code_end > code_base and not in_code(code_base, code_end):
        raise _Invalid(
            f"code.base and code.bytes ({code_base:#x}..{code_end:#x}) are not inside a code region"
        )
    if not elf:  # an ELF's symbol table also names data and absolute values
        for name, addr in doc["layout"]["symbols"].items():
            # A label may stand just past the last instruction (an end marker).
            if not in_program(addr):
                raise _Invalid(f"symbol {name!r} at {addr:#x} is outside the program")
    for i, entry in enumerate([] if elf else doc["code"].get("lines") or []):
        if not in_program(entry[0]):  # (an ELF's DWARF lines cover code not mapped)
            raise _Invalid(f"code.lines[{i}] address {entry[0]:#x} is outside the program")
    stacks = {
        r["name"]: (r["base"], r["base"] + r["size"]) for r in regions if r["kind"] == "stack"
    }
    columns: set[str] = set()
    for name, window in doc["snapshots"].items():
        # Inside the stack of that name, or `<stack>__below`: ending at its base.
        misfit = snapshot_misfit(name, window["base"], window["size"], stacks)
        if misfit is not None:
            raise _Invalid(f"snapshot {name!r} {misfit}")
        if window["column"] in columns:
            raise _Invalid(f"snapshots name column {window['column']!r} twice")
        columns.add(window["column"])


def check_doc(path: Path, doc: Any) -> None:
    """All metadata checks, as one `BadInput` naming `path` on the first failure."""
    try:
        check_metadata_doc(doc)
        check_layout(doc)
    except _Invalid as exc:
        raise BadInput(f"{path}: corrupt trace metadata: {exc}") from None


# --- The rows ----------------------------------------------------------------


def _may_hold_forbidden_nulls(actual: pa.Field, expected: pa.Field) -> bool:
    """Whether the file's schema lets a value be null where the format says none is."""
    if actual.nullable and not expected.nullable:
        return True
    a, e = actual.type, expected.type
    if _is_list(a) and _is_list(e):
        return _may_hold_forbidden_nulls(a.value_field, e.value_field)
    if pa.types.is_struct(a) and pa.types.is_struct(e):
        return any(
            _may_hold_forbidden_nulls(a.field(e.field(i).name), e.field(i))
            for i in range(e.num_fields)
            if a.get_field_index(e.field(i).name) >= 0
        )
    return False


def _has_forbidden_nulls(array: pa.Array, expected: pa.Field) -> bool:
    """Whether `array` holds a null where `expected` (the format's field) has none."""
    if not expected.nullable and array.null_count:
        return True
    import pyarrow.compute as pc  # here: importing it costs 0.03 s of every `record`

    if _is_list(array.type) and _is_list(expected.type):
        return _has_forbidden_nulls(pc.list_flatten(array), expected.type.value_field)
    if pa.types.is_struct(array.type) and pa.types.is_struct(expected.type):
        e = expected.type
        if array.null_count:  # a null struct's fields say nothing (`syscall` off its rows)
            array = array.filter(pc.is_valid(array))
        return any(
            _has_forbidden_nulls(array.field(e.field(i).name), e.field(i))
            for i in range(e.num_fields)
            if array.type.get_field_index(e.field(i).name) >= 0
        )
    return False


def _is_list(kind: pa.DataType) -> bool:
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind))


def check_rows(
    path: Path,
    parquet: pq.ParquetFile,
    expected: pa.Schema,
    steps: int,
) -> None:
    """Column types exactly as documented, no nulls, `steps` rows numbered 0.. ."""
    actual = parquet.schema_arrow
    for field in expected:
        if field.name not in actual.names:
            raise BadInput(f"{path}: corrupt trace: column {field.name} is missing")
        found = actual.field(field.name).type
        fixed_width = pa.types.is_fixed_size_binary(found) and pa.types.is_fixed_size_binary(
            field.type
        )
        if not stored_as(found, field.type) or (fixed_width and found != field.type):
            raise BadInput(
                f"{path}: corrupt trace: column {field.name} is {found}, "
                f"the format says {field.type}"
            )
    rows = int(parquet.metadata.num_rows)
    if rows == 0:
        # The recorder refuses a program that stops before its first step.
        raise BadInput(f"{path}: corrupt trace: no rows")
    if rows != steps:
        raise BadInput(f"{path}: corrupt trace: {rows} rows, but the metadata says steps = {steps}")
    # Nulls: only where the format has none and the file's schema allows them
    # (the tool's own writer declares such columns non-nullable: nothing to read).
    suspect = [f for f in expected if _may_hold_forbidden_nulls(actual.field(f.name), f)]
    try:
        for group in range(parquet.num_row_groups):
            for field in suspect:
                column = parquet.read_row_group(group, [field.name]).column(0)
                if any(_has_forbidden_nulls(chunk, field) for chunk in column.chunks):
                    raise BadInput(f"{path}: corrupt trace: column {field.name} holds nulls")
        _check_step_numbers(path, parquet, rows)
    except (OSError, pa.ArrowException) as exc:
        first = (str(exc).splitlines() or ["unreadable"])[0]
        raise BadInput(f"{path}: corrupt trace (cannot read its rows: {first})") from None


def _check_step_numbers(path: Path, parquet: pq.ParquetFile, rows: int) -> None:
    """`step` runs 0 .. rows-1: checked from the footer's statistics when it has them."""
    index = parquet.schema_arrow.get_field_index("step")
    offset = 0
    for group in range(parquet.num_row_groups):
        meta = parquet.metadata.row_group(group)
        stats = meta.column(index).statistics
        n = meta.num_rows
        if n == 0:
            continue
        if stats is not None and stats.has_min_max:
            first, last = stats.min, stats.max
        else:
            import pyarrow.compute as pc

            values = parquet.read_row_group(group, ["step"]).column(0)
            first, last = pc.min(values).as_py(), pc.max(values).as_py()
        if (first, last) != (offset, offset + n - 1):
            raise BadInput(
                f"{path}: corrupt trace: row group {group} holds steps {first}..{last}, "
                f"expected {offset}..{offset + n - 1}"
            )
        offset += n
