"""Comparing the trace-level facts: stop, output, source, code, layout, symbols, ...

Each field has a name that `--ignore` accepts. Tool versions (`tool`) are never
a difference: a trace re-recorded with a newer unicorn or stacktrace-lab that
behaves the same is the same; a changed version is only listed as a note.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from typing import Any

from ..layout import Region
from ..trace.format import TraceMetadata
from .model import MetaDelta

#: Metadata fields compared, in the order they are reported.
METADATA_FIELDS = (
    "stop",
    "stdout",
    "stderr",
    "scenario",
    "source",
    "code",
    "layout",
    "symbols",
    "snapshots",
    "initial",
    "final",
    "options",
)

MAX_SOURCE_LINES = 24


def compare_metadata(
    a: TraceMetadata,
    b: TraceMetadata,
    ignore: Collection[str],
    *,
    align: bool = False,
    translate: Callable[[int], int] | None = None,
    translate_text: Callable[[str], str] | None = None,
) -> tuple[list[MetaDelta], list[str]]:
    """(differences, notes). In align mode code addresses of A are moved with `translate`."""
    move = translate or (lambda v: v)
    move_text = translate_text or (lambda s: s)
    deltas: list[MetaDelta] = []
    checks: dict[str, Callable[[], MetaDelta | None]] = {
        "stop": lambda: _stop(a, b, align, move_text),
        "stdout": lambda: _text("stdout", a.stdout, b.stdout),
        "stderr": lambda: _text("stderr", a.stderr, b.stderr),
        "scenario": lambda: _scenario(a, b),
        "source": lambda: _source(a.scenario.source, b.scenario.source),
        "code": lambda: _code(a, b),
        "layout": lambda: _layout(a.regions, b.regions),
        "symbols": lambda: _symbols(a.symbols, b.symbols, align),
        "snapshots": lambda: _snapshots(a, b),
        "initial": lambda: _registers("initial", a.initial, b.initial, ignore, move),
        "final": lambda: _registers("final", a.final, b.final, ignore, move),
        "options": lambda: _options(a.options, b.options),
    }
    for name in METADATA_FIELDS:
        if name in ignore:
            continue
        delta = checks[name]()
        if delta is not None:
            deltas.append(delta)
    notes = []
    if a.tool != b.tool:
        changed = sorted(k for k in set(a.tool) | set(b.tool) if a.tool.get(k) != b.tool.get(k))
        notes.append(
            "recorded with different tool versions (not a difference): "
            + ", ".join(f"{k} {a.tool.get(k, '-')} -> {b.tool.get(k, '-')}" for k in changed)
        )
    return deltas, notes


def _stop(
    a: TraceMetadata, b: TraceMetadata, align: bool, move_text: Callable[[str], str]
) -> MetaDelta | None:
    # In align mode the step of the stop moves with any insertion (the length is
    # reported by the alignment) and the detail names code addresses of each side.
    step_differs = not align and a.stop.step != b.stop.step
    detail_a = move_text(a.stop.detail) if align else a.stop.detail
    if a.stop.reason == b.stop.reason and detail_a == b.stop.detail and not step_differs:
        return None
    return MetaDelta(
        "stop",
        f"{a.stop.reason} at step {a.stop.step} -> {b.stop.reason} at step {b.stop.step}",
        (f"A: {a.stop.detail}", f"B: {b.stop.detail}"),
    )


def _text(name: str, a: str, b: str) -> MetaDelta | None:
    if a == b:
        return None
    return MetaDelta(name, f"{a!r} -> {b!r}" if len(a) + len(b) < 120 else "differs")


def _scenario(a: TraceMetadata, b: TraceMetadata) -> MetaDelta | None:
    sa, sb = a.scenario, b.scenario
    fields: dict[str, tuple[Any, Any]] = {
        "name": (sa.name, sb.name),
        "description": (sa.description, sb.description),
        "syntax": (sa.syntax, sb.syntax),
        "entry": (sa.entry, sb.entry),
        "breaks": (sa.breaks, sb.breaks),
        "expect": (sa.expect.to_json(), sb.expect.to_json()),
    }
    lines = tuple(f"{k}: {va!r} -> {vb!r}" for k, (va, vb) in fields.items() if va != vb)
    if not lines:
        return None
    return MetaDelta("scenario", ", ".join(line.split(":")[0] for line in lines), lines)


def _source(a: str, b: str) -> MetaDelta | None:
    if a == b:
        return None
    diff = list(difflib.unified_diff(a.splitlines(), b.splitlines(), "A", "B", n=1, lineterm=""))[
        2:
    ]  # drop the ---/+++ header: A and B are named elsewhere
    changed = sum(1 for line in diff if line[:1] in "+-")
    lines = diff[:MAX_SOURCE_LINES]
    if len(diff) > MAX_SOURCE_LINES:
        lines.append(f"... {len(diff) - MAX_SOURCE_LINES} more lines")
    return MetaDelta("source", f"{changed} lines changed", tuple(lines))


def _code(a: TraceMetadata, b: TraceMetadata) -> MetaDelta | None:
    if a.code == b.code and a.code_base == b.code_base:
        return None
    first = next(
        (i for i, (x, y) in enumerate(zip(a.code, b.code, strict=False)) if x != y),
        min(len(a.code), len(b.code)),
    )
    return MetaDelta(
        "code",
        f"{len(a.code)} bytes at {a.code_base:#x} -> {len(b.code)} bytes at {b.code_base:#x}, "
        f"first difference at byte {first} ({a.code_base + first:#x})",
    )


def _region(r: Region) -> str:
    return f"{r.kind} {r.base:#x}+{r.size} {r.perms}"


def _layout(a: tuple[Region, ...], b: tuple[Region, ...]) -> MetaDelta | None:
    # The code region's size is the code's length: that is reported under `code`.
    def key(r: Region) -> str:
        return f"{r.kind} {r.base:#x} {r.perms}" if r.kind == "code" else _region(r)

    by_a, by_b = {r.name: r for r in a}, {r.name: r for r in b}
    lines = []
    for name in sorted(set(by_a) | set(by_b)):
        ra, rb = by_a.get(name), by_b.get(name)
        if ra is None or rb is None:
            side = "B" if ra is None else "A"
            region = rb if ra is None else ra
            assert region is not None
            lines.append(f"{name}: only in {side} ({_region(region)})")
        elif key(ra) != key(rb):
            lines.append(f"{name}: {_region(ra)} -> {_region(rb)}")
    if not lines:
        return None
    return MetaDelta("layout", f"{len(lines)} regions differ", tuple(lines))


def _symbols(a: dict[str, int], b: dict[str, int], align: bool) -> MetaDelta | None:
    lines = [f"{n}: only in A ({a[n]:#x})" for n in sorted(set(a) - set(b))]
    lines += [f"{n}: only in B ({b[n]:#x})" for n in sorted(set(b) - set(a))]
    if not align:
        # In align mode labels moving with inserted code is what is expected.
        lines += [f"{n}: {a[n]:#x} -> {b[n]:#x}" for n in sorted(set(a) & set(b)) if a[n] != b[n]]
    if not lines:
        return None
    return MetaDelta("symbols", f"{len(lines)} labels differ", tuple(lines))


def _snapshots(a: TraceMetadata, b: TraceMetadata) -> MetaDelta | None:
    wa = {n: (w.base, w.size) for n, w in a.snapshots.items()}
    wb = {n: (w.base, w.size) for n, w in b.snapshots.items()}
    if wa == wb:
        return None
    lines = [
        f"{n}: {_window(wa.get(n))} -> {_window(wb.get(n))}"
        for n in sorted(set(wa) | set(wb))
        if wa.get(n) != wb.get(n)
    ]
    return MetaDelta("snapshots", f"{len(lines)} stack windows differ", tuple(lines))


def _window(w: tuple[int, int] | None) -> str:
    return "none" if w is None else f"{w[1]} bytes at {w[0]:#x}"


def _registers(
    name: str,
    a: dict[str, int],
    b: dict[str, int],
    ignore: Collection[str],
    move: Callable[[int], int],
) -> MetaDelta | None:
    lines = []
    for reg in a:
        if reg in ignore or reg not in b:
            continue
        if move(a[reg]) != b[reg]:
            lines.append(f"{reg}: {a[reg]:#x} -> {b[reg]:#x}")
    if not lines:
        return None
    return MetaDelta(name, ", ".join(line.split(":")[0] for line in lines), tuple(lines))


#: Recording options that change how a trace is stored, not what it says.
STORAGE_OPTIONS = frozenset({"row_group_size"})


def _files(a: list[Any], b: list[Any]) -> list[str]:
    """The files a program read (its libraries) that differ: one line each."""

    def by_path(entries: list[Any]) -> dict[str, str]:
        return {str(e.get("path")): str(e.get("sha256")) for e in entries if isinstance(e, dict)}

    old, new = by_path(a), by_path(b)
    lines = []
    for path in sorted(set(old) | set(new)):
        if old.get(path) != new.get(path):
            before = old.get(path, "not read")[:16]
            after = new.get(path, "not read")[:16]
            lines.append(f"files: {path} sha256 {before} -> {after}")
    return lines


def _options(a: dict[str, Any], b: dict[str, Any]) -> MetaDelta | None:
    keys = sorted((set(a) | set(b)) - STORAGE_OPTIONS - {"files"})
    lines = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    lines += _files(a.get("files") or [], b.get("files") or [])
    if not lines:
        return None
    return MetaDelta("options", ", ".join(line.split(":")[0] for line in lines), tuple(lines))
