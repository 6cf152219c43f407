"""GNU-as expressions and instruction operands, parsed once for two uses.

The front end (`gnu_as.py`) uses them to evaluate `.equ`/`.set` constants and
to hand keystone operands it reads correctly; the miscompile guard
(`guard.py`) uses the same parse to say what each operand must decode to.
Both syntaxes are covered: AT&T (`disp(%base,%index,scale)`, `$imm`, `*%reg`)
and Intel (`qword ptr fs:[base + index*scale + disp]`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

_TOKEN = re.compile(
    r"\s*(?:(?P<num>0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9]+)"
    r"|(?P<char>'(?:\\.|[^\\])'?)"
    r"|(?P<name>[A-Za-z_.$][\w.$]*)"
    r"|(?P<op><<|>>|==|!=|<>|<=|>=|&&|\|\||[-+*/%&|^~!()<>]))"
)
#: GNU as's binary operator precedence (as(1) "Infix Operators"): `<<` binds
#: as tightly as `*`, unlike C.
_PRECEDENCE = {
    "*": 4, "/": 4, "%": 4, "<<": 4, ">>": 4,
    "|": 3, "&": 3, "^": 3, "!": 3,
    "+": 2, "-": 2, "==": 2, "!=": 2, "<>": 2, "<": 2, ">": 2, "<=": 2, ">=": 2,
    "&&": 1, "||": 1,
}  # fmt: skip

MASK64 = (1 << 64) - 1
#: GNU as's character escapes in `'c` constants.
_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "b": 8, "f": 12, "\\": 92, "'": 39, '"': 34}


class ExprError(ValueError):
    """The text is not an expression this module reads."""


class Unknown(LookupError):
    """An expression names a symbol with no value (yet)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class Token:
    kind: Literal["num", "name", "op"]
    text: str
    value: int = 0


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ExprError(f"cannot read {text[position:].strip()!r} in an expression")
        position = match.end()
        if match.group("num"):
            tokens.append(Token("num", match.group("num"), _number(match.group("num"))))
        elif match.group("char"):
            body = match.group("char")[1:].removesuffix("'") or "'"
            value = _ESCAPES.get(body[1], ord(body[1])) if body.startswith("\\") else ord(body)
            tokens.append(Token("num", match.group("char"), value))
        elif match.group("name"):
            tokens.append(Token("name", match.group("name")))
        else:
            tokens.append(Token("op", match.group("op")))
    return tokens


def _number(text: str) -> int:
    lower = text.lower()
    if lower.startswith("0x"):
        return int(lower, 16)
    if lower.startswith("0b"):
        return int(lower[2:], 2)
    if len(text) > 1 and text.startswith("0"):
        return int(text, 8)  # GNU as: a leading 0 means octal
    return int(text)


@dataclass(frozen=True)
class Expr:
    """An expression as tokens; evaluated against a symbol table on demand."""

    tokens: tuple[Token, ...]

    @classmethod
    def parse(cls, text: str) -> Expr:
        expr = cls(tuple(tokenize(text)))
        if not expr.tokens:
            raise ExprError("empty expression")
        expr.evaluate(lambda name: 0)  # syntax check: every name as 0
        return expr

    @property
    def names(self) -> list[str]:
        return [t.text for t in self.tokens if t.kind == "name"]

    def evaluate(self, lookup: Callable[[str], int]) -> int:
        parser = _Parser(self.tokens, lookup)
        value = parser.binary(0)
        if parser.position != len(self.tokens):
            raise ExprError(f"unexpected {self.tokens[parser.position].text!r}")
        return value

    def value(self, symbols: Mapping[str, int]) -> int:
        def lookup(name: str) -> int:
            if name not in symbols:
                raise Unknown(name)
            return symbols[name]

        return self.evaluate(lookup)

    def render(self, constants: Mapping[str, int], rename: Callable[[str], str]) -> str:
        """Text for keystone: one hex number when only constants are named,
        else the expression with constants written out and names renamed."""
        try:
            return hex_text(self.value(constants))
        except Unknown:
            pass
        parts = []
        for token in self.tokens:
            if token.kind == "num":
                parts.append(hex_text(token.value))
            elif token.kind == "name":
                known = constants.get(token.text)
                parts.append(f"({hex_text(known)})" if known is not None else rename(token.text))
            else:
                parts.append(token.text)
        return " ".join(parts)


def hex_text(value: int) -> str:
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


class _Parser:
    def __init__(self, tokens: tuple[Token, ...], lookup: Callable[[str], int]) -> None:
        self.tokens = tokens
        self.position = 0
        self.lookup = lookup

    def peek(self) -> Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise ExprError("expression ends too early")
        self.position += 1
        return token

    def unary(self) -> int:
        token = self.take()
        if token.kind == "num":
            return token.value
        if token.kind == "name":
            return self.lookup(token.text)
        if token.text == "(":
            value = self.binary(0)
            if self.take().text != ")":
                raise ExprError("missing ')'")
            return value
        if token.text == "-":
            return -self.unary()
        if token.text == "+":
            return self.unary()
        if token.text == "~":
            return ~self.unary()
        if token.text == "!":
            return int(not self.unary())
        raise ExprError(f"unexpected {token.text!r}")

    def binary(self, lowest: int) -> int:
        left = self.unary()
        while True:
            token = self.peek()
            if token is None or token.kind != "op" or token.text not in _PRECEDENCE:
                return left
            precedence = _PRECEDENCE[token.text]
            if precedence < lowest:
                return left
            self.position += 1
            right = self.binary(precedence + 1)
            left = _apply(token.text, left, right)


def _apply(op: str, a: int, b: int) -> int:
    if op in ("/", "%") and b == 0:
        raise ExprError("division by zero")
    results: dict[str, Callable[[], int]] = {
        "*": lambda: a * b,
        "/": lambda: int(a / b),
        "%": lambda: a - int(a / b) * b,
        "<<": lambda: (a << b) & MASK64 if b < 128 else 0,
        ">>": lambda: (a & MASK64) >> b,
        "|": lambda: a | b,
        "&": lambda: a & b,
        "^": lambda: a ^ b,
        "!": lambda: a | ~b,
        "+": lambda: a + b,
        "-": lambda: a - b,
        "==": lambda: -int(a == b),
        "!=": lambda: -int(a != b),
        "<>": lambda: -int(a != b),
        "<": lambda: -int(a < b),
        ">": lambda: -int(a > b),
        "<=": lambda: -int(a <= b),
        ">=": lambda: -int(a >= b),
        "&&": lambda: int(bool(a) and bool(b)),
        "||": lambda: int(bool(a) or bool(b)),
    }
    return results[op]()


# ---------------------------------------------------------------- operands

_GPR = [
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "eax",
    "ebx",
    "ecx",
    "edx",
    "esi",
    "edi",
    "ebp",
    "esp",
    "ax",
    "bx",
    "cx",
    "dx",
    "si",
    "di",
    "bp",
    "sp",
    "al",
    "bl",
    "cl",
    "dl",
    "sil",
    "dil",
    "bpl",
    "spl",
    "ah",
    "bh",
    "ch",
    "dh",
    "rip",
    "eip",
]
REGISTERS = frozenset(
    _GPR
    + [f"r{i}{s}" for i in range(8, 16) for s in ("", "d", "w", "b")]
    + [f"{k}mm{i}" for k in "xyz" for i in range(32)]
    + [f"mm{i}" for i in range(8)]
    + [f"st({i})" for i in range(8)]
    + ["st"]
    + [f"{s}s" for s in "cdefgs"]
    + [f"cr{i}" for i in range(16)]
    + [f"dr{i}" for i in range(8)]
    + [f"k{i}" for i in range(8)]
)
SEGMENTS = frozenset(f"{s}s" for s in "cdefgs")
_SIZES = {
    "byte": 1, "word": 2, "dword": 4, "fword": 6, "qword": 8, "tbyte": 10,
    "xword": 10, "oword": 16, "xmmword": 16, "ymmword": 32, "zmmword": 64,
}  # fmt: skip
_PTR = re.compile(r"^(\w+)\s+ptr\s+", re.IGNORECASE)
_RELOCATION = re.compile(r"@(PLT|GOTPCREL|GOTPCRELX|REX_GOTPCRELX|GOT|PC)\b", re.IGNORECASE)
BRANCHES = frozenset(
    [
        "jmp",
        "call",
        "loop",
        "loope",
        "loopne",
        "loopz",
        "loopnz",
        "jrcxz",
        "jecxz",
        "jcxz",
        "ja",
        "jae",
        "jb",
        "jbe",
        "jc",
        "je",
        "jg",
        "jge",
        "jl",
        "jle",
        "jna",
        "jnae",
        "jnb",
        "jnbe",
        "jnc",
        "jne",
        "jng",
        "jnge",
        "jnl",
        "jnle",
        "jno",
        "jnp",
        "jns",
        "jnz",
        "jo",
        "jp",
        "jpe",
        "jpo",
        "js",
        "jz",
    ]
)


@dataclass
class Operand:
    """One operand, as the source spells it.

    kind: `reg`; `imm` (a value); `target` (a direct branch destination);
    `mem` (segment:[base + index*scale + disp]). For a RIP-relative operand
    whose displacement names a label, `disp` is the label's address (what GNU
    as means by `sym(%rip)`), and `rip_target` says so.
    """

    kind: Literal["reg", "imm", "mem", "target"]
    reg: str | None = None
    expr: Expr | None = None
    base: str | None = None
    index: str | None = None
    scale: int = 1
    segment: str | None = None
    size: int | None = None
    indirect: bool = False
    #: `@PLT`, `@GOTPCREL`... written after the symbol (lower case), if any.
    relocation: str | None = None
    #: False for an Intel memory operand written as a bare symbol (`mov rax, x`).
    bracketed: bool = True

    @property
    def rip_target(self) -> bool:
        return self.base == "rip" and self.expr is not None and bool(self.expr.names)

    @property
    def names(self) -> list[str]:
        return self.expr.names if self.expr is not None else []


@dataclass
class Instruction:
    prefixes: list[str]
    mnemonic: str
    operands: list[Operand]  # in Intel order (destination first)
    syntax: str
    raw_operands: list[str] = field(default_factory=list)  # source order

    @property
    def is_branch(self) -> bool:
        return self.mnemonic in BRANCHES or self.mnemonic.rstrip("qlw") in ("call", "jmp")


PREFIXES = frozenset(
    [
        "rep",
        "repe",
        "repz",
        "repne",
        "repnz",
        "lock",
        "notrack",
        "bnd",
        "data16",
        "data32",
        "addr32",
        "rex",
        "rex64",
    ]
)


def split_operands(text: str) -> list[str]:
    """Split at commas outside (), [] and strings."""
    parts: list[str] = []
    depth = 0
    current = ""
    quote = False
    for ch in text:
        if ch == '"':
            quote = not quote
        elif not quote and ch in "([":
            depth += 1
        elif not quote and ch in ")]":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip() or parts:
        parts.append(current.strip())
    return parts


def parse_instruction(text: str, syntax: str) -> Instruction:
    words = text.split(None, 1)
    prefixes: list[str] = []
    while words and words[0].lower() in PREFIXES and len(words) > 1:
        prefixes.append(words[0].lower())
        words = words[1].split(None, 1)
    mnemonic = words[0].lower() if words else ""
    raw = split_operands(words[1]) if len(words) > 1 else []
    branch = mnemonic in BRANCHES or mnemonic.rstrip("qlw") in ("call", "jmp")
    parse = _att_operand if syntax == "att" else _intel_operand
    operands = [parse(op, branch) for op in raw]
    if syntax == "att":
        operands.reverse()
    return Instruction(prefixes, mnemonic, operands, syntax, raw)


def _relocation(text: str) -> tuple[str, str | None]:
    match = _RELOCATION.search(text)
    if match is None:
        return text, None
    return text[: match.start()] + text[match.end() :], match.group(1).lower()


def _att_operand(text: str, branch: bool) -> Operand:
    text, relocation = _relocation(text.strip())
    indirect = text.startswith("*")
    if indirect:
        text = text[1:].strip()
    segment = None
    seg = re.match(r"%([cdefgs]s)\s*:\s*", text, re.IGNORECASE)
    if seg:
        segment, text = seg.group(1).lower(), text[seg.end() :]
    if text.startswith("%") and segment is None:
        name = text[1:].replace(" ", "").lower()
        if name not in REGISTERS:
            raise ExprError(f"unknown register %{name}")
        return Operand("reg", reg=name, indirect=indirect)
    if text.startswith("$"):
        return Operand("imm", expr=Expr.parse(text[1:]), relocation=relocation)
    # memory: disp(base, index, scale) - the last parenthesised group holding a %
    base = index = None
    scale = 1
    disp_text = text
    match = re.search(r"\(([^()]*%[^()]*)\)\s*$", text)
    if match:
        disp_text = text[: match.start()]
        fields = [f.strip() for f in match.group(1).split(",")]
        if fields[0]:
            base = _att_register(fields[0])
        if len(fields) > 1 and fields[1]:
            index = _att_register(fields[1])
        if len(fields) > 2 and fields[2]:
            scale = Expr.parse(fields[2]).value({})
        if len(fields) > 3 or (base is None and index is None):
            raise ExprError(f"cannot read memory operand {text!r}")
    expr = Expr.parse(disp_text) if disp_text.strip() else None
    if branch and not indirect and match is None and segment is None:
        return Operand("target", expr=expr, relocation=relocation)
    return Operand(
        "mem",
        expr=expr,
        base=base,
        index=index,
        scale=scale,
        segment=segment,
        indirect=indirect,
        relocation=relocation,
    )


def _att_register(text: str) -> str:
    if not text.startswith("%") or text[1:].lower() not in REGISTERS:
        raise ExprError(f"expected a register, got {text!r}")
    return text[1:].lower()


def _intel_operand(text: str, branch: bool) -> Operand:
    text, relocation = _relocation(text.strip())
    size = None
    while ptr := _PTR.match(text):
        if ptr.group(1).lower() not in _SIZES:
            raise ExprError(f"unknown size {ptr.group(1)!r}")
        size = _SIZES[ptr.group(1).lower()]
        text = text[ptr.end() :].strip()
    if text.lower() in _SIZES:
        raise ExprError(f"size {text!r} without an operand")
    segment = None
    seg = re.match(r"([cdefgs]s)\s*:\s*", text, re.IGNORECASE)
    if seg:
        segment, text = seg.group(1).lower(), text[seg.end() :]
    lower = text.lower().replace(" ", "")
    if lower in REGISTERS and segment is None:
        return Operand("reg", reg=lower)
    if lower.startswith("offset") and re.match(r"offset\b", text, re.IGNORECASE):
        return Operand("imm", expr=Expr.parse(text[6:]), relocation=relocation)
    if "[" not in text:
        expr = Expr.parse(text)
        if branch:
            return Operand("target", expr=expr, relocation=relocation)
        if segment is None and not expr.names:
            return Operand("imm", expr=expr, relocation=relocation, size=size)
        # GNU as reads a bare symbol in Intel syntax as a memory operand
        # (`mov rax, x` loads from x); the front end turns constants into
        # immediates, since it knows which names are constants.
        return Operand(
            "mem", expr=expr, segment=segment, size=size, relocation=relocation, bracketed=False
        )
    outer = text[: text.index("[")].strip()
    inner_end = text.rindex("]")
    inner = text[text.index("[") + 1 : inner_end]
    if text[inner_end + 1 :].strip():
        raise ExprError(f"cannot read memory operand {text!r}")
    base, index, scale, disp = _intel_memory(inner)
    if outer:
        disp = f"{outer} + ({disp})" if disp else outer
    displacement = Expr.parse(disp) if disp else None
    return Operand(
        "mem",
        expr=displacement,
        base=base,
        index=index,
        scale=scale,
        segment=segment,
        size=size,
        relocation=relocation,
    )


def _intel_memory(inner: str) -> tuple[str | None, str | None, int, str]:
    """base, index, scale and the displacement's text of `[...]`."""
    terms: list[tuple[str, str]] = []  # (sign, term) at bracket depth 0
    depth = 0
    sign, current = "+", ""
    for ch in inner:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch in "+-" and depth == 0 and current.strip():
            terms.append((sign, current.strip()))
            sign, current = ch, ""
        elif ch in "+-" and depth == 0 and not current.strip():
            sign = "-" if (sign == "-") != (ch == "-") else "+"
        else:
            current += ch
    if current.strip():
        terms.append((sign, current.strip()))
    base = index = None
    scale = 1
    disp: list[str] = []
    for sign, term in terms:
        parts = [p.strip().lower() for p in term.split("*")]
        registers = [p for p in parts if p in REGISTERS]
        if not registers:
            disp.append(f"{sign} {term}" if disp or sign == "-" else term)
            continue
        if sign == "-" or len(registers) > 1 or len(parts) > 2:
            raise ExprError(f"cannot read memory term {term!r}")
        if len(parts) == 2:
            other = parts[1] if parts[0] in REGISTERS else parts[0]
            index, scale = registers[0], Expr.parse(other).value({})
        elif base is None:
            base = registers[0]
        elif index is None:
            index = registers[0]
        else:
            raise ExprError(f"too many registers in [{inner}]")
    return base, index, scale, " ".join(disp)


def render_operand(op: Operand, syntax: str, text: Callable[[Expr], str]) -> str:
    """The operand in `syntax`, expressions written by `text` (see Expr.render)."""
    disp = text(op.expr) if op.expr is not None else ""
    star = "*" if op.indirect else ""
    if syntax == "att":
        if op.kind == "reg":
            return f"{star}%{op.reg}"
        if op.kind == "imm":
            return f"${disp}"
        if op.kind == "target":
            return disp
        segment = f"%{op.segment}:" if op.segment else ""
        registers = ""
        if op.base or op.index:
            registers = f"%{op.base}" if op.base else ""
            if op.index:
                registers += f",%{op.index},{op.scale}"
            registers = f"({registers})"
        return f"{star}{segment}{disp}{registers}"
    if op.kind == "reg":
        return str(op.reg)
    if op.kind in ("imm", "target"):
        return disp
    size = next((f"{n} ptr " for n, s in _SIZES.items() if s == op.size), "")
    terms = []
    if op.base:
        terms.append(op.base)
    if op.index:
        terms.append(f"{op.index}*{op.scale}")
    if disp:
        terms.append(disp)
    inner = " + ".join(terms).replace("+ -", "- ")
    segment = f"{op.segment}:" if op.segment else ""
    return f"{size}{segment}[{inner}]"
