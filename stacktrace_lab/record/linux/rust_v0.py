"""Rust's v0 symbol names (`_R...`), demangled as rustc-demangle prints them.

The grammar is RFC 2603's (https://rust-lang.github.io/rfcs/2603-rust-symbol-name-mangling-v0.html)
and the printing rustc-demangle's alternate form (`{:#}`), the one Rust's own
backtraces, gdb and perf show: no crate hashes, no type suffixes on constants,
closures as `{closure#0}`.

Written for the recorder: a dynamically linked Rust program carries some 570
v0 names of std, all demangled for the trace's symbol table. rust-demangler
took 0.07-0.14 CPU s for them (a quarter of what `record --from main` may
cost), gave up on `for<'a>` binders and printed its partial output to stdout
while doing so. This parser walks the name by index, with no object per token
(once to find where the path ends, once to print it): about four times faster
(0.03 s for those names on the machine of docs/performance.md).

`demangle_v0(name)` returns None for anything that is not a well-formed v0
name (including names whose output would grow past `MAX_OUTPUT`, which
backreferences can make exponential), so the caller keeps the name as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: A part of the grammar to walk from the parser's position (its result unused).
Walk = Callable[[], object]

#: Deeper nesting than this is refused (rustc-demangle's limit is 500; Python's
#: own stack would end first on hostile names).
MAX_DEPTH = 200

#: Longer output than this is refused: backreferences let a short name expand
#: exponentially.
MAX_OUTPUT = 1 << 16

_BASIC_TYPES = {
    "b": "bool",
    "c": "char",
    "e": "str",
    "u": "()",
    "a": "i8",
    "s": "i16",
    "l": "i32",
    "x": "i64",
    "n": "i128",
    "i": "isize",
    "h": "u8",
    "t": "u16",
    "m": "u32",
    "y": "u64",
    "o": "u128",
    "j": "usize",
    "f": "f32",
    "d": "f64",
    "z": "!",
    "p": "_",
    "v": "...",
}

_BASE_62 = {
    c: i for i, c in enumerate("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
}
_HEX = re.compile(r"[0-9a-f]*")
_IDENT = re.compile(r"(u?)(0|[1-9][0-9]*)_?")
_BASE_62_NUMBER = re.compile(r"([0-9a-zA-Z]*)_")
_LLVM_SUFFIX = re.compile(r"\.llvm\.[0-9A-F@]*$")
_SYMBOL_LIKE = re.compile(r"[!-~]*")  # what rustc-demangle keeps of a `.suffix`


class _Invalid(Exception):
    """The name is not a v0 name this parser can print."""


def demangle_v0(name: str) -> str | None:
    """`name` (`_RNv...`) readable, or None when it is not a well-formed v0 name."""
    name = _LLVM_SUFFIX.sub("", name)
    if not name.startswith("_R") or len(name) < 3 or not name[2].isupper() or not name.isascii():
        return None
    inner = name[2:]
    try:
        end = _Printer(inner, printing=False).path_end()
        suffix = inner[end:]
        if suffix and not (suffix.startswith(".") and _SYMBOL_LIKE.fullmatch(suffix)):
            return None
        printer = _Printer(inner[:end], printing=True)
        printer.print_path(in_value=True)
        return "".join(printer.out) + suffix
    except (_Invalid, IndexError, ValueError, RecursionError):
        return None


class _Printer:
    """rustc-demangle's `Printer`: a parser position over `sym` and, while
    `printing`, the pieces of the output. Skipping (an impl's own path, the
    instantiating crate) walks the same grammar with `printing` off."""

    def __init__(self, sym: str, printing: bool) -> None:
        self.sym = sym
        self.at = 0
        self.depth = 0
        self.printing = printing
        self.out: list[str] = []
        self.length = 0
        self.bound_lifetimes = 0

    # --- output -----------------------------------------------------------------

    def emit(self, text: str) -> None:
        if self.printing:
            self.length += len(text)
            if self.length > MAX_OUTPUT:
                raise _Invalid("output too long")
            self.out.append(text)

    # --- tokens -----------------------------------------------------------------

    def path_end(self) -> int:
        """Where the path (and the instantiating crate after it) ends."""
        self.print_path(in_value=False)
        if self.at < len(self.sym) and self.sym[self.at].isupper():
            self.print_path(in_value=False)
        return self.at

    def peek(self) -> str:
        return self.sym[self.at] if self.at < len(self.sym) else ""

    def eat(self, char: str) -> bool:
        if self.at < len(self.sym) and self.sym[self.at] == char:
            self.at += 1
            return True
        return False

    def next(self) -> str:
        char = self.sym[self.at]  # IndexError at the end: invalid
        self.at += 1
        return char

    def integer_62(self) -> int:
        """`_` is 0; digits then `_` are the base-62 number plus one."""
        match = _BASE_62_NUMBER.match(self.sym, self.at)
        if match is None:
            raise _Invalid("base-62 number")
        self.at = match.end()
        digits = match.group(1)
        return _number_62(digits) + 1 if digits else 0

    def opt_integer_62(self, tag: str) -> int:
        return self.integer_62() + 1 if self.eat(tag) else 0

    def disambiguator(self) -> int:
        if self.at < len(self.sym) and self.sym[self.at] == "s":
            match = _BASE_62_NUMBER.match(self.sym, self.at + 1)
            if match is None:
                raise _Invalid("disambiguator")
            self.at = match.end()
            digits = match.group(1)
            return _number_62(digits) + 2 if digits else 1
        return 0

    def ident(self) -> str:
        # u (punycode), the length (a length never starts with 0, so "0" is all
        # of it), an optional `_` before text that starts with a digit or `_`.
        match = _IDENT.match(self.sym, self.at)
        if match is None:
            raise _Invalid("identifier length")
        start = match.end()
        end = start + int(match.group(2))
        if end > len(self.sym):
            raise _Invalid("identifier past the end")
        self.at = end
        text = self.sym[start:end]
        if not match.group(1):
            return text
        ascii_part, _, punycode = text.rpartition("_")
        if not punycode:
            raise _Invalid("empty punycode")
        if not self.printing:
            return ""
        try:
            encoded = f"{ascii_part}-{punycode}" if ascii_part else punycode
            return encoded.encode("ascii").decode("punycode")
        except (UnicodeError, ValueError):
            shown = f"{ascii_part}-{punycode}" if ascii_part else punycode
            return f"punycode{{{shown}}}"

    def hex_nibbles(self) -> str:
        match = _HEX.match(self.sym, self.at)
        assert match is not None
        self.at = match.end()
        if not self.eat("_"):
            raise _Invalid("hex without its end")
        return match.group()

    # --- nesting ----------------------------------------------------------------

    def backref(self, walk: Walk) -> None:
        """`B<base-62>`: what starts at that earlier position, walked again
        (not followed while skipping: the position is all that is consumed)."""
        start = self.at - 1
        target = self.integer_62()
        if target >= start:
            raise _Invalid("backreference forward")
        if not self.printing:
            return
        saved = self.at
        self.at = target
        self.push()
        walk()
        self.depth -= 1
        self.at = saved

    def push(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Invalid("too deep")

    def sep_list(self, walk: Walk, separator: str) -> int:
        count = 0
        while not self.eat("E"):
            if count:
                self.emit(separator)
            walk()
            count += 1
        return count

    def in_binder(self, walk: Walk) -> None:
        bound = self.opt_integer_62("G")
        if not self.printing:
            walk()
            return
        if bound:
            self.emit("for<")
            for i in range(bound):
                if i:
                    self.emit(", ")
                self.bound_lifetimes += 1
                self.lifetime(1)
            self.emit("> ")
        walk()
        self.bound_lifetimes -= bound

    def lifetime(self, index: int) -> None:
        if not self.printing:
            return
        if index == 0:
            self.emit("'_")
            return
        depth = self.bound_lifetimes - index
        if depth < 0:
            raise _Invalid("lifetime outside its binder")
        self.emit("'" + (chr(ord("a") + depth) if depth < 26 else f"_{depth}"))

    # --- the grammar ------------------------------------------------------------

    def print_path(self, in_value: bool) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Invalid("too deep")
        tag = self.sym[self.at]
        self.at += 1
        if tag == "C":
            self.disambiguator()
            self.emit(self.ident())
        elif tag == "N":
            namespace = self.next()
            if not namespace.isalpha():
                raise _Invalid("namespace")
            self.print_path(in_value)
            number = self.disambiguator()
            name = self.ident()
            if namespace.isupper():
                kind = {"C": "closure", "S": "shim"}.get(namespace, namespace)
                self.emit(f"::{{{kind}{':' + name if name else ''}#{number}}}")
            elif name:
                self.emit("::" + name)
        elif tag in "MXY":
            if tag != "Y":
                self.disambiguator()
                printing, self.printing = self.printing, False
                self.print_path(in_value=False)  # the impl's own path is not shown
                self.printing = printing
            self.emit("<")
            self.print_type()
            if tag != "M":
                self.emit(" as ")
                self.print_path(in_value=False)
            self.emit(">")
        elif tag == "I":
            self.print_path(in_value)
            self.emit("::<" if in_value else "<")
            self.sep_list(self.print_generic_arg, ", ")
            self.emit(">")
        elif tag == "B":
            self.backref(lambda: self.print_path(in_value))
        else:
            raise _Invalid(f"path tag {tag}")
        self.depth -= 1

    def print_generic_arg(self) -> None:
        if self.eat("L"):
            self.lifetime(self.integer_62())
        elif self.eat("K"):
            self.print_const(in_value=False)
        else:
            self.print_type()

    def print_type(self) -> None:
        tag = self.next()
        basic = _BASIC_TYPES.get(tag)
        if basic is not None:
            self.emit(basic)
            return
        self.push()
        if tag in "RQ":
            self.emit("&")
            if self.eat("L"):
                index = self.integer_62()
                if index:
                    self.lifetime(index)
                    self.emit(" ")
            if tag == "Q":
                self.emit("mut ")
            self.print_type()
        elif tag in "PO":
            self.emit("*const " if tag == "P" else "*mut ")
            self.print_type()
        elif tag in "AS":
            self.emit("[")
            self.print_type()
            if tag == "A":
                self.emit("; ")
                self.print_const(in_value=True)
            self.emit("]")
        elif tag == "T":
            self.emit("(")
            if self.sep_list(self.print_type, ", ") == 1:
                self.emit(",")
            self.emit(")")
        elif tag == "F":
            self.in_binder(self.fn_signature)
        elif tag == "D":
            self.emit("dyn ")
            self.in_binder(lambda: self.sep_list(self.print_dyn_trait, " + "))
            if not self.eat("L"):
                raise _Invalid("dyn without its lifetime")
            index = self.integer_62()
            if index:
                self.emit(" + ")
                self.lifetime(index)
        elif tag == "B":
            self.backref(self.print_type)
        else:
            self.at -= 1  # a path: let print_path see its tag
            self.print_path(in_value=False)
        self.depth -= 1

    def fn_signature(self) -> None:
        is_unsafe = self.eat("U")
        abi = None
        if self.eat("K"):
            if self.eat("C"):
                abi = "C"
            else:
                abi = self.ident()
                if not abi:
                    raise _Invalid("empty ABI")
        if is_unsafe:
            self.emit("unsafe ")
        if abi is not None:
            # A `-` in the ABI's name was mangled as `_`.
            self.emit(f'extern "{abi.replace("_", "-")}" ')
        self.emit("fn(")
        self.sep_list(self.print_type, ", ")
        self.emit(")")
        if not self.eat("u"):
            self.emit(" -> ")
            self.print_type()

    def print_dyn_trait(self) -> None:
        is_open = self.path_maybe_open_generics()
        while self.eat("p"):
            self.emit(", " if is_open else "<")
            is_open = True
            self.emit(self.ident())
            self.emit(" = ")
            self.print_type()
        if is_open:
            self.emit(">")

    def path_maybe_open_generics(self) -> bool:
        """A trait's path, its generic arguments left open for associated types."""
        if self.eat("B"):
            opened = [False]

            def walk() -> None:
                opened[0] = self.path_maybe_open_generics()

            self.backref(walk)
            return opened[0]
        if self.eat("I"):
            self.print_path(in_value=False)
            self.emit("<")
            self.sep_list(self.print_generic_arg, ", ")
            return True
        self.print_path(in_value=False)
        return False

    def print_const(self, in_value: bool) -> None:
        tag = self.next()
        self.push()
        braced = False

        def open_brace() -> None:
            nonlocal braced
            if not in_value:
                braced = True
                self.emit("{")

        if tag == "p":
            self.emit("_")
        elif tag in "htmyoj":
            self.emit(_uint(self.hex_nibbles()))
        elif tag in "aslxni":
            negative = self.eat("n")
            self.emit(("-" if negative else "") + _uint(self.hex_nibbles()))
        elif tag == "b":
            value = _small(self.hex_nibbles())
            if value not in (0, 1):
                raise _Invalid("bool")
            self.emit("true" if value else "false")
        elif tag == "c":
            value = _small(self.hex_nibbles())
            if value is None or value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                raise _Invalid("char")
            self.emit(_quoted(chr(value), "'"))
        elif tag == "e":
            open_brace()
            self.emit("*")
            self.emit(self.string_literal())
        elif tag in "RQ":
            if tag == "R" and self.eat("e"):
                self.emit(self.string_literal())
            else:
                open_brace()
                self.emit("&" if tag == "R" else "&mut ")
                self.print_const(in_value=True)
        elif tag == "A":
            open_brace()
            self.emit("[")
            self.sep_list(lambda: self.print_const(in_value=True), ", ")
            self.emit("]")
        elif tag == "T":
            open_brace()
            self.emit("(")
            if self.sep_list(lambda: self.print_const(in_value=True), ", ") == 1:
                self.emit(",")
            self.emit(")")
        elif tag == "V":
            open_brace()
            self.print_path(in_value=True)
            shape = self.next()
            if shape == "T":
                self.emit("(")
                self.sep_list(lambda: self.print_const(in_value=True), ", ")
                self.emit(")")
            elif shape == "S":
                self.emit(" { ")
                self.sep_list(self.const_field, ", ")
                self.emit(" }")
            elif shape != "U":
                raise _Invalid("constant's shape")
        elif tag == "B":
            self.backref(lambda: self.print_const(in_value))
        else:
            raise _Invalid(f"constant tag {tag}")
        if braced:
            self.emit("}")
        self.depth -= 1

    def const_field(self) -> None:
        self.disambiguator()
        self.emit(self.ident())
        self.emit(": ")
        self.print_const(in_value=True)

    def string_literal(self) -> str:
        nibbles = self.hex_nibbles()
        if len(nibbles) % 2:
            raise _Invalid("string of odd length")
        try:
            text = bytes.fromhex(nibbles).decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid("string not UTF-8") from None
        return _quoted(text, '"')


def _number_62(digits: str) -> int:
    value = 0
    for char in digits:
        value = value * 62 + _BASE_62[char]
    return value


def _small(nibbles: str) -> int | None:
    digits = nibbles.lstrip("0")
    return int(digits or "0", 16) if len(digits) <= 16 else None


def _uint(nibbles: str) -> str:
    value = _small(nibbles)
    return str(value) if value is not None else "0x" + nibbles


#: Rust's `char::escape_debug` for the characters it writes with a backslash.
_ESCAPES = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", "\0": "\\0"}


def _quoted(text: str, quote: str) -> str:
    """`text` between `quote`s, escaped as Rust's Debug does (the other quote
    kind is left as it is)."""
    pieces = [quote]
    for char in text:
        if char in _ESCAPES:
            pieces.append(_ESCAPES[char])
        elif char == quote:
            pieces.append("\\" + char)
        elif char.isprintable() or char == " ":
            pieces.append(char)
        else:
            pieces.append(f"\\u{{{ord(char):x}}}")
    pieces.append(quote)
    return "".join(pieces)
