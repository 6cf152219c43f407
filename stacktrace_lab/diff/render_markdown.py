"""A `TraceDiff` as GitHub-flavoured markdown, for a CI job summary or a PR comment.

Headline and the two traces first, then the first divergence as a table, the
context folded in a `<details>` block, per-column counts, metadata with the
source change as a `diff` code block.
"""

from __future__ import annotations

from collections.abc import Sequence

from .model import CONVENTION, TraceDiff
from .render_text import (
    access_lines,
    context_table,
    headline,
    hexv,
    mode_line,
    moved,
    stack_lines,
    summary,
    verdict,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def render_markdown(diff: TraceDiff) -> str:
    out = [f"### stacktrace-lab diff: {verdict(diff).lower()}", ""]
    out += _table(
        ["", "A", "B"],
        [
            ["trace", _code(diff.a.path), _code(diff.b.path)],
            ["scenario", _cell(diff.a.scenario), _cell(diff.b.scenario)],
            ["steps", str(diff.a.steps), str(diff.b.steps)],
            ["stop", diff.a.stop, diff.b.stop],
        ],
    )
    out += ["", _cell(summary(diff)) + ".", "", f"_{_cell(mode_line(diff))}_"]

    d = diff.first_divergence
    if d is not None:
        out += ["", f"**{_cell(headline(d))}**", ""]
        rows = [
            ["step", str(d.a.step) if d.a else "-", str(d.b.step) if d.b else "-"],
            ["rip", hexv(d.a.rip) if d.a else "", hexv(d.b.rip) if d.b else ""],
            ["symbol", _code(d.a.symbol) if d.a else "", _code(d.b.symbol) if d.b else ""],
            ["insn", _code(d.a.insn) if d.a else "", _code(d.b.insn) if d.b else ""],
        ]
        rows += [[f"`{r.name}`", moved(r.a, r.a_in_b), hexv(r.b)] for r in d.registers]
        rows += [[f"`{r.name}` after this step", moved(r.a, r.a_in_b), hexv(r.b)] for r in d.after]
        out += _table(["", "A", "B"], rows)
        details = [line for a in d.accesses for line in access_lines(a)]
        details += [line for s in d.stacks for line in stack_lines(s)]
        if details:
            out += ["", "```", *details, "```"]
        if diff.context:
            out += ["", "<details><summary>context</summary>", ""]
            header = ["", "A step", "A symbol", "A insn", "B step", "B symbol", "B insn", "differs"]
            body = [
                [
                    "**>**" if cells[0] else "",
                    cells[1],
                    _code(cells[2]),
                    _code(cells[3]),
                    cells[4],
                    _code(cells[5]),
                    _code(cells[6]),
                    _cell(cells[7]),
                ]
                for cells in context_table(diff.context)
            ]
            out += _table(header, body)
            out += ["", "</details>"]

    if diff.columns:
        out += ["", "#### Differing steps per column", ""]
        out += _table(
            ["column", "steps", "first at (A / B)"],
            [[f"`{c.column}`", str(c.steps), f"{c.first_a} / {c.first_b}"] for c in diff.columns],
        )
    if diff.alignment is not None:
        al = diff.alignment
        out += [
            "",
            "#### Alignment",
            "",
            f"{al.matched} steps paired, {al.inserted} inserted in B, {al.deleted} deleted "
            f"from A, {al.replaced_a} of A replaced by {al.replaced_b} of B.",
        ]
        if al.gaps:
            out.append("")
            out += _table(
                ["gap", "A steps", "B steps"],
                [[g.kind, f"{g.a_start}..{g.a_stop}", f"{g.b_start}..{g.b_stop}"] for g in al.gaps],
            )
    if diff.metadata:
        out += ["", "#### Metadata", ""]
        for m in diff.metadata:
            out.append(f"- **{m.field}**: {_cell(m.summary)}")
            if m.field == "source" and m.lines:
                out += ["", "  ```diff", *[f"  {line}" for line in m.lines], "  ```"]
            else:
                out += [f"  - {_code(line)}" for line in m.lines]
    if diff.notes:
        out += ["", *[f"> {_cell(note)}" for note in diff.notes]]
    if d is not None:
        out += ["", f"<sub>{_cell(CONVENTION)}</sub>"]
    return "\n".join(out) + "\n"
