"""Assembling a scenario's sources with keystone, and naming its labels.

    sources -> GNU-as front end (gnu_as.py) -> keystone text, one line per
    statement behind a label of its own -> keystone in a worker process
    (keystone_worker.py) -> label and line addresses read back -> every
    instruction and data item checked against its line (guard.py)

Keystone has traps this module and its helpers exist to avoid (see
docs/pitfalls.md): setting a syntax option, or a symbol resolver, makes every
bare number hexadecimal (`$32` would become 0x32 = 50), so AT&T source is
assembled in the default mode behind a `.att_syntax` directive and every
decimal is written in hex; keystone reports neither label addresses nor
reliable error lines, so both are worked out here; and it crashes or
miscompiles on much real-world source, hence the front end, the worker and
the guard.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...arch import PAGE
from ...errors import BadInput
from ...layout import CODE_BASE, CODE_LIMIT
from ...scenario import Scenario
from .gnu_as import FrontEnd, Origin, Prepared, SourceFile, Statement, unquoted
from .guard import Guard
from .keystone_worker import AssemblerCrash, KeystoneWorker, shared
from .operands import Expr, ExprError, Unknown

#: A bare decimal number; not the digit of an x87 register `st(1)`, which
#: GNU as (and so the GNU as comparison of the tests) reads only in decimal.
_DECIMAL = re.compile(r"(?<![\w.])(?<!st\()([1-9][0-9]*|0)(?![\w.])")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL = re.compile(r"\s*([A-Za-z_.$][\w.$@]*)\s*:(?!:)")
_LINE_LABEL = ".Lstacktrace_lab_line_"
_MOVABS_RAX = b"\x48\xb8"
_MOVABS_LEN = 10
_MARKER = 0x6B6C2D6B63617473
_MARKER_BYTES = _MOVABS_RAX + _MARKER.to_bytes(8, "little")


@dataclass(frozen=True)
class Program:
    """Assembled code and the labels it defines."""

    base: int
    code: bytes
    #: Every label of the source with its address, in source order.
    labels: dict[str, int]
    #: Address of the first instruction of each source line -> the line's number
    #: in the scenario's source file.
    lines: dict[int, int]
    #: The same addresses -> (file relative to the scenario, line): with
    #: `files = [...]` a line number alone does not say which file.
    locations: dict[int, tuple[str, int]] = field(default_factory=dict)
    #: The data sections (.data, .rodata, .bss), laid out on pages of their
    #: own after the code; empty when the program has none.
    data_base: int = 0
    data: bytes = b""

    @property
    def symbols(self) -> dict[str, int]:
        """Labels that name code: local labels (starting with '.') are left out."""
        return {name: addr for name, addr in self.labels.items() if not name.startswith(".")}


def strip_comment(line: str, syntax: str = "att") -> str:
    """The line without its comment.

    `#` starts a comment. In AT&T source `;` separates statements, as in GNU
    as and keystone (`movq (%rdi), %rsp; ret` is two instructions); in Intel
    source it starts a comment, as NASM-style programs write it.
    """
    comment = "#;" if syntax == "intel" else "#"
    for i in unquoted(line)[0]:
        if line[i] in comment:
            return line[:i]
    return line


def statements(line: str, syntax: str = "att") -> list[str]:
    """The statements of a line without its comment: AT&T `a; b` is two."""
    code = strip_comment(line, syntax)
    ends = [i for i in unquoted(code)[0] if code[i] == ";"]
    starts = [0] + [i + 1 for i in ends]
    return [code[a:b] for a, b in zip(starts, [*ends, len(code)], strict=True)]


def labels_of_line(line: str, syntax: str = "att") -> list[str]:
    names: list[str] = []
    for code in statements(line, syntax):
        while match := _LABEL.match(code):
            names.append(match.group(1))
            code = code[match.end() :]
    return names


def explicit_radix(line: str, syntax: str = "att") -> str:
    """The line with every bare decimal number written in hex (`32` -> `0x20`).

    Keystone reads bare numbers in hex once any Ks object in the process has
    had its syntax option set, even after that object is closed (see
    docs/pitfalls.md). Hex with a `0x` prefix means the same whatever the
    radix, so the source keystone sees has no bare decimals. String literals,
    identifiers (`r8`, `xmm0`), `0x`/`0b` literals and octal `010` are kept.
    """
    code = strip_comment(line, syntax)
    pieces = []
    position = 0
    for string in _STRING.finditer(code):
        pieces.append(_DECIMAL.sub(_to_hex, code[position : string.start()]))
        pieces.append(string.group(0))
        position = string.end()
    pieces.append(_DECIMAL.sub(_to_hex, code[position:]))
    return "".join(pieces)


def _to_hex(match: re.Match[str]) -> str:
    return hex(int(match.group(1)))


@dataclass(frozen=True)
class _Item:
    """One line of keystone text: a statement of the source, or layout of our own."""

    statement: Statement | None
    text: str
    syntax: str


def sources_of(scenario: Scenario) -> list[SourceFile]:
    """The scenario's assembly sources: its files, or its inline source."""
    if scenario.sources:
        return list(scenario.sources)
    return [
        SourceFile(
            name=Path(scenario.path).name,
            display=scenario.source_file,
            text=scenario.source,
            first_line=scenario.source_first_line,
            inline=True,
        )
    ]


@dataclass(frozen=True)
class KeystoneInput:
    """What keystone is given for one program, before the label trailer."""

    prepared: Prepared
    header: list[str]
    items: list[_Item]
    #: One label per item, and one after the last: the items' addresses.
    marks: list[str]
    #: The text: header, then each item on a line of its own behind its mark.
    lines: list[str]
    stub_origin: Origin
    #: The front end that read the sources (it re-writes lines on request).
    front: FrontEnd


def keystone_input(scenario: Scenario, constants: dict[str, int]) -> KeystoneInput:
    """Run the front end over the scenario's sources (region `constants` defined)."""
    stub_origin = Origin(scenario.path, scenario.path, 0, "[program] stubs")
    front = FrontEnd(
        sources_of(scenario),
        scenario.syntax,
        constants,
        defines=scenario.defines,
        stubs=scenario.stubs,
        stub_origin=stub_origin,
    )
    prepared = front.prepare()
    items = _layout(prepared, scenario.syntax)
    header = [".att_syntax"] if scenario.syntax == "att" else []
    header += [f".equ {name}, {value:#x}" for name, value in constants.items()]
    marks = [f"{_LINE_LABEL}{i}" for i in range(len(items) + 1)]
    lines = _text(header, items, marks, scenario.syntax, prepared.aliases)
    return KeystoneInput(prepared, header, items, marks, lines, stub_origin, front)


def assemble(scenario: Scenario, constants: dict[str, int]) -> Program:
    """Assemble the scenario's sources at CODE_BASE, region `constants` defined.

    front end (gnu_as.py) -> keystone in a worker process -> label addresses
    read back -> every instruction decoded and checked (guard.py). Lines whose
    absolute operands keystone got wrong are re-written once and assembled
    again (see FrontEnd.absolute_repaired).
    """
    given = keystone_input(scenario, constants)
    if not any(s.text for s in given.prepared.code):
        raise BadInput(f"{scenario.source_file}: the program assembles to no code")
    try:
        return _assemble(scenario, given)
    except _AbsoluteMisses as misses:
        if not all(given.front.absolute_repaired(s) for s in misses.statements):
            raise misses.error from None
        items = [
            replace(item, text=item.statement.text) if item.statement else item
            for item in given.items
        ]
        lines = _text(given.header, items, given.marks, scenario.syntax, given.prepared.aliases)
        return _assemble(scenario, replace(given, items=items, lines=lines), repairing=False)


class _AbsoluteMisses(Exception):
    """Instructions whose absolute operands keystone encoded wrong."""

    def __init__(self, statements: list[Statement], error: BadInput) -> None:
        super().__init__(str(error))
        self.statements = statements
        self.error = error


def _assemble(scenario: Scenario, given: KeystoneInput, repairing: bool = True) -> Program:
    prepared, items, marks = given.prepared, given.items, given.marks
    # Addresses to read back: every label, and every `.set` that names one.
    wanted = [prepared.aliases[name] for name in [*prepared.labels, *prepared.deferred]]
    worker = shared()
    trailer = [".intel_syntax noprefix"] + [f"movabs rax, {n}" for n in [*wanted, *marks]]
    try:
        code, error = _try(worker, [*given.lines, *trailer])
    except AssemblerCrash as crash:
        code, error = None, f"the assembler crashed: {crash}"
    if code is None:
        index, message = _locate_error(
            worker, given.header, items, scenario.syntax, prepared.aliases, error
        )
        raise _origin_of(items, index, given.stub_origin).fail(message)

    names = [*wanted, *marks]
    body_len = len(code) - _MOVABS_LEN * len(names)
    addresses = {}
    for i, name in enumerate(names):
        chunk = code[body_len + i * _MOVABS_LEN : body_len + (i + 1) * _MOVABS_LEN]
        if chunk[:2] != _MOVABS_RAX:
            raise BadInput(f"{scenario.source_file}: cannot work out the address of '{name}'")
        addresses[name] = int.from_bytes(chunk[2:], "little")
    body = code[:body_len]
    starts = [addresses[mark] for mark in marks]
    code_end = starts[len(prepared.code)]
    if code_end == CODE_BASE:
        raise BadInput(f"{scenario.source_file}: the program assembles to no code")
    if len(body) > CODE_LIMIT:
        raise BadInput(f"{scenario.source_file}: the program is larger than {CODE_LIMIT} bytes")
    labels = {name: addresses[prepared.aliases[name]] for name in prepared.labels}
    symbols = {**labels, **prepared.constants}
    for name, expr in prepared.deferred.items():
        # Our own value where the labels give it; keystone's for `.` (a location).
        symbols[name] = _deferred(expr, symbols, addresses[prepared.aliases[name]])
    lines, locations = _check_statements(items, starts, body, symbols, given.stub_origin, repairing)
    data_start = starts[len(prepared.code) + 1] if prepared.data else code_end
    return Program(
        base=CODE_BASE,
        code=body[: code_end - CODE_BASE],
        labels={n: a for n, a in labels.items() if not n.startswith("__stl_local_")},
        lines=lines,
        locations=locations,
        data_base=data_start,
        data=body[data_start - CODE_BASE :] if prepared.data else b"",
    )


def _deferred(expr: Expr, symbols: dict[str, int], keystone_value: int) -> int:
    try:
        return expr.value(symbols)
    except (Unknown, ExprError):
        return keystone_value


def _layout(prepared: Prepared, syntax: str) -> list[_Item]:
    """Code statements, then (page aligned) the data sections' statements."""
    items = [_Item(s, s.text, s.syntax) for s in prepared.code]
    if prepared.data:
        # Data gets pages of its own after the code, so it can be writable.
        items.append(_Item(None, f".balign {PAGE:#x}, 0x0", syntax))
        items += [_Item(s, s.text, s.syntax) for s in prepared.data]
    return items


def _text(
    header: list[str],
    items: list[_Item],
    marks: list[str] | None,
    syntax: str,
    aliases: Mapping[str, str],
) -> list[str]:
    """Keystone's input: header, then one line per item (marked with a label
    of its own when `marks` is given), switching syntax where items do."""
    lines = list(header)
    current = syntax
    for i, item in enumerate(items):
        if item.syntax != current:
            lines.append(".att_syntax" if item.syntax == "att" else ".intel_syntax noprefix")
            current = item.syntax
        labels = [] if item.statement is None else item.statement.labels
        defined = "".join(f"{aliases.get(name, name)}: " for name in labels)
        mark = f"{marks[i]}: " if marks is not None else ""
        lines.append(f"{mark}{defined}{explicit_radix(item.text, 'att')}")
    if marks is not None:
        lines.append(f"{marks[len(items)]}:")
    return lines


def _check_statements(
    items: list[_Item],
    starts: list[int],
    code: bytes,
    symbols: dict[str, int],
    stub_origin: Origin,
    repairing: bool = False,
) -> tuple[dict[int, int], dict[int, tuple[str, int]]]:
    """Each instruction became exactly the instruction its line says; map address -> line.

    Keystone drops some malformed lines without an error (`mov %rax,, %rbx`
    assembles to nothing): an instruction without bytes is an error here.
    Each instruction's bytes must decode back (capstone) to one instruction
    covering them, with the operands the line says (guard.py).
    """
    guard = Guard(symbols)
    lines: dict[int, int] = {}
    locations: dict[int, tuple[str, int]] = {}
    misses: list[tuple[Statement, BadInput]] = []
    for index, item in enumerate(items):
        statement = item.statement
        if statement is not None and statement.values:
            _check_data(guard, statement, starts[index], starts[index + 1], code)
        if statement is None or statement.kind != "insn":
            continue
        origin = statement.origin
        start, end = starts[index], starts[index + 1]
        if end <= start:
            raise origin.fail("keystone produced no code for this line")
        decoded = guard.decode(code[start - CODE_BASE : end - CODE_BASE], start)
        if sum(i.size for i in decoded) != end - start or len(decoded) != 1:
            raise origin.fail("the assembled bytes do not disassemble back to one instruction")
        instruction = decoded[0]
        if statement.expect_mnemonic and instruction.mnemonic != statement.expect_mnemonic:
            raise origin.fail(
                f"assembled as {instruction.mnemonic}, not {statement.expect_mnemonic}"
            )
        if statement.instruction is not None:
            problem = guard.mismatch(statement.instruction, instruction)
            if problem:
                shown = f"{instruction.mnemonic} {instruction.op_str}".strip()
                error = origin.fail(f"miscompile guard: keystone assembled `{shown}`, {problem}")
                if not (repairing and "expected absolute address" in problem):
                    raise error
                misses.append((statement, error))
        if origin is not stub_origin and start not in lines:
            lines[start] = origin.line
            locations[start] = (origin.name, origin.line)
    if misses:
        raise _AbsoluteMisses([s for s, _ in misses], misses[0][1])
    return lines, locations


def _check_data(guard: Guard, statement: Statement, start: int, end: int, code: bytes) -> None:
    """`.byte` ... `.quad`: the bytes must be the values the line computes."""
    width = statement.width
    written = code[start - CODE_BASE : end - CODE_BASE]
    if len(written) != width * len(statement.values):
        raise statement.origin.fail(
            f"miscompile guard: keystone wrote {len(written)} bytes, "
            f"the line says {width * len(statement.values)}"
        )
    for i, expr in enumerate(statement.values):
        here = start + i * width
        expected = guard.value(expr, here)
        if expected is None:
            continue
        got = int.from_bytes(written[i * width : (i + 1) * width], "little")
        if got != expected & ((1 << (8 * width)) - 1):
            raise statement.origin.fail(
                f"miscompile guard: item {i + 1} is {got:#x}, the line says "
                f"{expected & ((1 << (8 * width)) - 1):#x}"
            )


def _origin_of(items: list[_Item], index: int, fallback: Origin) -> Origin:
    for item in reversed(items[: index + 1]):
        if item.statement is not None:
            return item.statement.origin
    return fallback


def _try(worker: KeystoneWorker, lines: list[str]) -> tuple[bytes | None, str | None]:
    """Assemble `lines`; (code, None) or (None, what went wrong).

    Keystone sometimes gives up silently, returning no bytes and no error
    (`movq %rax, %%rbx` does). A marker instruction appended at the end shows
    whether the whole text was assembled.
    """
    text = "\n".join([*lines, ".intel_syntax noprefix", f"movabs rax, {_MARKER:#x}"])
    code, error = worker.assemble(text, CODE_BASE)
    if code is None:
        return None, _describe(error or "")
    if not code.endswith(_MARKER_BYTES):
        return None, "cannot assemble"
    return code[: -len(_MARKER_BYTES)], None


def _locate_error(
    worker: KeystoneWorker,
    header: list[str],
    items: list[_Item],
    syntax: str,
    aliases: Mapping[str, str],
    error: str | None,
) -> tuple[int, str]:
    """Find the first item whose prefix of the program fails to assemble.

    Keystone's own statement count does not map to lines. A prefix fails for
    its own reasons only if labels defined further down are stubbed, so each
    prefix gets `.equ label, 0` for the labels it does not reach. Prefix
    failure is monotonic, so a binary search finds the line. A prefix that
    crashes the worker counts as failing (a new worker takes over).
    """

    def prefix_error(end: int) -> str | None:
        later = [
            aliases.get(name, name)
            for item in items[end:]
            if item.statement is not None
            for name in item.statement.labels
        ]
        stubs = [f".equ {name}, 0" for name in later]
        try:
            text = _text(header, items[:end], None, syntax, aliases)
            return _try(worker, [*text, *stubs])[1]
        except AssemblerCrash as crash:
            return f"the assembler crashed: {crash}"

    timeout = worker.timeout
    if error and "did not finish" in error:
        # Keystone hung on the whole text: a prefix without the culprit takes
        # milliseconds, so each prefix that hangs again need not cost 30 s.
        worker.timeout = min(timeout, 5.0)
    try:
        return _bisect(prefix_error, len(items), error)
    finally:
        worker.timeout = timeout


def _bisect(
    prefix_error: Callable[[int], str | None], count: int, error: str | None
) -> tuple[int, str]:
    lo, hi = 1, count
    if prefix_error(hi) is None:
        # Only the whole program fails (say, a directive at the end): name the last line.
        return count - 1, error or "cannot assemble"
    while lo < hi:
        mid = (lo + hi) // 2
        if prefix_error(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1, prefix_error(lo) or "cannot assemble"


_KS_MESSAGES = {
    "KS_ERR_ASM_SYMBOL_MISSING": "undefined symbol",
    "KS_ERR_ASM_MNEMONICFAIL": "unknown instruction",
    "KS_ERR_ASM_INVALIDOPERAND": "invalid operand",
}


def _describe(text: str) -> str:
    for code, message in _KS_MESSAGES.items():
        if code in text:
            return message
    return text
