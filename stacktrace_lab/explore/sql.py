"""SQL over traces: DuckDB views over the Parquet files themselves.

Nothing is loaded into Python: each view is a query over `read_parquet` of
the trace files, so DuckDB streams (and spills) a trace larger than memory,
and reads only the columns a query names. Several traces can be queried at
once; every view has a `trace` column, the file's name without `.parquet`.

From the metadata (small) the connection gets three tables: `traces` (one
row per file: scenario, steps, stop reason, final rip/rsp), `regions` and
`labels`; and macros `region_of(trace, addr)`, `region_index(trace, addr)`,
`stack_of(trace, addr)` and `symbol_of(trace, addr)` that name addresses the
way the rest of the tool does.

The views (documented in docs/sql.md):
- `steps`: one row per executed instruction (registers before it, `insn`,
  `symbol`, `kind`: call, ret, syscall or other, `stack`: the stack rsp is in);
- `accesses`: one row per memory read or write, with its region and index;
- `calls`: one row per call, with its target, rsp alignment and matching ret;
- `switches`: the steps after which rsp is in another stack;
- `planted`: rets that pop an address last written by an ordinary store;
- `syscalls`: one row per `syscall`, with its number, arguments and result.

DuckDB is an optional extra; `require_duckdb()` says how to install it.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.lookup import RegionLookup
from ..arch import REGISTERS
from ..errors import BadInput
from ..layout import Region
from ..symbols import LabelTable
from ..trace.reader import Trace, load_trace

if TYPE_CHECKING:
    import duckdb

INSTALL_HINT = "DuckDB is not installed: pip install 'stacktrace-lab[duckdb]'"

#: The views, in the order `query --help` and the docs list them.
VIEWS = ("steps", "accesses", "calls", "switches", "planted", "syscalls")

#: System V x86-64 argument registers of a system call, in order.
SYSCALL_ARGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


class DuckDBMissing(Exception):
    """DuckDB (the optional extra) is not installed."""


def require_duckdb() -> Any:
    try:
        import duckdb
    except ImportError:
        raise DuckDBMissing(INSTALL_HINT) from None
    return duckdb


@dataclass(frozen=True)
class TraceFile:
    name: str
    trace: Trace


def trace_name(path: Path) -> str:
    return path.name.removesuffix(".parquet")


def open_traces(paths: Sequence[Path]) -> list[TraceFile]:
    """Load each trace's metadata (checking it is a trace); names must be distinct."""
    files = [TraceFile(trace_name(p), load_trace(p)) for p in paths]
    seen: dict[str, Path] = {}
    for f in files:
        if f.name in seen:
            raise BadInput(
                f"{f.trace.path}: two traces named '{f.name}' ({seen[f.name]} too): "
                "the trace column would not tell them apart"
            )
        seen[f.name] = f.trace.path
    return files


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _case(pairs: list[tuple[str, str]], default: str = "NULL") -> str:
    if not pairs:
        return default
    return "CASE " + " ".join(f"WHEN {c} THEN {v}" for c, v in pairs) + f" ELSE {default} END"


def _search(starts: list[int], values: list[str]) -> str:
    """An expression of `a` that is `values[k]` for `starts[k] <= a < starts[k + 1]`: a
    binary search written as nested CASEs, so a row costs a few comparisons however
    many regions there are."""
    if len(values) == 1:
        return values[0]
    mid = len(values) // 2
    return (
        f"CASE WHEN a < {starts[mid]} THEN {_search(starts[:mid], values[:mid])} "
        f"ELSE {_search(starts[mid:], values[mid:])} END"
    )


def _by_address(regions: Sequence[Region], value: Callable[[Region], str], with_top: bool) -> str:
    """`value` of the first of `regions` holding `a` (NULL when none does)."""
    lookup = RegionLookup(regions, with_top=with_top)
    starts, values = [0], ["NULL"]
    for start, owner in zip(lookup.starts.tolist(), lookup.owner.tolist(), strict=True):
        v = value(regions[owner]) if owner >= 0 else "NULL"
        if v == values[-1]:
            continue  # the same answer as the span below: one span
        if start == starts[-1]:
            values[-1] = v
        else:
            starts.append(start)
            values.append(v)
    return _search(starts, values)


def _macros(files: Sequence[TraceFile]) -> list[str]:
    """Address-naming macros: per trace, a binary search over its regions' bounds."""
    region, base, stack = [], [], []
    for f in files:
        t = f"t = {_quote(f.name)}"
        regions = f.trace.metadata.regions
        stacks = [r for r in regions if r.kind == "stack"]
        if regions:
            region.append((t, _by_address(regions, lambda r: _quote(r.name), with_top=False)))
            base.append((t, _by_address(regions, lambda r: str(r.base), with_top=False)))
        if stacks:
            # A stack's top belongs to it: an empty stack's rsp is its top.
            stack.append((t, _by_address(stacks, lambda r: _quote(r.name), with_top=True)))
    return [
        f"CREATE MACRO region_of(t, a) AS {_case(region)}",
        f"CREATE MACRO region_index(t, a) AS (a::HUGEINT - {_case(base)})::BIGINT",
        # The one spelling of a slot people read elsewhere (`green[32]`), NULL outside regions.
        "CREATE MACRO slot_name(t, a) AS region_of(t, a) || '[' || region_index(t, a) || ']'",
        f"CREATE MACRO stack_of(t, a) AS {_case(stack)}",
        # The nearest label at or below a code address, `label` or `label+offset`.
        "CREATE MACRO symbol_of(t, a) AS ("
        "SELECT CASE WHEN a = l.addr THEN l.name ELSE l.name || '+' || (a - l.addr) END "
        "FROM labels l WHERE l.trace = t AND l.addr <= a AND region_of(t, a) = l.code_region "
        "ORDER BY l.addr DESC LIMIT 1)",
        # Little-endian bytes (up to 8) as an unsigned integer.
        "CREATE MACRO le_u64(d) AS CASE WHEN octet_length(d) BETWEEN 1 AND 8 THEN "
        "('0x' || array_to_string(list_reverse("
        "[substr(hex(d), 2 * i + 1, 2) for i in range(octet_length(d))]), ''))::UBIGINT END",
    ]


def _tables(con: duckdb.DuckDBPyConnection, files: Sequence[TraceFile]) -> None:
    con.execute(
        "CREATE TABLE traces (trace VARCHAR, path VARCHAR, scenario VARCHAR, steps BIGINT, "
        "stop VARCHAR, final_rip UBIGINT, final_rsp UBIGINT, final_rax UBIGINT, "
        "from_symbol VARCHAR, from_rsp UBIGINT)"
    )
    con.execute(
        "CREATE TABLE regions (trace VARCHAR, name VARCHAR, kind VARCHAR, base UBIGINT, "
        "size UBIGINT, top UBIGINT, label VARCHAR)"
    )
    con.execute(
        "CREATE TABLE labels (trace VARCHAR, name VARCHAR, addr UBIGINT, code_region VARCHAR)"
    )
    # The system calls the trace logged (names, and no result for exit).
    con.execute(
        "CREATE TABLE syscall_log (trace VARCHAR, step BIGINT, nr BIGINT, name VARCHAR, "
        "result BIGINT)"
    )
    for f in files:
        meta = f.trace.metadata
        # A trace that began past the entry (`--from`): where, and rsp at its row 0.
        began = meta.start is not None and f.trace.num_rows > 0
        con.execute(
            "INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                f.name,
                str(f.trace.path),
                meta.scenario.name,
                f.trace.num_rows,
                meta.stop.reason,
                int(meta.final.get("rip", 0)),
                int(meta.final.get("rsp", 0)),
                int(meta.final.get("rax", 0)),
                meta.start.symbol if began and meta.start is not None else None,
                int(f.trace.slice(0, 1, ["rsp"]).column(0)[0].as_py()) if began else None,
            ],
        )
        con.executemany(
            "INSERT INTO regions VALUES (?, ?, ?, ?, ?, ?, ?)",
            [[f.name, r.name, r.kind, r.base, r.size, r.top, r.label] for r in meta.regions],
        )
        calls = f.trace.syscalls()
        if calls:
            con.executemany(
                "INSERT INTO syscall_log VALUES (?, ?, ?, ?, ?)",
                [[f.name, c.step, c.nr, c.name, c.result] for c in calls],
            )
        # One name per address, the same rule as the trace's `symbol` column.
        table = LabelTable(meta.symbols)
        labels = []
        for addr in sorted(set(meta.symbols.values())):
            near = table.nearest(addr)
            code = meta.region_of(addr)
            if near is not None and code is not None and code.kind == "code":
                labels.append([f.name, near[0], addr, code.name])
        if labels:
            con.executemany("INSERT INTO labels VALUES (?, ?, ?, ?)", labels)


#: The kind of an instruction from its text, for traces without a `kind` column
#: (format version 1): the mnemonic after any prefix.
_KIND_FROM_TEXT = (
    "CASE regexp_extract(insn, "
    "'^(?:(?:rep|repz|repe|repne|repnz|bnd|notrack|lock|data16) )*(\\w+)', 1) "
    "WHEN 'call' THEN 'call' WHEN 'callq' THEN 'call' "
    "WHEN 'ret' THEN 'ret' WHEN 'retq' THEN 'ret' "
    "WHEN 'syscall' THEN 'syscall' ELSE 'other' END"
)

#: The next row of a step is the next row of its own thread: where the `thread`
#: column changes, the scheduler switched threads, and the row after is another
#: thread's (analysis/events.py, ThreadRuns).
_ORDER = "WINDOW w AS (PARTITION BY trace, thread ORDER BY step)"


def _transfers_next(kinds: str, columns: str) -> str:
    """The CTEs `x` and `nx` of `calls` and `planted` when no trace has threads: the
    steps of `kinds` with trace, step, rsp, `columns` and is_call, and the rip and rsp
    of their next row (the final ones after the last row).

    Without threads the next row is the one a step on: a hash join of these steps
    with the file's rows holds only them. The window over every row (`lead() OVER
    w`) sorts every row; on a ten-million-step trace it spilled to disk and cost
    more than half the query's CPU.
    """
    return (
        f"x AS (SELECT trace, step, rsp, {columns}kind = 'call' AS is_call FROM steps "
        f"  WHERE kind IN ({kinds})), "
        "nx AS (SELECT x.*, coalesce(n.rip, t.final_rip) AS next_rip, "
        "  coalesce(n.rsp, t.final_rsp) AS next_rsp FROM x JOIN traces t USING (trace) "
        "  LEFT JOIN raw n ON n.trace = x.trace AND n.step = x.step + 1), "
    )


def _views(columns: set[str], threaded: bool = True) -> list[str]:
    """The views; `columns` are the columns some trace file has (format 2 adds facts);
    `threaded`: some trace is of a program that made threads (the next row of a step
    is then the next of its thread, not always the row a step on)."""
    registers = ", ".join(REGISTERS)
    # Format 2 records each instruction's kind; a format 1 file's rows get it from the text.
    kind = f"coalesce(kind::VARCHAR, {_KIND_FROM_TEXT})" if "kind" in columns else _KIND_FROM_TEXT
    facts = "".join(
        f", {name}::VARCHAR AS {name}" if name != "offset" else ', "offset"'
        for name in ("label", "offset", "source")
        if name in columns
    )
    args = ", ".join(SYSCALL_ARGS)
    # Format 4 records each row's thread; an older file's rows are all thread 1.
    thread = "coalesce(thread, 1)::USMALLINT" if "thread" in columns else "1::USMALLINT"
    return [
        f"CREATE VIEW steps AS SELECT trace, step, {registers}, insn, symbol, "
        f"{kind} AS kind{facts}, stack_of(trace, rsp) AS stack, {thread} AS thread FROM raw",
        # One row per entry of `reads` and `writes`; `seq` is its position in the list.
        "CREATE VIEW accesses AS "
        "WITH a AS ("
        f"  SELECT trace, step, rip, symbol, insn, {'kind, ' if 'kind' in columns else ''}"
        "'read' AS access, "
        "         generate_subscripts(reads, 1) AS seq, unnest(reads) AS e "
        "  FROM raw WHERE len(reads) > 0 "
        "  UNION ALL "
        f"  SELECT trace, step, rip, symbol, insn, {'kind, ' if 'kind' in columns else ''}"
        "'write' AS access, "
        "         generate_subscripts(writes, 1) AS seq, unnest(writes) AS e "
        "  FROM raw WHERE len(writes) > 0) "
        f"SELECT trace, step, rip, symbol, insn, {kind} AS kind, access, seq, "
        "e.addr AS addr, e.size AS size, e.data AS data, le_u64(e.data) AS value, "
        "region_of(trace, e.addr) AS region, region_index(trace, e.addr) AS region_index, "
        "slot_name(trace, e.addr) AS slot_name "
        "FROM a",
        # The matching ret: the first later ret that pops the slot this call pushed.
        "CREATE VIEW calls AS "
        + (
            "WITH s AS (SELECT trace, step, rip, rsp, symbol, insn, kind, thread, "
            f"  lead(rip) OVER w AS next_rip FROM steps {_ORDER}), "
            "c AS (SELECT s.*, coalesce(s.next_rip, t.final_rip) AS target FROM s "
            "  JOIN traces t USING (trace) WHERE kind = 'call'), "
            "r AS (SELECT s.trace, s.step, s.rsp AS slot, "
            "  coalesce(s.next_rip, t.final_rip) AS value "
            "  FROM s JOIN traces t USING (trace) WHERE kind = 'ret') "
            if threaded
            else "WITH "
            + _transfers_next("'call', 'ret'", "")
            + "r AS (SELECT trace, step, rsp AS slot, next_rip AS value FROM nx "
            "  WHERE NOT is_call), "
            # The calls' text columns joined on their step: not carried through `nx`.
            "c AS (SELECT s.trace, s.step, s.rip, s.rsp, s.symbol, s.insn, nx.next_rip AS target "
            "  FROM steps s JOIN nx ON s.trace = nx.trace AND s.step = nx.step WHERE nx.is_call) "
        )
        + "SELECT c.trace, c.step, c.rip, c.symbol, c.insn, c.target, "
        "symbol_of(c.trace, c.target) AS target_symbol, c.rsp, "
        "(c.rsp % 16)::INTEGER AS rsp_mod_16, c.rsp % 16 = 0 AS aligned, "
        "stack_of(c.trace, c.rsp) AS stack, r.step AS ret_step, r.value AS returned_to "
        "FROM c ASOF LEFT JOIN r ON c.trace = r.trace AND c.rsp - 8 = r.slot AND r.step > c.step",
        "CREATE VIEW switches AS "
        "WITH s AS (SELECT trace, step, rip, symbol, insn, rsp, stack, thread, "
        f"  lead(rsp) OVER w AS next_rsp FROM steps {_ORDER}), "
        # After the trace's last row, the final rsp; after a thread's last row
        # (its exit), nothing: the thread went nowhere.
        "n AS (SELECT s.*, CASE WHEN s.next_rsp IS NOT NULL THEN s.next_rsp "
        "  WHEN s.step = t.steps - 1 THEN t.final_rsp END AS to_rsp FROM s "
        "  JOIN traces t USING (trace)) "
        "SELECT trace, step, rip, symbol, insn, stack AS from_stack, "
        "stack_of(trace, to_rsp) AS to_stack, rsp AS from_rsp, to_rsp "
        "FROM n WHERE to_rsp IS NOT NULL AND stack IS DISTINCT FROM stack_of(trace, to_rsp)",
        # The last write to the popped slot's address before the ret: planted when
        # it is not the push of a call. In a trace that began past the entry (`--from`),
        # a slot no write in the trace reached, under rsp's row-0 value (or on
        # another stack) and holding a code address was planted before the trace
        # (analysis/events.py, Origin.PLANTED_BEFORE); at or above it, it is a return
        # address a call pushed before row 0 (Origin.BEFORE), not a planted one.
        "CREATE VIEW planted AS "
        + (
            "WITH s AS (SELECT trace, step, rip, rsp, symbol, insn, kind, thread, "
            f"  lead(rip) OVER w AS next_rip, lead(rsp) OVER w AS next_rsp FROM steps {_ORDER}), "
            "r AS (SELECT s.trace, s.step, s.symbol, s.rsp AS slot, "
            "  coalesce(s.next_rip, t.final_rip) AS value, "
            "  coalesce(s.next_rsp, t.final_rsp) AS entry_rsp "
            "  FROM s JOIN traces t USING (trace) WHERE kind = 'ret'), "
            if threaded
            else "WITH "
            + _transfers_next("'ret'", "symbol, ")
            + "r AS (SELECT trace, step, symbol, rsp AS slot, next_rip AS value, "
            "  next_rsp AS entry_rsp FROM nx WHERE NOT is_call), "
        )
        + "w AS (SELECT trace, step, addr, insn, symbol, kind FROM accesses "
        "  WHERE access = 'write'), "
        "p AS (SELECT r.*, w.step AS planted_step, w.insn AS planted_insn, "
        "  w.symbol AS planted_symbol, w.kind AS planted_kind "
        "  FROM r ASOF LEFT JOIN w ON r.trace = w.trace AND r.slot = w.addr AND r.step > w.step), "
        "b AS (SELECT p.trace, p.step, t.from_rsp, g.top AS from_top "
        "  FROM p JOIN traces t USING (trace) "
        "  LEFT JOIN regions g ON g.trace = p.trace AND g.name = region_of(p.trace, t.from_rsp) "
        "  WHERE p.planted_step IS NULL AND t.from_symbol IS NOT NULL AND EXISTS ("
        "    SELECT 1 FROM regions c WHERE c.trace = p.trace AND c.kind = 'code' "
        "    AND p.value >= c.base AND p.value < c.top)) "
        "SELECT p.trace, p.step AS ret_step, p.symbol AS ret_symbol, "
        "region_of(p.trace, p.slot) AS stack, region_index(p.trace, p.slot) AS region_index, "
        "slot_name(p.trace, p.slot) AS slot_name, p.slot, p.planted_step, "
        "p.planted_insn, p.planted_symbol, "
        "p.value, symbol_of(p.trace, p.value) AS target, p.entry_rsp, "
        "CASE WHEN p.planted_step IS NULL THEN 'before the trace' ELSE 'in the trace' END "
        "AS origin "
        "FROM p LEFT JOIN b ON b.trace = p.trace AND b.step = p.step "
        "WHERE p.planted_kind <> 'call' OR (b.step IS NOT NULL "
        "  AND NOT (p.slot >= b.from_rsp AND (b.from_top IS NULL OR p.slot < b.from_top)))",
        # Each `syscall` step; its name and result from the trace's log where it has one
        # (format 2: no result for a call that did not return), else rax after it.
        "CREATE VIEW syscalls AS "
        "WITH s AS (SELECT trace, step, rip, symbol, kind, rax, thread, "
        f"  {args}, lead(rax) OVER w AS next_rax FROM steps {_ORDER}) "
        "SELECT s.trace, s.step, s.rip, s.symbol, s.rax AS nr, l.name, "
        f"[{args}] AS args, CASE WHEN l.step IS NULL THEN "
        "coalesce(s.next_rax, t.final_rax)::BIGINT ELSE l.result END AS result "
        "FROM s JOIN traces t USING (trace) "
        "LEFT JOIN syscall_log l ON l.trace = s.trace AND l.step = s.step "
        "WHERE kind = 'syscall'",
    ]


def _stored_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    names: list[str] = pq.read_schema(path).names
    return names


#: DuckDB's memory limit: past it, joins, sorts and windows spill to a temporary
#: directory (their own, removed with the connection). The views over a
#: ten-million-step trace took 2.7 GiB without a limit; with it, under 450 MiB.
MEMORY_LIMIT = "256MB"


def connect(files: Sequence[TraceFile]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views over `files`."""
    con: duckdb.DuckDBPyConnection = require_duckdb().connect()
    spill = tempfile.mkdtemp(prefix="stacktrace-lab-duckdb-")
    weakref.finalize(con, shutil.rmtree, spill, ignore_errors=True)
    con.execute(f"SET memory_limit = {_quote(MEMORY_LIMIT)}")
    con.execute(f"SET temp_directory = {_quote(spill)}")
    paths = "[" + ", ".join(_quote(str(f.trace.path)) for f in files) + "]"
    names = _case(
        [(f"filename = {_quote(str(f.trace.path))}", _quote(f.name)) for f in files], "filename"
    )
    con.execute(
        f"CREATE VIEW raw AS SELECT *, {names} AS trace "
        f"FROM read_parquet({paths}, filename = true, union_by_name = true)"
    )
    _tables(con, files)
    for macro in _macros(files):
        con.execute(macro)
    # The columns in the files themselves: a version-1 trace's reader supplies
    # `kind` and the other facts, but the views read the Parquet files directly.
    columns = {name for f in files for name in _stored_columns(f.trace.path)}
    threaded = any(f.trace.metadata.threads for f in files)
    for view in _views(columns, threaded):
        con.execute(view)
    return con
