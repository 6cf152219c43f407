"""Checks on a scenario's program before the assembler sees it (issue 16).

The assembler allocates what the source asks for (`.skip 0x10000000000` is a
terabyte) and reads what it names (`.incbin "/etc/passwd"` copies a host
file into the trace's code, `.incbin "/dev/zero"` never ends). So before
assembling: the program's size is bounded from its directives
(`limits.check_program_size`), and every `.incbin` must name a regular file
inside the scenario's directory (or `--allow-outside`), which is then handed
to the assembler by its absolute path, so it reads the file that was checked
whatever the working directory. The trace keeps the source as written.
Characters on which keystone never returns (control characters, a non-ASCII
character outside strings and comments) are refused on their line.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ...errors import BadInput
from ...limits import Limits, check_program_size, iter_incbin_names, resolve_input
from ...scenario import Scenario
from .assembler import labels_of_line, statements, strip_comment
from .operands import REGISTERS as OPERAND_REGISTERS

#: Names a label must not take: every register an operand may name (the front
#: end's table, `st(i)` aside), plus the spellings keystone also reads as
#: registers in Intel syntax (bare `st0`, `r8l`, flags and the upper debug registers).
REGISTER_NAMES = frozenset(
    {name for name in OPERAND_REGISTERS if "(" not in name}
    | {"rflags", "eflags", "flags", "ip"}
    | {f"r{n}l" for n in range(8, 16)}
    | {f"st{n}" for n in range(8)}
    | {f"dr{n}" for n in range(8, 16)}
)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _character_problem(line: str, syntax: str) -> str | None:
    """Characters keystone never returns from (checked: it loops forever on a
    line holding a control character, or starting with a non-ASCII one)."""
    code = strip_comment(line, syntax)
    for ch in code:
        if (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F:
            return f"control character U+{ord(ch):04X} in the program"
    outside_strings = _STRING.sub('""', code)
    for ch in outside_strings:
        if ord(ch) > 0x7F:
            return f"character {ch!r} (U+{ord(ch):04X}) outside a string or comment"
    return None


def _directories(scenario: Scenario, count: int) -> list[Path]:
    """The directory each line's `.incbin` names are read from, as the assembler
    reads them (gnu_as.py): beside the program file the line is in (which with
    `file = "../m.s"` and --allow-outside is not the scenario's directory), or
    beside the scenario for an inline `source`."""
    if not scenario.sources:
        return [Path(scenario.path).parent] * count
    if len(scenario.sources) == 1:
        return [Path(scenario.sources[0].directory)] * count
    directories: list[Path] = []
    for source in scenario.sources:  # each file under a line naming it (scenario.py)
        lines = source.text.rstrip().splitlines()
        directories += [Path(source.directory)] * (1 + len(lines))
    return directories + [Path(scenario.path).parent] * max(count - len(directories), 0)


def precheck_program(scenario: Scenario, constants: dict[str, int], limits: Limits) -> Scenario:
    """The scenario to assemble: sizes bounded, `.incbin` files checked and made absolute."""
    lines = scenario.source.splitlines()
    directories = _directories(scenario, len(lines))
    resolved: dict[int, list[tuple[str, Path]]] = {}

    def fail(index: int, message: str) -> BadInput:
        shown = lines[index].strip() if 0 <= index < len(lines) else ""
        if not shown.isprintable():
            shown = ascii(shown)  # a control character would garble the terminal
        line = scenario.source_first_line + index
        return BadInput(f"{scenario.source_file}:{line}: {message}: {shown}")

    def incbin(index: int, statement: str) -> int:
        size = 0
        for name in iter_incbin_names(statement):
            where = f"{scenario.source_file}:{scenario.source_first_line + index}: .incbin"
            path = resolve_input(name, directories[index], where, scenario.allow_outside)
            try:
                status = path.stat()
            except OSError as exc:
                raise fail(index, f"cannot read {name!r}: {exc.strerror}") from None
            if not path.is_file():
                raise fail(index, f"{name!r} is not a regular file")
            size += status.st_size
            resolved.setdefault(index, []).append((name, path.resolve()))
        return size

    for index, line in enumerate(lines):
        problem = _character_problem(line, scenario.syntax)
        if problem is not None:
            raise fail(index, problem)
        for label in labels_of_line(line, scenario.syntax):
            if label.lower() in REGISTER_NAMES:
                # Keystone reads the name as the register wherever the label is
                # used (the tool itself takes every label's address), and fails
                # on some later line with "invalid operand".
                raise fail(index, f"label '{label}' is named like a register; rename it")
    check_program_size(
        lines,
        constants,
        limits.max_program_bytes,
        fail,
        lambda line: statements(line, scenario.syntax),
        incbin,
    )
    if not resolved:
        return scenario
    for index, names in resolved.items():
        for name, path in names:
            lines[index] = lines[index].replace(f'"{name}"', f'"{path}"', 1)
    return dataclasses.replace(scenario, source="\n".join(lines))
