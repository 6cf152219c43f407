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

from keystone import KS_ARCH_X86, KS_MODE_64, Ks, KsError

from ..errors import BadInput
from ..layout import CODE_BASE, CODE_LIMIT
from ..scenario import Scenario

_LABEL = re.compile(r"\s*([A-Za-z_.$][\w.$@]*)\s*:(?!:)")
_MOVABS_RAX = b"\x48\xb8"
_MOVABS_LEN = 10


@dataclass(frozen=True)
class Program:
    """Assembled code and the labels it defines."""

    base: int
    code: bytes
    #: Every label of the source with its address, in source order.
    labels: dict[str, int]

    @property
    def symbols(self) -> dict[str, int]:
        """Labels that name code: local labels (starting with '.') are left out."""
        return {name: addr for name, addr in self.labels.items() if not name.startswith(".")}


def strip_comment(line: str) -> str:
    """The line without a `#` or `;` comment (quotes respected)."""
    quote = False
    for i, ch in enumerate(line):
        if ch == '"':
            quote = not quote
        elif ch in "#;" and not quote:
            return line[:i]
    return line


def labels_of_line(line: str) -> list[str]:
    code = strip_comment(line)
    names = []
    while True:
        match = _LABEL.match(code)
        if not match:
            return names
        names.append(match.group(1))
        code = code[match.end() :]


def _header(scenario: Scenario, constants: dict[str, int]) -> list[str]:
    lines = [".att_syntax"] if scenario.syntax == "att" else []
    lines += [f".equ {name}, {value:#x}" for name, value in constants.items()]
    return lines


def _try(ks: Ks, text: str) -> tuple[bytes | None, KsError | None]:
    try:
        encoding, _ = ks.asm(text, CODE_BASE)
    except KsError as exc:
        return None, exc
    return bytes(encoding or b""), None


def assemble(scenario: Scenario, constants: dict[str, int]) -> Program:
    """Assemble `scenario.source` at CODE_BASE with `constants` defined as `.equ`s."""
    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    header = _header(scenario, constants)
    user_lines = scenario.source.splitlines()
    line_labels = [labels_of_line(line) for line in user_lines]
    labels = [name for names in line_labels for name in names]
    for name in labels:
        if name in constants:
            _fail_at(scenario, _first_line_defining(line_labels, name),
                     f"label '{name}' clashes with a region symbol")

    # Label addresses: after the program, load each label into rax with a
    # 10-byte movabs and read the immediates back; code before is unchanged.
    trailer = [".intel_syntax noprefix"] + [f"movabs rax, {name}" for name in labels]
    code, error = _try(ks, "\n".join([*header, *user_lines, *trailer]))
    if error is not None or code is None:
        line, message = _locate_error(ks, header, user_lines, line_labels, error)
        _fail_at(scenario, line, message)
        raise AssertionError("unreachable")

    body_len = len(code) - _MOVABS_LEN * len(labels)
    addresses = {}
    for i, name in enumerate(labels):
        chunk = code[body_len + i * _MOVABS_LEN : body_len + (i + 1) * _MOVABS_LEN]
        if chunk[:2] != _MOVABS_RAX:
            raise BadInput(f"{scenario.source_file}: cannot work out the address of '{name}'")
        addresses[name] = int.from_bytes(chunk[2:], "little")
    body = code[:body_len]
    if not body:
        raise BadInput(f"{scenario.source_file}: the program assembles to no code")
    if len(body) > CODE_LIMIT:
        raise BadInput(f"{scenario.source_file}: the program is larger than {CODE_LIMIT} bytes")
    return Program(base=CODE_BASE, code=body, labels=addresses)


def _first_line_defining(line_labels: list[list[str]], name: str) -> int:
    return next(i for i, names in enumerate(line_labels) if name in names)


def _locate_error(
    ks: Ks,
    header: list[str],
    user_lines: list[str],
    line_labels: list[list[str]],
    error: KsError | None,
) -> tuple[int, str]:
    """Find the first user line whose prefix of the program fails to assemble.

    Keystone's own statement count does not map to lines. A prefix fails for
    its own reasons only if labels defined further down are stubbed, so each
    prefix gets `.equ label, 0` for the labels it does not reach. Prefix
    failure is monotonic, so a binary search finds the line.
    """

    def prefix_error(end: int) -> KsError | None:
        later = [name for names in line_labels[end:] for name in names]
        stubs = [".equ {}, 0".format(name) for name in later]
        _, err = _try(ks, "\n".join([*header, *user_lines[:end], *stubs]))
        return err

    lo, hi = 1, len(user_lines)
    if prefix_error(hi) is None:
        # Only the whole program fails (say, a directive at the end): name the last line.
        return len(user_lines) - 1, _describe(error)
    while lo < hi:
        mid = (lo + hi) // 2
        if prefix_error(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1, _describe(prefix_error(lo))


_KS_MESSAGES = {
    "KS_ERR_ASM_SYMBOL_MISSING": "undefined symbol",
    "KS_ERR_ASM_MNEMONICFAIL": "unknown instruction",
    "KS_ERR_ASM_INVALIDOPERAND": "invalid operand",
}


def _describe(error: KsError | None) -> str:
    if error is None:
        return "cannot assemble"
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
