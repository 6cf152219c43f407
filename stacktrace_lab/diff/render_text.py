"""A `TraceDiff` as plain text: for terminals and CI logs (no colour, no markup).

The phrasing helpers here are shared with the markdown renderer so both say
the same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..arch import WORD
from .model import (
    CONVENTION,
    Access,
    AccessDelta,
    ContextRow,
    Divergence,
    StackDelta,
    StepView,
    TraceDiff,
    ValueDelta,
)

MAX_BYTES_SHOWN = 32


def verdict(diff: TraceDiff) -> str:
    if diff.same:
        return "SAME"
    if diff.behaviour_same:
        return "DIFFERENT (metadata only: every step is equal)"
    return "DIFFERENT"


def summary(diff: TraceDiff) -> str:
    """One sentence: what differs, in steps, in the pairing, in metadata."""
    parts = []
    al = diff.alignment
    if al is not None:
        if not al.equal:
            parts.append(
                f"{al.inserted} step(s) inserted in B, {al.deleted} deleted from A, "
                f"{al.replaced_a} of A replaced by {al.replaced_b} of B"
            )
        paired = f"the {al.matched} paired steps"
    else:
        if diff.a.steps != diff.b.steps:
            parts.append(f"lengths differ (A {diff.a.steps}, B {diff.b.steps} steps)")
        paired = f"the {min(diff.a.steps, diff.b.steps)} common steps"
    if diff.columns:
        parts.append(f"{paired} differ in {len(diff.columns)} column(s)")
    else:
        parts.append(f"{paired} are equal in every compared column")
    if diff.metadata:
        parts.append("metadata differs: " + ", ".join(m.field for m in diff.metadata))
    return "; ".join(parts)


def mode_line(diff: TraceDiff) -> str:
    if diff.mode == "align":
        how = "align (rows paired by label and instruction; code addresses of A moved onto B)"
    else:
        how = "steps (row N of A against row N of B)"
    ignored = ", ".join(diff.ignored) if diff.ignored else "nothing"
    return f"mode: {how}; ignored: {ignored}"


def where(d: Divergence) -> str:
    """`A step 5 / B step 5`, with `-` for a side that has no row there."""
    step_a = f"A step {d.a.step}" if d.a else "A -"
    step_b = f"B step {d.b.step}" if d.b else "B -"
    return f"{step_a} / {step_b}"


def headline(d: Divergence) -> str:
    """One line saying what the first divergence is."""
    if d.kind == "changed":
        return f"first divergent step: {where(d)}, differs in: {', '.join(d.columns)}"
    if d.kind == "inserted":
        return f"first divergence: {d.b_rows} step(s) inserted in B at B step {_step(d.b)}"
    if d.kind == "deleted":
        return f"first divergence: {d.a_rows} step(s) of A missing from B, from A step {_step(d.a)}"
    if d.kind in ("replaced", "unaligned"):
        return (
            f"first divergence: {d.a_rows} step(s) of A from A step {_step(d.a)} "
            f"{d.kind} by {d.b_rows} step(s) of B from B step {_step(d.b)}"
        )
    if d.kind == "a-ended":
        return f"first divergence: A ends after {_step(d.b)} steps; B goes on for {d.b_rows} more"
    return f"first divergence: B ends after {_step(d.a)} steps; A goes on for {d.a_rows} more"


def _step(view: StepView | None) -> str:
    return str(view.step) if view else "-"


def place(view: StepView | None) -> str:
    return f"{view.rip:#x} {view.symbol}: {view.insn}" if view else "(no row)"


def hexv(value: int) -> str:
    return f"{value:#x}"


def moved(a: int, a_in_b: int | None) -> str:
    """A's value, and what it is once moved onto B's code when that differs (align mode)."""
    return hexv(a) if a_in_b is None else f"{hexv(a)} (= {hexv(a_in_b)} in B's code)"


def register_line(delta: ValueDelta) -> str:
    return f"{delta.name}: A {moved(delta.a, delta.a_in_b)}  B {hexv(delta.b)}"


def access_lines(delta: AccessDelta) -> list[str]:
    lines = []
    for k in delta.entries:
        a = delta.a[k] if k < len(delta.a) else None
        b = delta.b[k] if k < len(delta.b) else None
        lines.append(f"{delta.column}[{k}]: A {_access(a)}  B {_access(b)}")
    return lines


def _access(access: Access | None) -> str:
    if access is None:
        return "(none)"
    text = f"{access.size} bytes at {access.addr:#x} = {hexv(access.value)}"
    if access.in_b is not None:
        text += f" (= {access.in_b[1]:#x} at {access.in_b[0]:#x} in B's code)"
    return text


def _words(data: bytes) -> str:
    """Stack bytes as little-endian 8-byte values when they are whole words, else as hex."""
    if len(data) % WORD:
        return data.hex()
    return " ".join(
        hexv(int.from_bytes(data[k : k + WORD], "little")) for k in range(0, len(data), WORD)
    )


def stack_lines(delta: StackDelta) -> list[str]:
    lines = [f"{delta.column}: {delta.differing_bytes} bytes differ"]
    for r in delta.ranges:
        more = " ..." if r.stop - r.start > MAX_BYTES_SHOWN else ""
        shown_a, shown_b = _words(r.a[:MAX_BYTES_SHOWN]), _words(r.b[:MAX_BYTES_SHOWN])
        if r.a_in_b is not None:
            shown_a += f" (= {_words(r.a_in_b[:MAX_BYTES_SHOWN])} in B's code)"
        lines.append(
            f"  bytes [{r.start}..{r.stop}) at {r.address:#x}: A {shown_a}{more}  B {shown_b}{more}"
        )
    shown = sum(r.stop - r.start for r in delta.ranges)
    if shown < delta.differing_bytes:
        lines.append(f"  ... and {delta.differing_bytes - shown} more bytes")
    return lines


def divergence_lines(d: Divergence) -> list[str]:
    """The detail under the headline: both rows, then what differs in them and after."""
    lines = [f"A: {place(d.a)}", f"B: {place(d.b)}"]
    lines += [register_line(r) for r in d.registers]
    for access in d.accesses:
        lines += access_lines(access)
    for stack in d.stacks:
        lines += stack_lines(stack)
    if d.kind == "changed":
        if d.after:
            lines.append("after this step: " + "; ".join(register_line(r) for r in d.after))
        else:
            lines.append("after this step: registers equal")
    return lines


def context_table(rows: Sequence[ContextRow]) -> list[list[str]]:
    """Context rows as cells: marker, A step, A symbol, A insn, B ..., differs."""

    def cells(view: StepView | None) -> list[str]:
        return [str(view.step), view.symbol, view.insn] if view else ["-", "", ""]

    return [
        [">" if row.focus else "", *cells(row.a), *cells(row.b), ", ".join(row.columns)]
        for row in rows
    ]


def _table(header: list[str], body: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
    return [
        (indent + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))).rstrip()
        for r in [header, *body]
    ]


def render_text(diff: TraceDiff) -> str:
    out = [
        "stacktrace-lab diff",
        f"  A: {diff.a.path}  ({diff.a.scenario}, {diff.a.steps} steps, stop: {diff.a.stop})",
        f"  B: {diff.b.path}  ({diff.b.scenario}, {diff.b.steps} steps, stop: {diff.b.stop})",
        f"  {mode_line(diff)}",
        f"result: {verdict(diff)}",
        f"  {summary(diff)}",
    ]
    d = diff.first_divergence
    if d is not None:
        out += ["", headline(d)]
        out += ["  " + line for line in divergence_lines(d)]
        if diff.context:
            out += ["", "context (> marks the divergence; last column: columns that differ):"]
            header = ["", "A", "symbol", "insn", "B", "symbol", "insn", "differs"]
            out += _table(header, context_table(diff.context))
    if diff.columns:
        out += ["", "differing steps per column:"]
        body = [
            [c.column, str(c.steps), f"first at A step {c.first_a} / B step {c.first_b}"]
            for c in diff.columns
        ]
        out += _table(["column", "steps", ""], body)
    if diff.alignment is not None:
        al = diff.alignment
        out += [
            "",
            f"alignment: {al.matched} steps paired, {al.inserted} inserted in B, "
            f"{al.deleted} deleted from A, {al.replaced_a} of A replaced by {al.replaced_b} of B",
        ]
        for gap in al.gaps:
            a_rows, b_rows = f"[{gap.a_start}..{gap.a_stop})", f"[{gap.b_start}..{gap.b_stop})"
            out.append(f"  {gap.kind}: A steps {a_rows}  B steps {b_rows}")
        if al.total_gaps > len(al.gaps):
            out.append(f"  ... {al.total_gaps - len(al.gaps)} more gaps")
        if al.window_limited:
            out.append(
                "  (the divergent region is longer than the alignment window: rest unaligned)"
            )
    elif diff.a.steps != diff.b.steps:
        out += ["", f"length: A {diff.a.steps} steps, B {diff.b.steps} steps"]
    if diff.metadata:
        out += ["", "metadata:"]
        for m in diff.metadata:
            out.append(f"  {m.field}: {m.summary}")
            out += [f"    {line}" for line in m.lines]
    if diff.notes:
        out += ["", "notes:"] + [f"  {note}" for note in diff.notes]
    if d is not None:
        out += ["", f"convention: {CONVENTION}"]
    return "\n".join(out) + "\n"
