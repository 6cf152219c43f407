"""Every resource a recording may use, bounded and named (docs/machine.md, "Limits").

A hostile or mistaken scenario must not exhaust memory, disk or time before
the tool can say what is wrong. Each limit has a default and, where a user may
need more, a command-line option to raise it up to a hard ceiling. Input over
a limit is `BadInput` (exit 2, one line naming the file and the limit); a run
that reaches one (output, trace size) stops or is cut with the trace kept.

This module also holds the checks made *before* the expensive step they
protect: reading input files (`read_input`: regular files only, inside the
scenario's directory unless allowed, at most so many bytes) and estimating a
program's size from its directives before the assembler allocates it
(`check_program_size`).
"""

from __future__ import annotations

import ast
import errno
import functools
import math
import operator
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    #: Bytes of a scenario file, and of each program file it names.
    max_source_bytes: int = 1 * MiB
    #: Bytes of assembled code (estimated from the directives before assembling).
    max_program_bytes: int = 1 * MiB
    #: `[[stacks]]` plus `[[data]]` regions.
    max_regions: int = 64
    #: Nesting of TOML tables and arrays (a scenario needs 3).
    max_toml_depth: int = 16
    #: Bytes of stdout and of stderr kept in the trace; the rest is counted.
    max_output_bytes: int = 1 * MiB
    #: Bytes of the trace file on disk: the run stops (reason `limit`) when reached.
    max_trace_bytes: int = 1 * GiB

    def __post_init__(self) -> None:
        for name, (lo, hi) in CEILINGS.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                option = OPTION_NAMES.get(name, name)
                raise BadInput(f"{option} must be between {lo} and {hi}, got {value}")


#: The range each limit may be set to. Ceilings keep a trace readable: its
#: metadata (source, its line table, code in hex, output) is one JSON text
#: stored twice in the Parquet footer, which readers refuse past 100 MB
#: (pyarrow's thrift limit). Measured: 2 x 4 MiB of NUL output (each NUL is
#: `\u0000` in JSON) gives a 117 MB file that reads; 2 x 16 MiB does not.
CEILINGS: dict[str, tuple[int, int]] = {
    "max_source_bytes": (1, 2 * MiB),
    "max_program_bytes": (1, 4 * MiB),
    "max_regions": (1, 64),
    "max_toml_depth": (1, 16),
    "max_output_bytes": (0, 4 * MiB),
    "max_trace_bytes": (64 * KiB, 1 << 50),
}
OPTION_NAMES = {
    "max_source_bytes": "--max-source-size",
    "max_program_bytes": "--max-program-size",
    "max_output_bytes": "--max-output",
    "max_trace_bytes": "--max-trace-size",
}
DEFAULT_LIMITS = Limits()


# --- Input files -------------------------------------------------------------


def resolve_input(name: str, base_dir: Path, where: str, allow_outside: bool) -> Path:
    """`name` (from a scenario) as a path inside `base_dir`.

    Absolute paths and `..` escapes (symbolic links included) need
    `--allow-outside`: a scenario shared with a colleague must not copy their
    `/etc/passwd` or SSH keys into a trace.
    """
    if "\0" in name:
        raise BadInput(f"{where}: {name!r}: a file name cannot hold a NUL byte")
    path = base_dir / name
    if not allow_outside:
        try:
            inside = base_dir.resolve()
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (3.11, 3.12)
            raise BadInput(f"{where}: {name!r} cannot be resolved: {_why(exc)}") from None
        if not resolved.is_relative_to(inside):
            raise BadInput(
                f"{where}: {name!r} is outside the scenario's directory {base_dir}; "
                "give --allow-outside to read it"
            )
    return path


def _why(exc: BaseException) -> str:
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return "a loop of symbolic links"
    return getattr(exc, "strerror", None) or str(exc)


#: A compiled program is read whole (its sha256, pyelftools). Far above any
#: static program here (the Rust example with std's debug info is ~10 MB), low
#: enough that a hostile path cannot exhaust memory.
MAX_PROGRAM_FILE_BYTES = 256 * MiB

#: A Linux process's memory (record/linux/process.py, record/machine/syscalls.py): its
#: segments, stack, heap and anonymous mappings together. Unicorn backs each
#: mapped page the program touches with host memory, so this bounds what a
#: program that maps and touches memory in a loop can cost. A segment over it
#: is refused at load; `brk` past it leaves the break unchanged and `mmap`
#: returns -ENOMEM, as Linux does when a process reaches RLIMIT_AS.
MAX_PROCESS_MEMORY = 1 * GiB
#: Mappings of a process: `mmap` past it returns -ENOMEM, as past Linux's
#: vm.max_map_count (65530). Far fewer here: unicorn's mem_map costs grow
#: faster than linearly with the regions already mapped (1,000 one-page maps:
#: 0.8 s; 2,000: 4.5 s; 4,000: 35 s), and each mapping is a region of the trace.
MAX_MAPPINGS = 1024
#: Open file descriptors, as `prlimit64` reports RLIMIT_NOFILE: `openat`
#: past it returns -EMFILE.
MAX_OPEN_FILES = 1024


def read_input(
    path: Path, limit: int, what: str = "file", option: str | None = "--max-source-size"
) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, without blocking.

    A FIFO, device or directory is refused before it is opened (`/dev/zero`
    would never end, a FIFO would block); O_NONBLOCK covers a file swapped for
    a FIFO in between.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError:  # a NUL byte in the name
        raise BadInput(f"{str(path)!r}: a file name cannot hold a NUL byte") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)  # fdopen of a directory would fail naming the fd number, not the file
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise BadInput(f"{path}: is {kind}; a {what} must be a regular file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        named = f" ({option})" if option else ""
        raise BadInput(f"{path}: larger than the {what} limit of {limit} bytes{named}")
    return data


def check_toml_depth(doc: object, path: Path, limit: int) -> None:
    """Tables and arrays nested at most `limit` deep (checked without recursion)."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        children: list[object] = []
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            raise BadInput(f"{path}: TOML nested more than {limit} levels deep")
        stack.extend((child, depth + 1) for child in children)


# --- The program's size before assembling ------------------------------------

_MAX_INSTRUCTION = 15
_DATA_SIZES = {
    ".byte": 1,
    ".word": 2,
    ".short": 2,
    ".hword": 2,
    ".value": 2,
    ".long": 4,
    ".int": 4,
    ".quad": 8,
    ".octa": 16,
    ".float": 4,
    ".single": 4,
    ".double": 8,
}
_TEXT = (".ascii", ".asciz", ".string")
_SKIP = (".skip", ".space", ".zero")
_ALIGN = (".align", ".balign")
_EQU = re.compile(r"^\s*\.(?:equ|set)\s+([A-Za-z_.$][\w.$]*)\s*,\s*(.+)$")
_BINARY: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.floordiv,
    ast.Mod: operator.mod,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.BitXor: operator.xor,
}


def evaluate(expression: str, constants: dict[str, int]) -> int | None:
    """An assembler integer expression over known constants, or None if not one."""
    text = expression.strip().replace("/", "//")
    if not text or len(text) > 200:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> int | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Invert):
            inner = value(node.operand)
            if inner is None:
                return None
            return (
                -inner
                if isinstance(node.op, ast.USub)
                else ~inner
                if isinstance(node.op, ast.Invert)
                else inner
            )
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if left is None or right is None:
                return None
            if isinstance(node.op, ast.LShift) and right > 128:
                return 1 << 128  # big enough to be over any limit, small enough to compute
            try:
                return _BINARY[type(node.op)](left, right)
            except (ZeroDivisionError, ValueError):
                return None
        return None

    return value(tree.body)


def _arguments(statement: str) -> list[str]:
    rest = statement.split(None, 1)
    return [a.strip() for a in rest[1].split(",")] if len(rest) > 1 else []


def _statement_bytes(
    statement: str, constants: dict[str, int], incbin: Callable[[str], int]
) -> int | str:
    """An upper bound of the bytes `statement` assembles to, or what cannot be bounded."""
    head = statement.split(None, 1)[0].lower() if statement.split() else ""
    if not head.startswith("."):
        return _MAX_INSTRUCTION
    args = _arguments(statement)

    def number(index: int, default: int | None = None) -> int | str:
        if index >= len(args) or not args[index]:
            return default if default is not None else f"{head} needs a size"
        found = evaluate(args[index], constants)
        if found is None:
            return f"cannot work out the size of {head} {args[index]} before assembling"
        return max(found, 0)

    if head in _SKIP:
        return number(0)
    if head == ".fill":
        repeat, size = number(0), number(1, 1)
        if isinstance(repeat, str) or isinstance(size, str):
            return repeat if isinstance(repeat, str) else size
        return repeat * min(size, 8)
    if head in _ALIGN:
        return number(0)
    if head == ".p2align":
        power = number(0)
        return power if isinstance(power, str) else 1 << min(power, 128)
    if head in _DATA_SIZES:
        return _DATA_SIZES[head] * max(len(args), 1)
    if head in _TEXT:
        return len(statement)
    if head == ".incbin":
        return incbin(statement)
    return 0


def check_program_size(
    lines: list[str],
    constants: dict[str, int],
    limit: int,
    fail: Callable[[int, str], BadInput],
    statements: Callable[[str], list[str]],
    incbin: Callable[[int, str], int],
) -> int:
    """Bound the assembled size of `lines` from their directives, before the assembler runs.

    `.skip 0x10000000000` would make the assembler allocate a terabyte; a
    `.rept` multiplies its body. Each statement's bytes are bounded from above
    (15 per instruction, the size each directive says), so a program accepted
    here cannot assemble to more than `limit` bytes of directives' making.
    `fail(line_index, message)` makes the error; returns the bound.
    """
    known = dict(constants)
    total = 0
    repeats: list[int] = []
    for index, line in enumerate(lines):
        for statement in statements(line):
            statement = statement.strip()
            if not statement:
                continue
            if equ := _EQU.match(statement):
                found = evaluate(equ.group(2), known)
                if found is not None:
                    known[equ.group(1)] = found
                continue
            head = statement.split(None, 1)[0].lower()
            if head == ".rept":
                count = evaluate(" ".join(_arguments(statement)), known)
                if count is None:
                    raise fail(index, "cannot work out the .rept count before assembling")
                repeats.append(max(count, 0))
                continue
            if head == ".endr":
                if repeats:
                    repeats.pop()
                continue
            size = _statement_bytes(statement, known, functools.partial(incbin, index))
            if isinstance(size, str):
                raise fail(index, size)
            total += size * math.prod(repeats)
            if total > limit:
                raise fail(
                    index,
                    f"the program would be larger than the limit of {limit} bytes "
                    "(--max-program-size)",
                )
    return total


def iter_incbin_names(statement: str) -> Iterator[str]:
    """The quoted file name of an `.incbin "name"[, skip[, count]]` statement."""
    found = re.match(r'\s*\.incbin\s+"((?:[^"\\]|\\.)*)"', statement, re.IGNORECASE)
    if found:
        yield found.group(1)
