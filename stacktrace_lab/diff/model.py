"""What comparing two traces found, as small frozen dataclasses.

The comparison (`compare.py`, `align.py`, `metadata.py`) builds a `TraceDiff`;
the renderers (text, markdown, json) only read it. `TraceDiff.to_json()` is the
machine-readable form and the only source of the json output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: How the first divergent step is chosen; printed in every output so a reader
#: never has to guess which of two neighbouring rows is meant.
CONVENTION = (
    "The first divergent step is the first pair of matched rows in which any compared "
    "column differs. Registers are recorded before each instruction, so a changed "
    "instruction shows in its own row through its text, memory accesses or stack bytes, "
    "and the registers it wrote differ from the next row on (shown as 'after this step')."
)

#: Columns that `align` mode matches rows on instead of comparing them.
ALIGN_KEY_COLUMNS = ("insn", "symbol")


@dataclass(frozen=True)
class StepView:
    """One row of one trace, as a reader needs to place it."""

    step: int
    rip: int
    symbol: str
    insn: str

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "rip": self.rip, "symbol": self.symbol, "insn": self.insn}


@dataclass(frozen=True)
class ValueDelta:
    """A register whose value differs between the two sides."""

    name: str
    a: int
    b: int
    #: In align mode, A's value moved onto B's code when that changes it: what is compared.
    a_in_b: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "a": self.a, "b": self.b}
        if self.a_in_b is not None:
            out["a_in_b"] = self.a_in_b
        return out


@dataclass(frozen=True)
class ByteRange:
    """Stack bytes `start ..< stop` (indices into the snapshot window) that differ."""

    start: int
    stop: int
    address: int
    a: bytes
    b: bytes
    #: In align mode, A's bytes with code addresses moved onto B's code, when that changes them.
    a_in_b: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": self.start,
            "stop": self.stop,
            "address": self.address,
            "a": self.a.hex(),
            "b": self.b.hex(),
        }
        if self.a_in_b is not None:
            out["a_in_b"] = self.a_in_b.hex()
        return out


@dataclass(frozen=True)
class StackDelta:
    column: str
    differing_bytes: int
    ranges: tuple[ByteRange, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "differing_bytes": self.differing_bytes,
            "ranges": [r.to_json() for r in self.ranges],
        }


@dataclass(frozen=True)
class Access:
    """One memory access of an instruction: what `reads`/`writes` hold."""

    addr: int
    size: int
    data: bytes
    #: In align mode, the address and the value moved onto B's code, when that changes them.
    in_b: tuple[int, int] | None = None

    @property
    def value(self) -> int:
        """The data as the little-endian number the instruction read or wrote."""
        return int.from_bytes(self.data, "little")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "addr": self.addr,
            "size": self.size,
            "data": self.data.hex(),
            "value": self.value,
        }
        if self.in_b is not None:
            out["in_b"] = {"addr": self.in_b[0], "value": self.in_b[1]}
        return out


@dataclass(frozen=True)
class AccessDelta:
    """The `reads` or `writes` of the divergent row on both sides.

    `entries` are the positions in the lists that differ (or exist on one side only).
    """

    column: str
    a: tuple[Access, ...]
    b: tuple[Access, ...]
    entries: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "a": [x.to_json() for x in self.a],
            "b": [x.to_json() for x in self.b],
            "entries": list(self.entries),
        }


@dataclass(frozen=True)
class Divergence:
    """The first place where the two traces part.

    kind: `changed` (a matched pair of rows differs), `inserted` (rows only in B),
    `deleted` (rows only in A), `replaced` (different rows on both sides, align
    mode), `a-ended` / `b-ended` (one trace stops while the other goes on).
    """

    kind: str
    a: StepView | None
    b: StepView | None
    columns: tuple[str, ...] = ()
    registers: tuple[ValueDelta, ...] = ()
    accesses: tuple[AccessDelta, ...] = ()
    stacks: tuple[StackDelta, ...] = ()
    after: tuple[ValueDelta, ...] = ()
    a_rows: int = 0  # rows of the gap on each side (inserted/deleted/replaced)
    b_rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "a": self.a.to_json() if self.a else None,
            "b": self.b.to_json() if self.b else None,
            "columns": list(self.columns),
            "registers": [r.to_json() for r in self.registers],
            "accesses": [x.to_json() for x in self.accesses],
            "stacks": [s.to_json() for s in self.stacks],
            "after": [r.to_json() for r in self.after],
            "gap_rows": {"a": self.a_rows, "b": self.b_rows},
        }


@dataclass(frozen=True)
class ContextRow:
    """A pair of rows around the divergence; one side is None where it has no row."""

    a: StepView | None
    b: StepView | None
    columns: tuple[str, ...]
    focus: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a.to_json() if self.a else None,
            "b": self.b.to_json() if self.b else None,
            "columns": list(self.columns),
            "focus": self.focus,
        }


@dataclass(frozen=True)
class ColumnCount:
    """How many matched row pairs differ in one column, and the first of them."""

    column: str
    steps: int
    first_a: int
    first_b: int

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "first_step_a": self.first_a, "first_step_b": self.first_b}


@dataclass(frozen=True)
class MetaDelta:
    """A trace-level fact that differs (stop, output, source, layout, symbols ...)."""

    field: str
    summary: str
    lines: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "summary": self.summary, "lines": list(self.lines)}


@dataclass(frozen=True)
class Gap:
    """Rows that align mode could not pair: kind inserted, deleted, replaced or unaligned."""

    kind: str
    a_start: int
    a_stop: int
    b_start: int
    b_stop: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "a": [self.a_start, self.a_stop],
            "b": [self.b_start, self.b_stop],
        }


@dataclass(frozen=True)
class Alignment:
    """Summary of align mode: how the rows of A and B were paired."""

    matched: int
    inserted: int  # rows only in B
    deleted: int  # rows only in A
    replaced_a: int
    replaced_b: int
    gaps: tuple[Gap, ...]  # the first few, in order
    total_gaps: int
    window_limited: bool  # the divergent region was longer than the alignment window

    @property
    def equal(self) -> bool:
        return self.total_gaps == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "inserted": self.inserted,
            "deleted": self.deleted,
            "replaced": {"a": self.replaced_a, "b": self.replaced_b},
            "gaps": [g.to_json() for g in self.gaps],
            "total_gaps": self.total_gaps,
            "window_limited": self.window_limited,
        }


@dataclass(frozen=True)
class TraceInfo:
    path: str
    scenario: str
    steps: int
    stop: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "scenario": self.scenario,
            "steps": self.steps,
            "stop": self.stop,
        }


@dataclass(frozen=True)
class TraceDiff:
    a: TraceInfo
    b: TraceInfo
    mode: str  # "steps" (row N against row N) or "align"
    compared: tuple[str, ...]
    ignored: tuple[str, ...]
    first_divergence: Divergence | None
    context: tuple[ContextRow, ...]
    columns: tuple[ColumnCount, ...]
    alignment: Alignment | None
    metadata: tuple[MetaDelta, ...]
    notes: tuple[str, ...]  # informational only, never make traces different

    @property
    def same(self) -> bool:
        return self.first_divergence is None and not self.metadata

    @property
    def behaviour_same(self) -> bool:
        """No row differs and no row is unmatched (metadata aside)."""
        return self.first_divergence is None

    def to_json(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "mode": self.mode,
            "convention": CONVENTION,
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "compared": list(self.compared),
            "ignored": list(self.ignored),
            "first_divergence": self.first_divergence.to_json() if self.first_divergence else None,
            "context": [row.to_json() for row in self.context],
            "columns": {c.column: c.to_json() for c in self.columns},
            "alignment": self.alignment.to_json() if self.alignment else None,
            "metadata": [m.to_json() for m in self.metadata],
            "notes": list(self.notes),
        }
