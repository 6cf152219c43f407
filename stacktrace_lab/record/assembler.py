"""Assembling a scenario's source with keystone, and naming its labels.

Keystone has two traps this module exists to avoid (see docs/pitfalls.md):
setting a syntax option, or a symbol resolver, makes every bare number
hexadecimal (`$32` would become 0x32 = 50), so AT&T source is assembled in the
default mode behind a `.att_syntax` directive; and keystone reports neither
label addresses nor reliable error lines, so both are worked out here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from keystone import KS_ARCH_X86, KS_MODE_64, Ks, KsError

from ..errors import BadInput
from ..layout import CODE_BASE, CODE_LIMIT
from ..scenario import Scenario

_DECIMAL = re.compile(r"(?<![\w.])([1-9][0-9]*|0)(?![\w.])")
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

    @property
    def symbols(self) -> dict[str, int]:
        """Labels that name code: local labels (starting with '.') are left out."""
        return {name: addr for name, addr in self.labels.items() if not name.startswith(".")}


def _unquoted(text: str) -> tuple[list[int], bool]:
    """Indices of the characters outside string literals (`\\"` escapes
    respected), and whether the text ends inside a string."""
    outside: list[int] = []
    quote = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quote and ch == "\\":
            escaped = True
        elif ch == '"':
            quote = not quote
        elif not quote:
            outside.append(i)
    return outside, quote


def strip_comment(line: str, syntax: str = "att") -> str:
    """The line without its comment.

    `#` starts a comment. In AT&T source `;` separates statements, as in GNU
    as and keystone (`movq (%rdi), %rsp; ret` is two instructions); in Intel
    source it starts a comment, as NASM-style programs write it.
    """
    comment = "#;" if syntax == "intel" else "#"
    for i in _unquoted(line)[0]:
        if line[i] in comment:
            return line[:i]
    return line


def statements(line: str, syntax: str = "att") -> list[str]:
    """The statements of a line without its comment: AT&T `a; b` is two."""
    code = strip_comment(line, syntax)
    ends = [i for i in _unquoted(code)[0] if code[i] == ";"]
    starts = [0] + [i + 1 for i in ends]
    return [code[a:b] for a, b in zip(starts, [*ends, len(code)], strict=True)]


def labels_of_line(line: str, syntax: str = "att") -> list[str]:
    names: list[str] = []
    for code in statements(line, syntax):
        while match := _LABEL.match(code):
            names.append(match.group(1))
            code = code[match.end() :]
    return names


def lexical_error(line: str, syntax: str = "att") -> str | None:
    """What keystone would mishandle in a line: it loops forever on a string
    without its closing quote, and reads `mov rax, [rbx` as a load from 0."""
    code = strip_comment(line, syntax)
    outside, open_string = _unquoted(code)
    if open_string:
        return "unterminated string"
    text = "".join(code[i] for i in outside)
    for opening, closing in ("[]", "()"):
        if text.count(opening) != text.count(closing):
            return f"unbalanced '{opening}' and '{closing}'"
    return None


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


def _header(scenario: Scenario, constants: dict[str, int]) -> list[str]:
    lines = [".att_syntax"] if scenario.syntax == "att" else []
    lines += [f".equ {name}, {value:#x}" for name, value in constants.items()]
    return lines


def _try(ks: Ks, lines: list[str]) -> tuple[bytes | None, str | None]:
    """Assemble `lines`; (code, None) or (None, what went wrong).

    Keystone sometimes gives up silently, returning no bytes and no error
    (`movq %rax, %%rbx` does). A marker instruction appended at the end shows
    whether the whole text was assembled.
    """
    text = "\n".join([*lines, ".intel_syntax noprefix", f"movabs rax, {_MARKER:#x}"])
    try:
        encoding, _ = ks.asm(text, CODE_BASE)
    except KsError as exc:
        return None, _describe(exc)
    code = bytes(encoding or b"")
    if not code.endswith(_MARKER_BYTES):
        return None, "cannot assemble"
    return code[: -len(_MARKER_BYTES)], None


def assemble(scenario: Scenario, constants: dict[str, int]) -> Program:
    """Assemble `scenario.source` at CODE_BASE with `constants` defined as `.equ`s."""
    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    header = _header(scenario, constants)
    user_lines = scenario.source.splitlines()
    for number, text in enumerate(user_lines):
        problem = lexical_error(text, scenario.syntax)
        if problem is not None:
            _fail_at(scenario, number, problem)
    line_labels = [labels_of_line(line, scenario.syntax) for line in user_lines]
    explicit_lines = [explicit_radix(line, scenario.syntax) for line in user_lines]
    labels = [name for names in line_labels for name in names]
    for name in labels:
        if name in constants:
            _fail_at(
                scenario,
                _first_line_defining(line_labels, name),
                f"label '{name}' clashes with a region symbol",
            )

    # Every line gets a label of its own, and after the program a 10-byte
    # movabs loads each label into rax: reading the immediates back gives the
    # address of every label and every line, without changing the code before.
    line_marks = [f"{_LINE_LABEL}{i}" for i in range(len(user_lines))]
    marked = [f"{mark}: {line}" for mark, line in zip(line_marks, explicit_lines, strict=True)]
    wanted = [*labels, *line_marks]
    trailer = [".intel_syntax noprefix"] + [f"movabs rax, {name}" for name in wanted]
    code, error = _try(ks, [*header, *marked, *trailer])
    if code is None:
        line, message = _locate_error(ks, header, explicit_lines, line_labels, error)
        _fail_at(scenario, line, message)
        raise AssertionError("unreachable")

    body_len = len(code) - _MOVABS_LEN * len(wanted)
    addresses = {}
    for i, name in enumerate(wanted):
        chunk = code[body_len + i * _MOVABS_LEN : body_len + (i + 1) * _MOVABS_LEN]
        if chunk[:2] != _MOVABS_RAX:
            raise BadInput(f"{scenario.source_file}: cannot work out the address of '{name}'")
        addresses[name] = int.from_bytes(chunk[2:], "little")
    body = code[:body_len]
    if not body:
        raise BadInput(f"{scenario.source_file}: the program assembles to no code")
    if len(body) > CODE_LIMIT:
        raise BadInput(f"{scenario.source_file}: the program is larger than {CODE_LIMIT} bytes")
    line_starts = [addresses[mark] for mark in line_marks] + [CODE_BASE + len(body)]
    lines = _check_lines(scenario, user_lines, line_starts, body)
    return Program(
        base=CODE_BASE,
        code=body,
        labels={name: addresses[name] for name in labels},
        lines=lines,
    )


def _check_lines(
    scenario: Scenario, user_lines: list[str], line_starts: list[int], code: bytes
) -> dict[int, int]:
    """Check that each instruction line became whole instructions; map address -> line.

    Keystone drops some malformed lines without an error (`mov %rax,, %rbx`
    assembles to nothing): a line with an instruction but no bytes is an
    error here. Each line's bytes must also disassemble back (capstone) to
    instructions that cover them exactly.
    """
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    lines: dict[int, int] = {}
    for index, line in enumerate(user_lines):
        statement = _statement(line, scenario.syntax)
        start, end = line_starts[index], line_starts[index + 1]
        if not statement or statement.startswith("."):
            continue  # empty, a label, or a directive (data may be any bytes)
        if end <= start:
            _fail_at(scenario, index, "keystone produced no code for this line")
        instructions = list(cs.disasm(code[start - CODE_BASE : end - CODE_BASE], start))
        if sum(i.size for i in instructions) != end - start:
            _fail_at(scenario, index, "the assembled bytes do not disassemble back")
        lines[start] = scenario.source_first_line + index
    return lines


def _statement(line: str, syntax: str) -> str:
    """What is left of a line without its labels and comment."""
    rest = []
    for code in statements(line, syntax):
        while match := _LABEL.match(code):
            code = code[match.end() :]
        if code.strip():
            rest.append(code.strip())
    return "; ".join(rest)


def _first_line_defining(line_labels: list[list[str]], name: str) -> int:
    return next(i for i, names in enumerate(line_labels) if name in names)


def _locate_error(
    ks: Ks,
    header: list[str],
    user_lines: list[str],
    line_labels: list[list[str]],
    error: str | None,
) -> tuple[int, str]:
    """Find the first user line whose prefix of the program fails to assemble.

    Keystone's own statement count does not map to lines. A prefix fails for
    its own reasons only if labels defined further down are stubbed, so each
    prefix gets `.equ label, 0` for the labels it does not reach. Prefix
    failure is monotonic, so a binary search finds the line.
    """

    def prefix_error(end: int) -> str | None:
        later = [name for names in line_labels[end:] for name in names]
        stubs = [f".equ {name}, 0" for name in later]
        return _try(ks, [*header, *user_lines[:end], *stubs])[1]

    lo, hi = 1, len(user_lines)
    if prefix_error(hi) is None:
        # Only the whole program fails (say, a directive at the end): name the last line.
        return len(user_lines) - 1, error or "cannot assemble"
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


def _describe(error: KsError) -> str:
    text = str(error)
    for code, message in _KS_MESSAGES.items():
        if code in text:
            return message
    return text


def _fail_at(scenario: Scenario, index: int, message: str) -> None:
    lines = scenario.source.splitlines()
    shown = lines[index].strip() if 0 <= index < len(lines) else ""
    line_number = scenario.source_first_line + index
    raise BadInput(f"{scenario.source_file}:{line_number}: {message}: {shown}")
