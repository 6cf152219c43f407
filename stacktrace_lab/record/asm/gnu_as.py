"""The GNU-as front end: real `.s`/`.S` files in, statements keystone reads right out.

Keystone (the assembler) crashes, refuses or silently miscompiles much of what
projects ship (docs/pitfalls.md). This module reads the source the way GNU as
does and hands keystone only what it is known to handle:

    .S -> C preprocessor (pcpp) -> comments out -> statements (`;`, labels)
       -> directives interpreted here (sections, symbols, .equ, alignment)
       -> instructions with their operands parsed (operands.py), constants
          written out as numbers, names keystone cannot read renamed

Every statement keeps where it came from (file, line), so an error names the
line of the file the user wrote, and the miscompile guard (guard.py) knows
what each instruction must decode to.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ...errors import BadInput
from ...layout import CODE_LIMIT
from ...limits import DEFAULT_LIMITS, read_input, resolve_input
from .operands import (
    REGISTERS,
    Expr,
    ExprError,
    Instruction,
    Operand,
    Unknown,
    hex_text,
    parse_instruction,
    render_operand,
    split_operands,
)

#: Defines every `.S` file sees, as GCC does on x86-64 Linux.
MAX_SOURCE_BYTES = DEFAULT_LIMITS.max_source_bytes
#: `#include`s nested at most this deep (GCC allows 200; a program here needs
#: a few), and all included files together at most this many times the limit.
MAX_INCLUDE_DEPTH = 32
MAX_INCLUDED_FILES = 8
DEFAULT_DEFINES = {"__x86_64__": "1", "__x86_64": "1", "__linux__": "1", "__ELF__": "1"}
#: Built-in behaviours an undefined external can be mapped to in
#: `[program] stubs`: the code placed at the symbol's address.
STUB_CODE = {
    "halt": ["hlt"],  # stop reason `halted`
    "exit": ["mov $60, %eax", "syscall"],  # exit(rdi), as _exit does
    "return": ["ret"],  # return to the caller, rax unchanged
    "spin": ["jmp ."],  # stop reason `spin`
    "trap": ["ud2"],  # an invalid instruction: stop reason `fault`
}
ENDBR64 = ".byte 0xf3, 0x0f, 0x1e, 0xfa"

Section = Literal["code", "data", "ignored"]

_CPP_DIRECTIVES = frozenset(
    [
        "if",
        "ifdef",
        "ifndef",
        "elif",
        "else",
        "endif",
        "define",
        "undef",
        "include",
        "error",
        "warning",
        "line",
        "pragma",
    ]
)
_LABEL = re.compile(r"\s*([A-Za-z_.$][\w.$@]*|[0-9]+)\s*:(?!:)")
_NUMERIC_REF = re.compile(r"(?<![\w.$])([0-9]+)([bf])(?![\w.$])")
_MNEMONIC = re.compile(r"[a-z][a-z0-9]*")
_STRINGS = re.compile(r'\s*"(?:[^"\\]|\\.)*"(\s*,\s*"(?:[^"\\]|\\.)*")*\s*')
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CPP_LINE = re.compile(r"^\s*#(if|ifdef|ifndef|elif|else|endif|define|undef|include)\b")
_LINE_MARKER = re.compile(r'^\s*#\s*line\s+(\d+)\s+"((?:[^"\\]|\\.)*)"')

#: Directives with no effect on a program that runs in one address space
#: from a fixed entry: symbol visibility and binding, ELF types and sizes,
#: unwind tables (.cfi_*), debug line info.
_IGNORED = frozenset(
    [
        ".globl",
        ".global",
        ".hidden",
        ".local",
        ".weak",
        ".weakref",
        ".protected",
        ".internal",
        ".extern",
        ".type",
        ".size",
        ".file",
        ".ident",
        ".loc",
        ".loc_mark_labels",
        ".code64",
        ".end",
        ".func",
        ".endfunc",
        ".addrsig",
        ".addrsig_sym",
        ".symver",
        ".arch",
        ".lto_discard",
    ]
)
_DATA = frozenset(
    [
        ".byte",
        ".short",
        ".word",
        ".hword",
        ".value",
        ".2byte",
        ".long",
        ".int",
        ".4byte",
        ".quad",
        ".8byte",
        ".ascii",
        ".asciz",
        ".string",
        ".zero",
        ".skip",
        ".space",
        ".fill",
    ]
)
#: Bytes per item of the integer data directives (`.word` is 2 on x86).
DATA_WIDTHS = {
    ".byte": 1, ".short": 2, ".word": 2, ".hword": 2, ".value": 2, ".2byte": 2,
    ".long": 4, ".int": 4, ".4byte": 4, ".quad": 8, ".8byte": 8,
}  # fmt: skip
_SIZED_FILL = frozenset([".zero", ".skip", ".space"])
_CODE_SECTIONS = re.compile(r"^\.text(\..*)?$")
_DATA_SECTIONS = re.compile(r"^\.(data|rodata|bss|tdata|tbss)(\..*|1[0-9]?)?$")
_IGNORED_SECTIONS = re.compile(r"^\.(note|debug|comment|eh_frame|gnu|stab|zdebug|llvm).*$")


@dataclass(frozen=True)
class SourceFile:
    """One assembly source: inline `source`, or a file of `file`/`files`."""

    #: Name as the scenario gives it (relative to the .toml), for the trace.
    name: str
    #: Path for error messages.
    display: str
    text: str
    #: The line of `display` on which the text's first line stands.
    first_line: int = 1
    #: Run the C preprocessor first (`.S` files).
    preprocess: bool = False
    #: Directory that `#include "x"` reads from.
    directory: str = "."
    #: Inline `source` of a scenario: there Intel `;` starts a comment (the
    #: project's rule from before files, NASM's). In files GNU as's rule
    #: holds: `;` separates statements in both syntaxes, so a `#define` that
    #: expands to `a; b` is two statements.
    inline: bool = False
    #: Whether `#include` may read files outside `directory` (`--allow-outside`).
    allow_outside: bool = False
    #: Bytes each `#include`d file may have (--max-source-size, as the file itself).
    max_bytes: int = MAX_SOURCE_BYTES


@dataclass(frozen=True)
class Origin:
    file: str  # display path
    name: str  # name relative to the scenario
    line: int
    text: str  # the source line as written, for messages

    def fail(self, message: str) -> BadInput:
        shown = f": {self.text.strip()}" if self.text.strip() else ""
        return BadInput(f"{self.file}:{self.line}: {message}{shown}")


@dataclass
class Statement:
    """One statement for keystone, in the syntax it is written in."""

    origin: Origin
    syntax: str
    section: Section
    labels: list[str] = field(default_factory=list)
    #: Keystone text ('' for a label alone); names already renamed.
    text: str = ""
    kind: Literal["none", "insn", "data", "align", "equ"] = "none"
    instruction: Instruction | None = None
    #: For `endbr64`: the mnemonic capstone must decode.
    expect_mnemonic: str | None = None
    #: For `.byte` ... `.quad`: the width of each item and its expressions,
    #: so the guard can check the bytes keystone wrote.
    width: int = 0
    values: list[Expr] = field(default_factory=list)


@dataclass
class Prepared:
    code: list[Statement]
    data: list[Statement]
    #: Values known before assembly: `.equ`s and the region symbols.
    constants: dict[str, int]
    #: `.equ`s naming labels, evaluated once labels have addresses.
    deferred: dict[str, Expr]
    #: Source label -> the name keystone sees.
    aliases: dict[str, str]
    #: Source labels in order of definition.
    labels: list[str]


def preprocess(source: SourceFile, defines: Mapping[str, str]) -> list[tuple[Origin, str]]:
    """Lines after the C preprocessor, each with the line it came from."""
    from pcpp import Preprocessor  # imported only for .S files
    from pcpp.preprocessor import OutputDirective

    errors: list[str] = []
    included = [0]  # bytes read by #include, all files together

    def where(file: str, line: int) -> str:
        if file == "unknown":  # pcpp's name for the end of the input
            return f"{source.display}:{max(line, len(source.text.splitlines()))}"
        return f"{_included_name(source, file)[0]}:{line}"

    class _Cpp(Preprocessor):  # type: ignore[misc]
        def on_error(self, file: str, line: int, msg: str) -> None:
            errors.append(f"{where(file, line)}: {msg}")

        def on_include_not_found(
            self, is_malformed: bool, is_system_include: bool, curdir: str, includepath: str
        ) -> None:
            at = self.lastdirective
            errors.append(f"{where(at.source, at.lineno)}: cannot include {includepath}")
            raise OutputDirective(1)  # remove it from the output

        def on_file_open(self, is_system_include: bool, includepath: str) -> Any:
            # An included file lands in the trace's source: like `[program] file`,
            # it must be a regular file inside the scenario's directory unless
            # --allow-outside (a shared scenario must not copy a host file), and
            # of at most the source limit (a 300 MiB header was read whole).
            at = self.lastdirective
            here = where(at.source, at.lineno)
            if len(self.temp_path) >= MAX_INCLUDE_DEPTH:
                # A file including itself recursed until Python's RecursionError.
                errors.append(
                    f"{here}: #include nested more than {MAX_INCLUDE_DEPTH} deep "
                    "(does a file include itself?)"
                )
                raise OSError("#include nested too deep")
            try:
                path = Path(includepath).resolve()
                exists = path.exists()
            except (OSError, RuntimeError, ValueError):  # a symbolic link loop, a NUL
                raise OSError(f"{includepath} cannot be resolved") from None
            if exists and not path.is_file():
                raise OSError(f"{includepath} is not a regular file")
            inside = path.is_relative_to(Path(source.directory).resolve())
            if exists and not inside and not source.allow_outside:
                errors.append(
                    f"{here}: #include {includepath} lies outside the "
                    "scenario's directory (--allow-outside to read it)"
                )
                raise OSError(f"{includepath} is outside the scenario's directory")
            if not exists:
                raise OSError(f"{includepath}: no such file")
            try:
                data = read_input(path, source.max_bytes, "#include file")
                text = data.decode("utf-8")
            except (BadInput, UnicodeDecodeError) as exc:
                errors.append(f"{here}: #include {includepath}: {exc}")
                raise OSError(str(exc)) from None
            included[0] += len(data)
            if included[0] > MAX_INCLUDED_FILES * source.max_bytes:
                errors.append(
                    f"{here}: #include: more than {MAX_INCLUDED_FILES * source.max_bytes} bytes "
                    f"included in all ({MAX_INCLUDED_FILES} times the source limit)"
                )
                raise OSError("too much included")
            return io.StringIO(text)

        def on_comment(self, tok: object) -> bool:
            return False

        def on_directive_unknown(
            self, directive: Any, toks: list[Any], ifpassthru: bool, precedingtoks: list[Any]
        ) -> bool:
            if directive.value == "error":
                text = "".join(tok.value for tok in toks).strip()
                errors.append(f"{where(directive.source, directive.lineno)}: #error {text}")
            return True  # #error, #warning, #pragma...: nothing for the assembler

    cpp = _Cpp()
    cpp.line_directive = "#line"
    cpp.compress = False
    for name, value in {**DEFAULT_DEFINES, **defines}.items():
        cpp.define(f"{name} {value}")
    cpp.add_path(source.directory)
    cpp.parse(_without_asm_comments(source.text, keep_cpp=True), source=source.display)
    out = io.StringIO()
    cpp.write(out)
    if errors:
        raise BadInput(f"{errors[0]} (C preprocessor)")
    lines = []
    file, number = source.display, 1
    originals: dict[str, list[str]] = {}
    names: dict[str, tuple[str, str]] = {}
    for text in out.getvalue().splitlines():
        marker = _LINE_MARKER.match(text)
        if marker:
            number, file = int(marker.group(1)), marker.group(2)
            continue
        if file not in names:
            names[file] = _included_name(source, file)
            try:
                originals[file] = Path(names[file][0]).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                originals[file] = []
        display, name = names[file]
        raw = originals[file][number - 1] if 0 < number <= len(originals[file]) else text
        lines.append((Origin(display, name, number, raw), text))
        number += 1
    return lines


def _included_name(source: SourceFile, file: str) -> tuple[str, str]:
    """(display path, name relative to the scenario) of a file the preprocessor read."""
    path = Path(file).resolve()
    if path == Path(source.display).resolve():
        return source.display, source.name
    try:
        inside = path.relative_to(Path(source.directory).resolve())
    except ValueError:
        return file, file
    return str(Path(source.directory) / inside), str(Path(source.name).parent / inside)


def _without_asm_comments(text: str, keep_cpp: bool = False, intel: bool = False) -> str:
    """The text with `/* */`, `//` and `#` comments blanked, newlines kept.

    With `keep_cpp`, lines that are C preprocessor directives keep their `#`.
    String literals are kept whole; `'c` is a GNU as character, not a quote.
    """
    if not any(ch in text for ch in "/#;\"'"):
        return text  # the common line: nothing to strip
    out: list[str] = []
    i, n = 0, len(text)
    block = False
    line_start = True
    while i < n:
        ch = text[i]
        if block:
            if text.startswith("*/", i):
                block = False
                i += 2
            else:
                if ch == "\n":
                    out.append("\n")
                    line_start = True
                i += 1
            continue
        if ch == "\n":
            out.append(ch)
            line_start = True
            i += 1
            continue
        if line_start and keep_cpp:
            stripped = text[i : text.find("\n", i) if "\n" in text[i:] else n].lstrip()
            word = re.match(r"#\s*(\w+)", stripped)
            if word and word.group(1) in _CPP_DIRECTIVES:
                end = text.find("\n", i)
                end = n if end < 0 else end
                # a directive keeps its text (and its `\` continuations)
                while end < n and text[end - 1] == "\\":
                    next_end = text.find("\n", end + 1)
                    end = n if next_end < 0 else next_end
                out.append(text[i:end])
                i = end
                line_start = False
                continue
        line_start = False
        if ch == '"':
            end = i + 1
            while end < n and text[end] not in '"\n':
                end += 2 if text[end] == "\\" else 1
            out.append(text[i : end + 1])
            i = end + 1
            continue
        if ch == "'" and i + 1 < n and text[i + 1] != "\n":
            out.append(text[i : i + 2])
            i += 2
            continue
        if text.startswith("/*", i):
            block = True
            out.append(" ")
            i += 2
            continue
        if text.startswith("//", i) or ch == "#" or (intel and ch == ";"):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        out.append(ch)
        i += 1
    return "".join(out)


@dataclass
class _State:
    syntax: str
    section: Section = "code"
    stack: list[Section] = field(default_factory=list)
    previous: Section = "code"


class FrontEnd:
    """Reads the sources of one program into `Prepared` statements."""

    def __init__(
        self,
        sources: list[SourceFile],
        syntax: str,
        constants: Mapping[str, int],
        defines: Mapping[str, str] | None = None,
        stubs: Mapping[str, str] | None = None,
        stub_origin: Origin | None = None,
    ) -> None:
        self.sources = sources
        self.syntax = syntax
        self.region_constants = dict(constants)
        self.defines = dict(defines or {})
        self.stubs = dict(stubs or {})
        self.stub_origin = stub_origin or Origin("<stubs>", "<stubs>", 0, "")
        self.used: set[str] = set()
        self.commons: list[Statement] = []
        self.label_order: list[str] = []
        #: `--allow-outside`: `.incbin` may read files outside the scenario's directory.
        self.allow_outside = any(source.allow_outside for source in sources)

    # -- pass 0: lines -----------------------------------------------------

    def lines(self, source: SourceFile) -> list[tuple[Origin, str]]:
        """(origin, text without comments) of every line."""
        if source.preprocess:
            _check_comments_end(source)
            pairs = preprocess(source, self.defines)
        else:
            pairs = [
                (Origin(source.display, source.name, source.first_line + number, text), text)
                for number, text in enumerate(source.text.splitlines())
            ]
            for origin, text in pairs:
                if _CPP_LINE.match(text):
                    # GNU as would read it as a comment and assemble every branch.
                    raise origin.fail(
                        "a C preprocessor directive, but only .S files are preprocessed "
                        "(put the program in a .S file)"
                    )
        intel = self.syntax == "intel" and source.inline
        # Comments may span lines, and `.intel_syntax` changes what `;` means:
        # strip line by line, carrying an open `/*` over.
        cleaned = []
        block = False
        opened = pairs[0][0] if pairs else None
        for origin, text in pairs:
            if not block:
                opened = origin
            stripped = text.strip().lower()
            if not block and stripped.startswith(".intel_syntax"):
                intel = source.inline
            elif not block and stripped.startswith(".att_syntax"):
                intel = False
            joined = ("/*" if block else "") + text
            result = _without_asm_comments(joined, intel=intel)
            block = _ends_in_comment(joined)
            cleaned.append((origin, result.lstrip(" ") if joined.startswith("/*") else result))
        if block and opened is not None:
            raise opened.fail("a /* comment that never ends")
        return cleaned

    # -- pass 1: statements ------------------------------------------------

    def prepare(self) -> Prepared:
        raw: list[tuple[Origin, str, str]] = []  # origin, statement text, syntax
        numeric_defs: dict[str, list[int]] = {}
        self.source_starts: list[int] = []
        for source in self.sources:
            syntax = self.syntax
            self.source_starts.append(len(raw))
            for origin, text in self.lines(source):
                problem = _lexical_error(text)
                if problem:
                    raise origin.fail(problem)
                for piece in _statements(text, syntax if source.inline else "att"):
                    directive = piece.strip().split(None, 1)[0].lower() if piece.strip() else ""
                    rest = piece
                    while match := _LABEL.match(rest):
                        if match.group(1).isdigit():
                            numeric_defs.setdefault(match.group(1), []).append(len(raw))
                        raw.append((origin, match.group(0), syntax))
                        rest = rest[match.end() :]
                        directive = rest.strip().split(None, 1)[0].lower() if rest.strip() else ""
                    if rest.strip():
                        raw.append((origin, rest.strip(), syntax))
                    if directive == ".intel_syntax":
                        syntax = "intel"
                    elif directive == ".att_syntax":
                        syntax = "att"
        return self._interpret(raw, numeric_defs)

    def _interpret(
        self, raw: list[tuple[Origin, str, str]], numeric_defs: dict[str, list[int]]
    ) -> Prepared:
        # Numeric local labels (`1:`, `jmp 1b`) become unique names.
        numeric_names: dict[int, str] = {}
        for number, positions in numeric_defs.items():
            for k, position in enumerate(positions):
                numeric_names[position] = f"__stl_local_{number}_{k}"

        def numeric(text: str, position: int, origin: Origin) -> str:
            def replace(match: re.Match[str]) -> str:
                # numeric labels are local to their file
                first, end = self._source_range(position, len(raw))
                defs = [p for p in numeric_defs.get(match.group(1), []) if first <= p < end]
                if match.group(2) == "b":
                    found = [p for p in defs if p < position]
                    chosen = found[-1] if found else None
                else:
                    chosen = next((p for p in defs if p > position), None)
                if chosen is None:
                    raise origin.fail(f"no local label {match.group(0)} to refer to")
                return numeric_names[chosen]

            return _outside_strings(text, lambda part: _NUMERIC_REF.sub(replace, part))

        # Which names are labels, and which are `.equ`s, anywhere in the program.
        label_names: list[str] = []
        for position, (origin, text, _) in enumerate(raw):
            label = _LABEL.fullmatch(text)
            if label:
                name = numeric_names.get(position, label.group(1))
                if name in label_names:
                    raise origin.fail(f"label '{name}' is defined twice")
                if name in self.region_constants:
                    raise origin.fail(f"label '{name}' clashes with a region symbol")
                label_names.append(name)
        # `.comm NAME, SIZE` defines NAME too, and code may use it before.
        self.common_names = {
            split_operands(text.split(None, 1)[1])[0]
            for _, text, _ in raw
            if text.split(None, 1)[0].lower() in (".comm", ".lcomm") and len(text.split()) > 1
        }
        self.labels = set(label_names) | self.common_names
        self.aliases = {name: _alias(name, i) for i, name in enumerate(label_names)}
        self.constants = dict(self.region_constants)
        self.deferred: dict[str, Expr] = {}
        self.equ_names = {parts[0] for _, text, _ in raw if (parts := _equ_parts(text))}
        self.forward = self._forward_constants(raw)
        self.label_order = list(label_names)

        state = _State(self.syntax)
        new_file = set(self.source_starts)
        code: list[Statement] = []
        data: list[Statement] = []
        for position, (origin, text, syntax) in enumerate(raw):
            if position in new_file:
                state = _State(self.syntax)  # each file starts in .text, as with `as`
            state.syntax = syntax
            label = _LABEL.fullmatch(text)
            if label:
                name = numeric_names.get(position, label.group(1))
                statement = Statement(origin, syntax, state.section, labels=[name])
            else:
                text = numeric(text, position, origin)
                statement = self._statement(origin, text, state)
            if statement.section == "ignored":
                # A label in a debug or note section names nothing the program runs.
                self.label_order = [n for n in self.label_order if n not in statement.labels]
                continue
            if statement.text or statement.labels:
                (code if statement.section == "code" else data).append(statement)
        data += self.commons
        code += self._stub_statements()
        return Prepared(
            code=code,
            data=data,
            constants=self.constants,
            deferred=self.deferred,
            aliases=self.aliases,
            labels=self.label_order,
        )

    def _source_range(self, position: int, total: int) -> tuple[int, int]:
        """[first, end) positions of the source file holding `position`."""
        first = max(start for start in self.source_starts if start <= position)
        later = [start for start in self.source_starts if start > position]
        return first, (later[0] if later else total)

    def _forward_constants(self, raw: list[tuple[Origin, str, str]]) -> dict[str, int]:
        """Each `.equ`'s last value, so code may use a constant defined below it
        (GNU as allows that). Repeated until nothing changes, for chains."""
        definitions = [parts for _, text, _ in raw if (parts := _equ_parts(text))]
        values: dict[str, int] = {}
        for _ in range(len(definitions) + 1):
            before = dict(values)
            for name, text in definitions:
                with contextlib.suppress(Unknown, ExprError):
                    values[name] = Expr.parse(text).value({**self.region_constants, **values})
            if values == before:
                break
        return values

    # -- one statement -----------------------------------------------------

    def _statement(self, origin: Origin, text: str, state: _State) -> Statement:
        word = text.split(None, 1)[0]
        directive = word.lower()
        args = text[len(word) :].strip()
        if directive in (".intel_syntax", ".att_syntax"):
            if directive == ".intel_syntax" and args.lower() not in ("noprefix", ""):
                raise origin.fail("only `.intel_syntax noprefix` is supported")
            return Statement(origin, state.syntax, state.section)
        if directive.startswith("."):
            return self._directive(origin, directive, args, state)
        if "=" in text and _equ_parts(text):
            return self._directive(origin, ".set", text.replace("=", ",", 1), state)
        return self._instruction(origin, text, state)

    def _directive(self, origin: Origin, directive: str, args: str, state: _State) -> Statement:
        here = Statement(origin, state.syntax, state.section)
        if directive in _IGNORED or directive.startswith(".cfi_"):
            return here
        if directive in (".text", ".data", ".bss", ".rodata"):
            return self._switch(origin, directive, state)
        if directive in (".section", ".pushsection"):
            name = split_operands(args)[0] if args else ""
            if directive == ".pushsection":
                state.stack.append(state.section)
            return self._switch(origin, name.strip('"'), state)
        if directive == ".popsection":
            if not state.stack:
                raise origin.fail(".popsection without .pushsection")
            state.previous, state.section = state.section, state.stack.pop()
            return Statement(origin, state.syntax, state.section)
        if directive == ".previous":
            state.previous, state.section = state.section, state.previous
            return Statement(origin, state.syntax, state.section)
        if state.section == "ignored":
            return here
        if directive in (".equ", ".set", ".equiv"):
            return self._equ(origin, args, state)
        if directive in (".p2align", ".balign", ".align"):
            return self._align(origin, directive, args, state)
        if directive in (".comm", ".lcomm"):
            return self._common(origin, args, state)
        if directive in _DATA:
            return self._data(origin, directive, args, state)
        if directive == ".incbin":
            return self._incbin(origin, args, state)
        raise origin.fail(f"unsupported directive {directive}")

    def _incbin(self, origin: Origin, args: str, state: _State) -> Statement:
        """`.incbin "file"[, skip[, count]]`: the file's bytes, written out as `.byte`.

        The file is read here, never by keystone: it must be a regular file
        inside the scenario's directory (or `--allow-outside`), of bounded size.
        """
        parts = split_operands(args)
        if not parts or not _STRINGS.fullmatch(parts[0]):
            raise origin.fail(".incbin takes a file name in double quotes")
        name = parts[0].strip()[1:-1]
        skip = self._constant(origin, parts[1], "an offset") if len(parts) > 1 else 0
        count = self._constant(origin, parts[2], "a size") if len(parts) > 2 else None
        where = f"{origin.file}:{origin.line}: .incbin"
        path = resolve_input(name, Path(origin.file).parent, where, self.allow_outside)
        if not path.is_file():
            raise origin.fail(f"{name!r} is not a regular file")
        data = read_input(path, CODE_LIMIT, ".incbin file")
        data = data[skip : None if count is None else skip + count]
        return _byte_statement(origin, state, data)

    def _switch(self, origin: Origin, name: str, state: _State) -> Statement:
        if _CODE_SECTIONS.match(name):
            section: Section = "code"
        elif _DATA_SECTIONS.match(name):
            section = "data"
        elif _IGNORED_SECTIONS.match(name):
            section = "ignored"
        else:
            raise origin.fail(f"unsupported section {name!r} (code: .text*; data: .data*, "
                              ".rodata*, .bss*)")  # fmt: skip
        state.previous, state.section = state.section, section
        return Statement(origin, state.syntax, "ignored")

    def _expr(self, origin: Origin, text: str) -> Expr:
        try:
            return Expr.parse(text)
        except ExprError as exc:
            raise origin.fail(str(exc)) from None

    def _constant(self, origin: Origin, text: str, what: str) -> int:
        expr = self._expr(origin, text)
        try:
            return expr.value(self._final_constants())
        except Unknown as exc:
            raise origin.fail(f"{what} must be a constant, '{exc.name}' is not") from None
        except ExprError as exc:
            raise origin.fail(str(exc)) from None

    def _final_constants(self) -> dict[str, int]:
        """Constants as known at this line; ones defined further down too."""
        return {**self.forward, **self.constants}

    def _equ(self, origin: Origin, args: str, state: _State) -> Statement:
        parts = split_operands(args)
        if len(parts) != 2 or not re.fullmatch(r"[A-Za-z_.$][\w.$]*", parts[0]):
            raise origin.fail("expected `.equ NAME, EXPRESSION`")
        name, expr = parts[0], self._expr(origin, parts[1])
        if name in self.labels:
            raise origin.fail(f"'{name}' is both a label and a constant")
        if name in self.region_constants:
            raise origin.fail(f"'{name}' clashes with a region symbol")
        try:
            self.constants[name] = expr.value(self._final_constants())
            return Statement(origin, state.syntax, state.section, kind="equ")
        except Unknown as exc:
            if exc.name not in self.labels and exc.name != "." and exc.name not in self.equ_names:
                raise self._undefined(origin, exc.name) from None
        except ExprError as exc:
            raise origin.fail(str(exc)) from None
        # Names a label: keystone evaluates it, the guard re-evaluates it.
        self.deferred[name] = expr
        self.aliases.setdefault(name, _alias(name, len(self.aliases)))
        text = f".set {self.aliases[name]}, {self._render(origin, expr)}"
        return Statement(origin, state.syntax, state.section, text=text, kind="equ")

    def _align(self, origin: Origin, directive: str, args: str, state: _State) -> Statement:
        parts = split_operands(args)
        if not parts or not parts[0]:
            raise origin.fail(f"{directive} needs an alignment")
        amount = self._constant(origin, parts[0], "an alignment")
        if directive == ".p2align":
            amount = 1 << amount if 0 <= amount < 64 else -1
        if amount < 1 or amount & (amount - 1) or amount > 4096:
            raise origin.fail("alignment must be a power of two up to 4096 bytes")
        rest = [
            hex_text(self._constant(origin, p, "an alignment's fill")) if p else ""
            for p in parts[1:]
        ]
        if state.section == "data" and not rest:
            rest = ["0x0"]  # data is padded with zeros, code with nops
        text = _join_directive(".balign", [hex_text(amount), *rest])
        return Statement(origin, state.syntax, state.section, text=text, kind="align")

    def _common(self, origin: Origin, args: str, state: _State) -> Statement:
        parts = split_operands(args)
        if len(parts) < 2:
            raise origin.fail("expected `.comm NAME, SIZE[, ALIGN]`")
        name = parts[0]
        size = self._constant(origin, parts[1], "a size")
        align = self._constant(origin, parts[2], "an alignment") if len(parts) > 2 else 8
        if not 0 <= size <= CODE_LIMIT or align < 1 or align & (align - 1) or align > 4096:
            raise origin.fail("size or alignment out of range")
        if name in self.label_order:
            raise origin.fail(f"label '{name}' is defined twice")
        # A common symbol is zero-filled data of its own, placed after the rest.
        self.label_order.append(name)
        self.aliases[name] = _alias(name, len(self.aliases))
        self.commons += [
            Statement(origin, state.syntax, "data", text=f".balign {align:#x}, 0x0", kind="align"),
            Statement(
                origin,
                state.syntax,
                "data",
                labels=[name],
                text=f".zero {max(size, 1):#x}",
                kind="data",
            ),
        ]
        return Statement(origin, state.syntax, state.section)

    def _data(self, origin: Origin, directive: str, args: str, state: _State) -> Statement:
        if directive in _SIZED_FILL or directive == ".fill":
            parts = split_operands(args)
            values = [self._constant(origin, p, "a size") if p else 0 for p in parts]
            count = values[0] if values else 0
            width = values[1] if directive == ".fill" and len(values) > 1 else 1
            if not 0 <= count * max(width, 1) <= CODE_LIMIT or not 0 <= width <= 8:
                raise origin.fail(f"{directive} size out of range")
            return Statement(
                origin,
                state.syntax,
                state.section,
                text=_join_directive(directive, [hex_text(v) for v in values]),
                kind="data",
            )
        if directive in (".ascii", ".asciz", ".string"):
            if not _STRINGS.fullmatch(args):
                raise origin.fail(f"{directive} takes strings in double quotes")
            # Written out as bytes: keystone's binding refuses non-ASCII text,
            # and the guard then checks every byte.
            data = b""
            for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', args):
                data += _string_bytes(literal) + (b"\0" if directive != ".ascii" else b"")
            return _byte_statement(origin, state, data)
        if not args:
            return Statement(origin, state.syntax, state.section)  # no items: no bytes
        items = [self._expr(origin, item) for item in split_operands(args)]
        for item in items:
            self._check_defined(origin, item)
        return Statement(
            origin,
            state.syntax,
            state.section,
            text=_join_directive(directive, [self._render(origin, v) for v in items]),
            kind="data",
            width=DATA_WIDTHS[directive],
            values=items,
        )

    def _instruction(self, origin: Origin, text: str, state: _State) -> Statement:
        if state.section == "ignored":
            return Statement(origin, state.syntax, state.section)
        word = text.split(None, 1)[0].lower()
        if word in ("endbr64", "endbr32") and len(text.split()) == 1:
            return Statement(
                origin,
                state.syntax,
                state.section,
                text=ENDBR64 if word == "endbr64" else ".byte 0xf3, 0x0f, 0x1e, 0xfb",
                kind="insn",
                expect_mnemonic=word,
            )
        try:
            insn = parse_instruction(text, state.syntax)
        except ExprError as exc:
            raise origin.fail(f"cannot read the operands ({exc})") from None
        if not _MNEMONIC.fullmatch(insn.mnemonic):
            # keystone hangs on some of these (`%fs:` alone)
            raise origin.fail("unknown instruction")
        self._intel_bare_names(insn)
        self._relocations(origin, insn)
        for op in insn.operands:
            if op.expr is not None:
                self._check_defined(origin, op.expr)
        rendered = self._render_instruction(origin, insn, state.syntax)
        return Statement(
            origin, state.syntax, state.section, text=rendered, kind="insn", instruction=insn
        )

    def _intel_bare_names(self, insn: Instruction) -> None:
        """Intel `mov eax, SIZE` is an immediate when SIZE is a constant."""
        for op in insn.operands:
            bare = insn.syntax == "intel" and op.kind == "mem" and not _brackets(op)
            if bare and op.segment is None and op.expr is not None:
                names = op.expr.names
                if all(n in self.constants or n in self.equ_names for n in names):
                    op.kind = "imm"

    def _relocations(self, origin: Origin, insn: Instruction) -> None:
        for op in insn.operands:
            if op.relocation is None:
                continue
            if op.relocation == "plt" and op.kind == "target":
                op.relocation = None  # a direct call: the program is one image
            elif op.relocation in ("gotpcrel", "gotpcrelx", "rex_gotpcrelx") and op.base == "rip":
                # The linker's relaxation: load the address itself (mov -> lea).
                if insn.mnemonic not in ("mov", "movq"):
                    raise origin.fail(f"@{op.relocation} is supported on mov only")
                insn.mnemonic = "lea" if insn.syntax == "intel" else "leaq"
                op.relocation = None
                op.size = None
            else:
                raise origin.fail(f"@{op.relocation.upper()} is not supported here")

    def _check_defined(self, origin: Origin, expr: Expr) -> None:
        for name in expr.names:
            known = (
                name in self.labels
                or name in self.constants
                or name in self.equ_names
                or name in self.stubs
                or name == "."
            )
            if not known:
                raise self._undefined(origin, name)
        self.used.update(expr.names)

    def _undefined(self, origin: Origin, name: str) -> BadInput:
        return origin.fail(
            f"undefined symbol '{name}' (define it, or map it in [program] stubs "
            f"to one of {', '.join(STUB_CODE)})"
        )

    def _render(self, origin: Origin, expr: Expr) -> str:
        try:
            return expr.render(self._final_constants(), lambda n: self.aliases.get(n, n))
        except ExprError as exc:
            raise origin.fail(str(exc)) from None

    def _render_instruction(
        self, origin: Origin, insn: Instruction, syntax: str, absolute_via_riz: bool = False
    ) -> str:
        """Keystone text: operands re-written only where keystone needs it.

        `absolute_via_riz`: write absolute memory operands with the zero index
        register (`0x28(,%riz,1)`), the one form keystone encodes as GNU as
        does; see `absolute_repaired`.
        """
        source_order = list(reversed(insn.operands)) if syntax == "att" else insn.operands
        texts = []
        for op, raw in zip(source_order, insn.raw_operands, strict=True):
            if absolute_via_riz and _absolute(op):
                riz = replace(op, index="riz", scale=1)
                texts.append(render_operand(riz, syntax, lambda e: self._render(origin, e)))
            elif self._needs_rewrite(op, raw, syntax):
                texts.append(render_operand(op, syntax, lambda e: self._render(origin, e)))
            else:
                texts.append(raw)
        head = " ".join([*insn.prefixes, insn.mnemonic])
        return f"{head} {', '.join(texts)}" if texts else head

    def absolute_repaired(self, statement: Statement) -> bool:
        """Re-write `statement` so keystone encodes its absolute operands right.

        Keystone writes an absolute operand RIP-relative, and for some forms
        forgets to subtract rip (`movq %fs:0x28, %rcx` reads fs:[rip + 0x28]).
        The guard finds those; the assembler then asks for this form and
        assembles once more. Only such lines change, so every other line keeps
        keystone's own encoding. False if the statement has no such operand.
        """
        insn = statement.instruction
        if insn is None or not any(_absolute(op) for op in insn.operands):
            return False
        statement.text = self._render_instruction(
            statement.origin, insn, statement.syntax, absolute_via_riz=True
        )
        return True

    def _needs_rewrite(self, op: Operand, raw: str, syntax: str) -> bool:
        if "@" in raw or "__stl_local_" in raw:
            return True
        if "'" in raw:
            return True  # a character constant: keystone gets its number
        if syntax == "intel" and raw.lower().startswith("offset"):
            return True  # keystone refuses `offset sym`; a bare name is its immediate
        if syntax == "intel" and op.kind == "mem" and not _brackets(op):
            return True  # GNU as reads a bare Intel symbol as memory: say so
        for name in op.names:
            if name in self.constants or name in self.equ_names:
                return True
            if self.aliases.get(name, name) != name:
                return True
        return False

    def _stub_statements(self) -> list[Statement]:
        used = self.used
        out = []
        for name, behaviour in self.stubs.items():
            if name in self.labels:
                raise self.stub_origin.fail(f"stub '{name}': the program defines this label itself")
            if name not in used:
                continue
            self.aliases[name] = _alias(name, len(self.aliases))
            origin = self.stub_origin
            for i, line in enumerate(STUB_CODE[behaviour]):
                insn = parse_instruction(line, "att")
                out.append(
                    Statement(
                        origin,
                        "att",
                        "code",
                        labels=[name] if i == 0 else [],
                        text=line,
                        kind="insn",
                        instruction=insn,
                    )
                )
            self.labels.add(name)
            self.label_order.append(name)
        return out


def _absolute(op: Operand) -> bool:
    """A memory operand with neither base nor index: an absolute address."""
    return op.kind == "mem" and op.base is None and op.index is None


def _brackets(op: Operand) -> bool:
    """Whether an Intel memory operand was written with [...] (vs a bare symbol)."""
    return op.bracketed


def _join_directive(directive: str, args: list[str]) -> str:
    return f"{directive} {', '.join(args)}" if args else directive


def _alias(name: str, index: int) -> str:
    """The name keystone sees: itself when keystone reads it in both syntaxes."""
    if _SAFE_NAME.match(name) and name.lower() not in REGISTERS and not name.startswith("__stl"):
        return name
    if name.startswith("__stl_local_"):
        return name
    return f"__stl_sym_{index}"


def _equ_parts(text: str) -> tuple[str, str] | None:
    lower = text.lower()
    for directive in (".equ", ".set", ".equiv"):
        if lower.startswith(directive + " ") or lower.startswith(directive + "\t"):
            parts = split_operands(text[len(directive) :])
            if len(parts) == 2:
                return parts[0], parts[1]
    match = re.fullmatch(r"\s*([A-Za-z_.$][\w.$]*)\s*=\s*(.+)", text)
    if match and not match.group(1).startswith("."):
        return match.group(1), match.group(2)
    return None


def _statements(line: str, syntax: str) -> list[str]:
    """Statements of a comment-free line: `;` separates them (in inline Intel
    source it started a comment, already removed)."""
    if syntax == "intel":
        return [line]
    pieces, start = [], 0
    for i in unquoted(line)[0]:
        if line[i] == ";":
            pieces.append(line[start:i])
            start = i + 1
    pieces.append(line[start:])
    return pieces


def _outside_strings(text: str, change: Callable[[str], str]) -> str:
    parts = re.split(r'("(?:[^"\\]|\\.)*")', text)
    return "".join(p if p.startswith('"') else change(p) for p in parts)


def _byte_statement(origin: Origin, state: _State, data: bytes) -> Statement:
    """`data` written out as one `.byte` statement (strings, `.incbin`): keystone
    never reads the text or the file itself, and the guard checks every byte."""
    if not data:
        return Statement(origin, state.syntax, state.section)  # no items: no bytes
    return Statement(
        origin,
        state.syntax,
        state.section,
        text=_join_directive(".byte", [hex_text(byte) for byte in data]),
        kind="data",
        width=1,
        values=[Expr.parse(str(byte)) for byte in data],
    )


def unquoted(text: str) -> tuple[list[int], bool]:
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


def _lexical_error(text: str) -> str | None:
    """What keystone would mishandle: it loops forever on a string without
    its closing quote, and reads `mov rax, [rbx` as a load from 0."""
    outside, quote = unquoted(text)
    if quote:
        return "unterminated string"
    rest = "".join(text[i] for i in outside)
    for opening, closing in ("[]", "()"):
        if rest.count(opening) != rest.count(closing):
            return f"unbalanced '{opening}' and '{closing}'"
    return None


_STRING_ESCAPES = {"b": 8, "f": 12, "n": 10, "r": 13, "t": 9, '"': 34, "\\": 92}


def _string_bytes(literal: str) -> bytes:
    """The bytes GNU as emits for a string literal's body (UTF-8 text, escapes)."""
    out = bytearray()
    i = 0
    while i < len(literal):
        ch = literal[i]
        if ch != "\\" or i + 1 == len(literal):
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = literal[i + 1]
        if nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", literal[i + 1 :])
            assert digits is not None
            out.append(int(digits.group(0), 8) & 0xFF)
            i += 1 + len(digits.group(0))
        elif nxt in "xX" and re.match(r"[0-9a-fA-F]", literal[i + 2 : i + 3]):
            digits = re.match(r"[0-9a-fA-F]+", literal[i + 2 :])
            assert digits is not None
            out.append(int(digits.group(0), 16) & 0xFF)
            i += 2 + len(digits.group(0))
        else:
            out += bytes([_STRING_ESCAPES[nxt]]) if nxt in _STRING_ESCAPES else nxt.encode()
            i += 2
    return bytes(out)


def _check_comments_end(source: SourceFile) -> None:
    """A `/*` left open swallows the rest of the file: an error at its line."""
    block, opened = False, 0
    lines = source.text.splitlines()
    for number, text in enumerate(lines):
        if not block:
            opened = number
        block = _ends_in_comment(("/*" if block else "") + text)
    if block:
        origin = Origin(source.display, source.name, source.first_line + opened, lines[opened])
        raise origin.fail("a /* comment that never ends")


def _ends_in_comment(text: str) -> bool:
    """Whether a `/*` in the line is left open at its end."""
    if "/*" not in text:
        return False
    i, open_, quote = 0, False, False
    while i < len(text):
        if open_:
            if text.startswith("*/", i):
                open_ = False
                i += 2
                continue
        elif text[i] == '"':
            quote = not quote
        elif not quote and text.startswith("/*", i):
            open_ = True
            i += 2
            continue
        elif not quote and (text.startswith("//", i) or text[i] == "#"):
            return False
        i += 1
    return open_
