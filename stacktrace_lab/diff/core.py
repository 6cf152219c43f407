"""`diff_traces(a, b)`: compare two traces and say where behaviour changed.

Steps mode pairs row N of A with row N of B. Align mode (`align=True`) pairs
rows by what runs (see `align.py`), so an inserted instruction is one inserted
step instead of every later row differing. Either way the paired rows are
compared column by column (`compare.py`), the first divergent step is
explained in detail (`detail.py`), and the trace-level facts are compared
(`metadata.py`). The result is a `TraceDiff`; renderers turn it into text,
markdown or json.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import BadInput
from ..trace.format import STACK_PREFIX
from ..trace.reader import Trace, load_trace
from .align import AddressMap, AlignmentPlan, Opcode, align_traces
from .compare import Segment, Translate, compared_columns, scan
from .detail import Pair, RowReader, changed_row, context_rows
from .metadata import METADATA_FIELDS, compare_metadata
from .model import (
    ALIGN_KEY_COLUMNS,
    Alignment,
    ColumnCount,
    Divergence,
    TraceDiff,
    TraceInfo,
)

DEFAULT_CONTEXT = 3
MAX_LISTED_GAPS = 20


def diff_traces(
    a: str | Path | Trace,
    b: str | Path | Trace,
    ignore: Iterable[str] = (),
    align: bool = False,
    context: int = DEFAULT_CONTEXT,
) -> TraceDiff:
    """Compare trace A (the reference, e.g. a golden) with trace B (the new one).

    `ignore`: column names (`rflags`, `reads`, `stack__green` or just `green`,
    glob patterns such as `r1*`) and metadata fields (`source`, `symbols`, ...)
    to leave out. Raises `BadInput` for an unreadable file or an unknown name.
    """
    trace_a = a if isinstance(a, Trace) else load_trace(a)
    trace_b = b if isinstance(b, Trace) else load_trace(b)
    ignored = resolve_ignore(ignore, trace_a, trace_b)
    notes: list[str] = []
    columns = _row_columns(trace_a, trace_b, ignored, align, notes)

    plan: AlignmentPlan | None = None
    translate: AddressMap | None = None
    if align:
        plan = align_traces(trace_a, trace_b)
        translate = AddressMap.build(trace_a, trace_b, plan)
        segments = plan.segments()
    else:
        segments = [Segment(0, 0, min(trace_a.num_rows, trace_b.num_rows))]

    result = scan(trace_a, trace_b, segments, columns, translate)
    reader_a, reader_b = RowReader(trace_a, columns), RowReader(trace_b, columns)
    divergence, focus = _first_divergence(
        reader_a, reader_b, result.first_pair(), plan, columns, translate
    )
    context_pairs: tuple[Pair, ...] = ()
    focus_index = 0
    if focus is not None:
        context_pairs, focus_index = _context_pairs(
            focus, trace_a.num_rows, trace_b.num_rows, plan, context
        )

    metadata, meta_notes = compare_metadata(
        trace_a.metadata,
        trace_b.metadata,
        ignored,
        align=align,
        translate=translate.scalar if translate else None,
        translate_text=translate.text if translate else None,
    )
    return TraceDiff(
        a=_info(trace_a),
        b=_info(trace_b),
        mode="align" if align else "steps",
        compared=tuple(columns),
        ignored=tuple(ignored),
        first_divergence=divergence,
        context=context_rows(reader_a, reader_b, context_pairs, focus_index, columns, translate)
        if divergence
        else (),
        columns=tuple(
            sorted(
                (ColumnCount(name, n, *result.first[name]) for name, n in result.counts.items()),
                key=lambda c: (c.first_a, c.first_b),  # stable: file order among equals
            )
        ),
        alignment=_alignment(plan) if plan else None,
        metadata=tuple(metadata),
        notes=tuple(notes + meta_notes),
    )


def resolve_ignore(names: Iterable[str], a: Trace, b: Trace) -> list[str]:
    """Expand and check `--ignore` names: columns, bare stack names, globs, metadata fields."""
    columns = [c for c in dict.fromkeys([*a.column_names, *b.column_names]) if c != "step"]
    known = [*columns, *METADATA_FIELDS]
    resolved: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in known:
            matches = [name]
        elif STACK_PREFIX + name in columns:
            matches = [STACK_PREFIX + name]
        else:
            matches = fnmatch.filter(known, name)
        if not matches:
            raise BadInput(
                f"--ignore: unknown column or field {name!r} (known: {', '.join(known)})"
            )
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def _row_columns(
    a: Trace, b: Trace, ignored: Sequence[str], align: bool, notes: list[str]
) -> list[str]:
    columns = compared_columns(a, b, ignored)
    if align:
        # Align mode pairs rows by these; code addresses shift in them by design.
        columns = [c for c in columns if c not in ALIGN_KEY_COLUMNS]
    for name in sorted(set(a.column_names) ^ set(b.column_names)):
        if name not in ignored:
            side = "A" if name in a.column_names else "B"
            notes.append(f"column {name} is only in {side}: not compared row by row")
    schema_a, schema_b = a.schema, b.schema
    for name in list(columns):
        if not schema_a.field(name).type.equals(schema_b.field(name).type):
            columns.remove(name)
            notes.append(
                f"column {name} has type {schema_a.field(name).type} in A and "
                f"{schema_b.field(name).type} in B: not compared row by row (see snapshots)"
            )
    return columns


def _info(trace: Trace) -> TraceInfo:
    meta = trace.metadata
    return TraceInfo(str(trace.path), meta.scenario.name, trace.num_rows, meta.stop.reason)


def _first_divergence(
    a: RowReader,
    b: RowReader,
    first_pair: tuple[int, int] | None,
    plan: AlignmentPlan | None,
    columns: Sequence[str],
    translate: Translate | None,
) -> tuple[Divergence | None, tuple[int, int] | None]:
    """The divergence and its position (A row, B row) in alignment order."""
    gap: Opcode | None = None
    if plan is not None:
        gap = next((op for op in plan.opcodes if op.kind != "equal"), None)
    else:
        n = min(len(a), len(b))
        if len(a) != len(b):
            # One trace is longer: past the common rows, the other has none.
            gap = Opcode("ended", n, len(a), n, len(b))

    if first_pair is not None and (gap is None or first_pair < (gap.a_start, gap.b_start)):
        i, j = first_pair
        return changed_row(a, b, i, j, columns, translate), first_pair
    if gap is None:
        return None, None
    rows_a, rows_b = gap.a_stop - gap.a_start, gap.b_stop - gap.b_start
    kind = gap.kind
    if kind == "ended":
        kind = "a-ended" if rows_a == 0 else "b-ended"
    return (
        Divergence(
            kind,
            a.view(gap.a_start) if rows_a else None,
            b.view(gap.b_start) if rows_b else None,
            a_rows=rows_a,
            b_rows=rows_b,
        ),
        (gap.a_start, gap.b_start),
    )


def _context_pairs(
    focus: tuple[int, int],
    len_a: int,
    len_b: int,
    plan: AlignmentPlan | None,
    context: int,
) -> tuple[tuple[Pair, ...], int]:
    """Row pairs around `focus` (in alignment order) and the index of the focus among them."""
    i0, j0 = focus
    if plan is None:
        pairs: list[Pair] = []
        for k in range(max(i0 - context, 0), i0 + context + 1):
            if k < len_a or k < len_b:
                pairs.append((k if k < len_a else None, k if k < len_b else None))
        return tuple(pairs), i0 - max(i0 - context, 0)

    # Expand only the parts of the alignment near the focus into row pairs.
    reach = context + 1
    pairs = []
    for op in plan.opcodes:
        lo_a, hi_a = max(op.a_start, i0 - reach), min(op.a_stop, i0 + reach)
        lo_b, hi_b = max(op.b_start, j0 - reach), min(op.b_stop, j0 + reach)
        if op.kind == "equal":
            lo = max(lo_a - op.a_start, lo_b - op.b_start)
            hi = min(hi_a - op.a_start, hi_b - op.b_start)
            pairs.extend((op.a_start + k, op.b_start + k) for k in range(lo, hi))
        else:
            # A gap: its A rows and B rows side by side, the longer side alone after.
            rows_a = list(range(op.a_start, op.a_stop))
            rows_b = list(range(op.b_start, op.b_stop))
            for k in range(max(len(rows_a), len(rows_b))):
                i = rows_a[k] if k < len(rows_a) else None
                j = rows_b[k] if k < len(rows_b) else None
                near_a = i is not None and lo_a <= i < hi_a
                near_b = j is not None and lo_b <= j < hi_b
                if near_a or near_b:
                    pairs.append((i, j))
    focus_index = next(
        (k for k, (i, j) in enumerate(pairs) if (i == i0 or i is None) and (j == j0 or j is None)),
        0,
    )
    start = max(focus_index - context, 0)
    return tuple(pairs[start : focus_index + context + 1]), focus_index - start


def _alignment(plan: AlignmentPlan) -> Alignment:
    gaps = plan.gaps()
    matched = sum(s.length for s in plan.segments())

    def rows(kind: str, side: str) -> int:
        return sum(
            (g.a_stop - g.a_start) if side == "a" else (g.b_stop - g.b_start)
            for g in gaps
            if g.kind == kind
        )

    return Alignment(
        matched=matched,
        inserted=rows("inserted", "b"),
        deleted=rows("deleted", "a"),
        replaced_a=rows("replaced", "a") + rows("unaligned", "a"),
        replaced_b=rows("replaced", "b") + rows("unaligned", "b"),
        gaps=tuple(gaps[:MAX_LISTED_GAPS]),
        total_gaps=len(gaps),
        window_limited=plan.window_limited,
    )
