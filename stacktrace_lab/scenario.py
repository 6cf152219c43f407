"""Scenario files: a TOML description of a program and the machine it runs on.

Built-in scenarios are ordinary scenario files in `stacktrace_lab/scenarios/`
and go through the same loader as a user's. Validation errors are `BadInput`
with one line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BadInput
from .limits import DEFAULT_LIMITS, Limits, check_toml_depth, read_input, resolve_input

if TYPE_CHECKING:  # the assembler's front end is imported where a program is read
    from .record.asm.gnu_as import SourceFile

BUILTIN_DIR = Path(__file__).parent / "scenarios"

STOP_REASONS = (
    "returned",
    "halted",
    "exit",
    "spin",
    "max_steps",
    "fault",
    "limit",
    # An instruction the emulator would run wrongly, or a system call one
    # emulated process cannot honour (fork, execve): docs/machine.md.
    "unsupported",
    # Every thread of the process waits, none with a timeout (record/machine/threads.py).
    "deadlock",
)
INVARIANT_IDS = (
    "alignment",
    "ret-source",
    "stack-bounds",
    "callee-saved",
    "stop",
    "expect",
)
DEFAULT_MAX_STEPS = 100_000
#: Larger regions than this are refused: the tool explains small programs,
#: and a typo such as an extra zero should not map gigabytes.
MAX_REGION_SIZE = 64 * 1024 * 1024
MAX_STEPS_LIMIT = 1_000_000_000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = {
    "name",
    "description",
    "syntax",
    "entry",
    "max_steps",
    "breaks",
    "stacks",
    "data",
    "expect",
    "program",
}


@dataclass(frozen=True)
class RegionSpec:
    name: str
    size: int


@dataclass(frozen=True)
class ExpectedRet:
    """A `ret` expected to pop a planted address from `stack` at `index`."""

    stack: str
    index: int
    target: str


@dataclass(frozen=True)
class Expectations:
    stdout: str | None = None
    stop: str | None = None
    rets: tuple[ExpectedRet, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "stdout": self.stdout,
            "stop": self.stop,
            "ret": [{"stack": r.stack, "index": r.index, "target": r.target} for r in self.rets],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Expectations:
        return cls(
            stdout=d.get("stdout"),
            stop=d.get("stop"),
            rets=tuple(
                ExpectedRet(str(r["stack"]), int(r["index"]), str(r["target"]))
                for r in d.get("ret", [])
            ),
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    syntax: str  # "att" or "intel"
    entry: str
    source: str
    stacks: tuple[RegionSpec, ...]
    data: tuple[RegionSpec, ...] = ()
    max_steps: int = DEFAULT_MAX_STEPS
    expect: Expectations = field(default_factory=Expectations)
    #: The invariant this scenario is built to break (a teaching example), if any.
    breaks: str | None = None
    #: Where the assembly came from, for error messages: a file and the line
    #: of that file on which the source's first line stands.
    source_file: str = "<source>"
    source_first_line: int = 1
    #: The scenario file itself, for error messages.
    path: str = "<scenario>"
    #: `file`/`files`: the assembly files, in order (empty for inline `source`).
    sources: tuple[SourceFile, ...] = ()
    #: `defines`: C preprocessor macros for `.S` files (on top of the defaults).
    defines: dict[str, str] = field(default_factory=dict)
    #: `stubs`: undefined symbol -> built-in behaviour (gnu_as.STUB_CODE).
    stubs: dict[str, str] = field(default_factory=dict)
    #: Whether files it names (`[program] file`, `.incbin`) may lie outside its directory.
    allow_outside: bool = False
    #: What a trace's `program.path` says: the path as given, or the
    #: built-in's name (not where the package is installed).
    given_as: str = "<scenario>"
    #: sha256 (hex) of the scenario file's bytes, for a trace's `program`.
    sha256: str | None = None


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def resolve(name_or_path: str) -> Path:
    """A built-in name or a path to a `.toml` file."""
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return Path(name_or_path)
    candidate = BUILTIN_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(builtin_names())
    raise BadInput(f"{name_or_path}: no such built-in scenario (built-ins: {known})")


def load_scenario(
    name_or_path: str | os.PathLike[str],
    limits: Limits = DEFAULT_LIMITS,
    allow_outside: bool = False,
) -> Scenario:
    """Read and check a scenario; its files are bounded by `limits` (limits.py)."""
    given = os.fspath(name_or_path)
    path = resolve(given)
    data = read_input(path, limits.max_source_bytes, "scenario file")
    try:
        # As read_text() would: universal newlines.
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: malformed TOML: {exc}") from None
    except RecursionError:
        raise BadInput(
            f"{path}: TOML nested more than {limits.max_toml_depth} levels deep"
        ) from None
    check_toml_depth(doc, path, limits.max_toml_depth)
    given_as = path.stem if path.parent == BUILTIN_DIR and given == path.stem else given
    return replace(
        _parse(doc, path, text, limits, allow_outside),
        given_as=given_as,
        sha256=hashlib.sha256(data).hexdigest(),
    )


class _Fields:
    """Typed access to a TOML table that names the file and field on error."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "") -> None:
        self.path = path
        self.table = table
        self.prefix = prefix

    def fail(self, key: str, message: str) -> BadInput:
        return BadInput(f"{self.path}: field '{self.prefix}{key}': {message}")

    def string(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if key in self.table else None

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def tables(self, key: str) -> list[dict[str, Any]]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "must be an array of tables ([[...]])")
        return value

    def no_unknown(self, allowed: set[str]) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.fail(key, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _regions(f: _Fields, key: str) -> tuple[RegionSpec, ...]:
    specs = []
    for i, table in enumerate(f.tables(key)):
        sub = _Fields(f.path, table, f"{key}[{i}].")
        sub.no_unknown({"name", "size"})
        name = sub.string("name")
        if not _IDENT.match(name) or name == "code":
            raise sub.fail("name", f"must be an identifier other than 'code', got {name!r}")
        specs.append(RegionSpec(name=name, size=sub.integer("size", 1, MAX_REGION_SIZE)))
    return tuple(specs)


def _parse(
    doc: dict[str, Any], path: Path, text: str, limits: Limits, allow_outside: bool
) -> Scenario:
    f = _Fields(path, doc)
    f.no_unknown(_TOP_KEYS)
    name = f.string("name")
    if not _NAME.match(name):
        raise f.fail("name", f"must be letters, digits, '-', '_' or '.', got {name!r}")
    syntax = f.string("syntax", "att")
    if syntax not in ("att", "intel"):
        raise f.fail("syntax", f"must be 'att' or 'intel', got {syntax!r}")
    entry = f.string("entry", "main")
    breaks = f.optional_string("breaks")
    if breaks is not None and breaks not in INVARIANT_IDS:
        raise f.fail("breaks", f"must be one of {', '.join(INVARIANT_IDS)}, got {breaks!r}")

    declared = len(f.tables("stacks")) + len(f.tables("data"))
    if declared > limits.max_regions:
        raise f.fail("stacks", f"{declared} regions declared, more than {limits.max_regions}")
    stacks = _regions(f, "stacks")
    if not stacks:
        raise f.fail("stacks", "at least one [[stacks]] region is required")
    data = _regions(f, "data")
    seen: set[str] = set()
    for region in (*stacks, *data):
        if region.name in seen:
            raise f.fail("stacks", f"region name {region.name!r} is declared twice")
        seen.add(region.name)

    expect = _expectations(f, {s.name: s.size for s in stacks})
    program = _program(f, path, text, limits, allow_outside)
    return Scenario(
        name=name,
        description=f.string("description", ""),
        syntax=syntax,
        entry=entry,
        source=program.source,
        stacks=stacks,
        data=data,
        max_steps=f.integer("max_steps", 1, MAX_STEPS_LIMIT, DEFAULT_MAX_STEPS),
        expect=expect,
        breaks=breaks,
        source_file=program.source_file,
        source_first_line=program.first_line,
        path=str(path),
        sources=program.sources,
        defines=program.defines,
        stubs=program.stubs,
        allow_outside=allow_outside,
    )


def _expectations(f: _Fields, stack_sizes: dict[str, int]) -> Expectations:
    table = f.table.get("expect", {})
    if not isinstance(table, dict):
        raise f.fail("expect", "must be a table")
    e = _Fields(f.path, table, "expect.")
    e.no_unknown({"stdout", "stop", "ret"})
    stop = e.optional_string("stop")
    if stop is not None and stop not in STOP_REASONS:
        raise e.fail("stop", f"must be one of {', '.join(STOP_REASONS)}, got {stop!r}")
    rets = []
    for i, ret_table in enumerate(e.tables("ret")):
        r = _Fields(f.path, ret_table, f"expect.ret[{i}].")
        r.no_unknown({"stack", "index", "target"})
        stack = r.string("stack")
        if stack not in stack_sizes:
            raise r.fail("stack", f"no stack named {stack!r} is declared")
        index = r.integer("index", 0, stack_sizes[stack] - 8)
        rets.append(ExpectedRet(stack=stack, index=index, target=r.string("target")))
    return Expectations(stdout=e.optional_string("stdout"), stop=stop, rets=tuple(rets))


@dataclass(frozen=True)
class _Program:
    source: str
    source_file: str
    first_line: int
    sources: tuple[SourceFile, ...] = ()
    defines: dict[str, str] = field(default_factory=dict)
    stubs: dict[str, str] = field(default_factory=dict)


def _program(f: _Fields, path: Path, text: str, limits: Limits, allow_outside: bool) -> _Program:
    table = f.table.get("program")
    if not isinstance(table, dict):
        raise f.fail("program", "a [program] table with 'source', 'file' or 'files' is required")
    p = _Fields(path, table, "program.")
    p.no_unknown({"source", "file", "files", "defines", "stubs"})
    given = [key for key in ("source", "file", "files") if key in table]
    if len(given) != 1:
        raise p.fail("source", "give exactly one of 'source', 'file' and 'files'")
    defines = _string_table(p, "defines", re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$"))
    stubs = _string_table(p, "stubs", re.compile(r"^[A-Za-z_.$][\w.$]*$"))
    from .record.asm.gnu_as import STUB_CODE

    for name, behaviour in stubs.items():
        if behaviour not in STUB_CODE:
            raise p.fail(
                f"stubs.{name}", f"must be one of {', '.join(STUB_CODE)}, got {behaviour!r}"
            )
    if "source" in table:
        return _Program(
            p.string("source"), str(path), _inline_source_line(text), defines=defines, stubs=stubs
        )
    if "file" in table:
        names = [p.string("file")]
    else:
        names = table["files"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise p.fail("files", "must be a non-empty array of file names")
    sources = tuple(_source_file(p, path, name, limits, allow_outside) for name in names)
    first = sources[0]
    # The trace keeps the program's text for reports: with several files, all
    # of them, each under a line naming it.
    text = first.text
    if len(sources) > 1:
        text = "\n".join(f"// ---- {s.name} ----\n{s.text.rstrip()}" for s in sources) + "\n"
    return _Program(text, first.display, 1, sources, defines, stubs)


def _string_table(p: _Fields, key: str, names: re.Pattern[str]) -> dict[str, str]:
    table = p.table.get(key, {})
    if not isinstance(table, dict):
        raise p.fail(key, "must be a table of names to strings")
    out = {}
    for name, value in table.items():
        if not names.match(name):
            raise p.fail(f"{key}.{name}", "is not a valid name")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise p.fail(f"{key}.{name}", f"must be a string, got {value!r}")
        out[name] = str(value)
    return out


def _source_file(
    p: _Fields, path: Path, name: str, limits: Limits, allow_outside: bool
) -> SourceFile:
    from .record.asm.gnu_as import SourceFile

    key = "file" if "file" in p.table else "files"
    where = f"{path}: field 'program.{key}'"
    asm_path = resolve_input(name, path.parent, where, allow_outside)
    if not asm_path.exists():
        raise p.fail(key, f"cannot read {asm_path}: no such file")
    data = read_input(asm_path, limits.max_source_bytes, "program file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{asm_path}: not UTF-8 text: {exc}") from None
    return SourceFile(
        name=name,
        display=str(asm_path),
        text=text,
        preprocess=asm_path.suffix == ".S",
        directory=str(asm_path.parent),
        allow_outside=allow_outside,
        max_bytes=limits.max_source_bytes,
    )


def _inline_source_line(text: str) -> int:
    """The TOML line on which an inline `source = ...` program's first line stands."""
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"\s*source\s*=\s*(\"\"\"|'''|\"|')(.*)$", line)
        if match:
            # TOML drops a newline that directly follows opening triple quotes;
            # a one-line string starts on the line of its key.
            triple = len(match.group(1)) == 3
            return number + 1 if triple and match.group(2) == "" else number
    return 1
