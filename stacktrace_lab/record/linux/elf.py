"""Reading a static x86-64 Linux executable (pyelftools): segments, symbols, line table.

Static (`gcc -static`, `rustc -C relocation-model=static`), static-pie
(`rustc -C target-feature=+crt-static`) and dynamically linked executables
(`interp` names their loader, PT_INTERP; record/linux/dynamic.py loads it) and
shared libraries are read. Everything else is bad input with one line saying
why: a 32-bit or non-x86-64 ELF, a file that is not an ELF executable.

A shared library's exported functions come from `.dynsym` when it has no
`.symtab` (the host's libc is stripped), so `malloc` and `puts` are named.

Symbol names are demangled (Rust's v0 names by rust_v0.py, its legacy names by
rust-demangler without the `::h<hash>` suffix; C++ with cxxfilt), so labels
read `first_switch::hello`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import re
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from ...arch import PAGE
from ...errors import BadInput
from ...limits import MAX_PROCESS_MEMORY, MAX_PROGRAM_FILE_BYTES, read_input
from ...trace.format import SourceLine
from .rust_v0 import demangle_v0

#: Where a static-pie is loaded (Linux's ELF_ET_DYN_BASE with ASLR off).
PIE_BASE = 0x555555554000
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_RUST_LEGACY = re.compile(r"17h[0-9a-f]{16}E$")
_MACHINES = {"EM_386": "32-bit x86", "EM_AARCH64": "ARM64", "EM_ARM": "ARM"}
#: Linux's TASK_SIZE on x86-64 (47-bit addresses, less the guard page): no
#: segment may end above it; vm.mmap_min_addr: none may start below it.
TASK_SIZE = 0x7FFFFFFFF000
MMAP_MIN_ADDR = 0x10000
#: What Linux's load_elf_phdrs accepts: sizeof(Elf64_Phdr), at most 64 KiB of them.
PHDR_SIZE = 56
MAX_PHDR_BYTES = 65536
#: The stack every process gets (process.py), counted against its memory.
_STACK_BYTES = 8 << 20
_PT_LOAD, _PT_INTERP = 1, 3
_SHT_NOBITS = 8


@dataclass(frozen=True)
class Segment:
    vaddr: int  # already relocated by the load base
    memsz: int
    perms: str  # "r-x"
    data: bytes  # the file's bytes; the rest up to memsz is zero (.bss)


@dataclass(frozen=True)
class DataSymbol:
    name: str
    addr: int
    size: int


@dataclass(frozen=True)
class ElfImage:
    path: Path
    sha256: str
    pie: bool
    load_base: int
    entry: int
    segments: tuple[Segment, ...]
    phdr: int  # address of the program headers in memory (AT_PHDR)
    phnum: int
    phent: int
    #: Code and data labels, demangled, relocated: name -> address.
    symbols: dict[str, int]
    #: Objects with a size (candidates for a stack in .data/.bss).
    data_symbols: tuple[DataSymbol, ...]
    #: Mangled or plain name -> address, for finding malloc, calloc, main...
    raw_symbols: dict[str, int] = field(default_factory=dict)
    #: The program interpreter a dynamically linked program asks for (PT_INTERP).
    interp: str | None = None

    @property
    def end(self) -> int:
        """First byte after the highest segment (where the heap starts, page aligned)."""
        return max(s.vaddr + s.memsz for s in self.segments)

    def find_symbol(self, name: str) -> int | None:
        """A symbol by its demangled or raw name (`main`, `first_switch::hello`)."""
        if name in self.symbols:
            return self.symbols[name]
        return self.raw_symbols.get(name)


def load_elf(path: str | Path, pie_base: int = PIE_BASE) -> ElfImage:
    """`pie_base`: where a static-pie goes (the silicon check loads it where the kernel did)."""
    path = Path(path)
    # A regular file of bounded size, opened without blocking: a FIFO or
    # /dev/zero named as the program is one line, not a hang.
    raw = read_input(path, MAX_PROGRAM_FILE_BYTES, "program", option=None)
    return elf_image(path, raw, hashlib.sha256(raw).hexdigest(), pie_base)


def elf_image(path: Path, raw: bytes, sha256: str, pie_base: int = PIE_BASE) -> ElfImage:
    """`load_elf` of bytes already read (a library, as the program read it through
    the file view); `sha256` is theirs."""
    if raw[:4] != b"\x7fELF":
        raise BadInput(f"{path}: not an ELF executable (no ELF header)")
    _check_as_linux_does(path, raw, pie_base)
    try:
        return _parse(path, raw, sha256, pie_base)
    except (BadInput, MemoryError):
        raise
    except Exception as exc:
        # pyelftools parses hostile bytes with many exception types (ELFError,
        # struct and construct errors, IndexError, UnicodeDecodeError...): any
        # of them is a malformed file, said in one line.
        raise BadInput(f"{path}: malformed ELF file: {_reason(exc)}") from None


def _elf_header(raw: bytes) -> tuple[int, int, int, int, int]:
    """(e_type, e_machine, e_phoff, e_phentsize, e_phnum) of a 64-bit little-endian
    ELF header (`raw` holds at least its 64 bytes)."""
    e_type, machine = struct.unpack_from("<HH", raw, 16)
    (phoff,) = struct.unpack_from("<Q", raw, 32)
    phentsize, phnum = struct.unpack_from("<HH", raw, 54)
    return e_type, machine, phoff, phentsize, phnum


def _program_header(raw: bytes, phoff: int, i: int) -> tuple[int, int, int, int, int]:
    """(p_type, p_offset, p_vaddr, p_filesz, p_memsz) of program header `i`."""
    p_type, _flags, offset, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
        "<IIQQQQQQ", raw, phoff + i * PHDR_SIZE
    )
    return p_type, offset, vaddr, filesz, memsz


@dataclass(frozen=True)
class Placement:
    """What placing a shared object needs, from its program headers alone: whether
    it is position independent, asks for an interpreter, and the span of its loaded
    segments at its own addresses (the lowest one's start, the highest one's end)."""

    pie: bool
    interp: bool
    low: int
    high: int


def placement(raw: bytes) -> Placement | None:
    """`raw`'s Placement, or None when its headers are not those of an x86-64 ELF
    program or library with a loaded segment (`elf_image` then says why, or refuses).

    Read with struct: a library is placed before it is read (pyelftools and its
    symbols), and is read once, where it goes."""
    if len(raw) < 64 or raw[:4] != b"\x7fELF" or raw[4] != 2 or raw[5] != 1:
        return None
    e_type, machine, phoff, phentsize, phnum = _elf_header(raw)
    if machine != 62 or e_type not in (2, 3) or phentsize != PHDR_SIZE:
        return None
    if phoff + phnum * PHDR_SIZE > len(raw):
        return None
    low, high, interp = -1, -1, False
    for i in range(phnum):
        p_type, _offset, vaddr, _filesz, memsz = _program_header(raw, phoff, i)
        interp |= p_type == _PT_INTERP
        if p_type == _PT_LOAD and memsz:
            low = vaddr if low < 0 else min(low, vaddr)
            high = max(high, vaddr + memsz)
    if low < 0:
        return None
    return Placement(e_type == 3, interp, low, high)


def _check_sections(path: Path, raw: bytes) -> None:
    """Section headers inside the file, each section's bytes too (but .bss's).

    Linux never reads them; pyelftools does (symbols, DWARF), and a hostile
    `sh_size` of 2^31 made it allocate until MemoryError.
    """
    shoff = struct.unpack_from("<Q", raw, 40)[0]
    shentsize, shnum = struct.unpack_from("<HH", raw, 58)
    if shnum == 0:
        return
    if shentsize != 64 or shoff + shnum * 64 > len(raw):
        raise BadInput(f"{path}: malformed ELF file: the section headers lie past its end")
    for i in range(shnum):
        sh_type = struct.unpack_from("<I", raw, shoff + i * 64 + 4)[0]
        offset, size = struct.unpack_from("<QQ", raw, shoff + i * 64 + 24)
        if sh_type != _SHT_NOBITS and offset + size > len(raw):
            raise BadInput(f"{path}: malformed ELF file: section {i} lies past the file's end")


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_as_linux_does(path: Path, raw: bytes, pie_base: int) -> None:
    """Refuse, in one line, what Linux's ELF loader (fs/binfmt_elf.c) refuses.

    Checked from the raw header before pyelftools reads it: a `p_offset` of
    2^63 would overflow its seek, a `p_memsz` of 1 TiB would be mapped page by
    page. Linux refuses: another byte order or class (exec format error), a
    program header size other than 56 or more than 64 KiB of them (ENOEXEC),
    a segment whose file size exceeds its memory size or that ends above
    TASK_SIZE (EINVAL), a file offset not congruent to the address modulo the
    page (mmap's EINVAL), a segment below vm.mmap_min_addr (EPERM). Data past
    the end of the file would be SIGBUS on Linux; here it is refused too.
    """
    if len(raw) < 64 or raw[4] != 2:
        return  # a 32-bit or cut ELF: _parse names what it is
    if raw[5] != 1:
        raise BadInput(f"{path}: a big-endian ELF; Linux on x86-64 refuses it (exec format error)")
    e_type, machine, phoff, phentsize, phnum = _elf_header(raw)
    if machine != 62 or e_type not in (2, 3):
        return  # another machine or not an executable: _parse names which
    if phentsize != PHDR_SIZE:
        raise BadInput(
            f"{path}: program headers of {phentsize} bytes (e_phentsize), not {PHDR_SIZE}; "
            "Linux refuses it (ENOEXEC)"
        )
    if phnum == 0 or phnum * PHDR_SIZE > MAX_PHDR_BYTES:
        raise BadInput(
            f"{path}: {phnum} program headers; Linux takes 1 to {MAX_PHDR_BYTES // PHDR_SIZE} "
            "(ENOEXEC)"
        )
    if phoff + phnum * PHDR_SIZE > len(raw):
        raise BadInput(f"{path}: malformed ELF file: the program headers lie past its end")
    base = pie_base if e_type == 3 else 0  # ET_DYN
    memory = _STACK_BYTES
    for i in range(phnum):
        p_type, offset, vaddr, filesz, memsz = _program_header(raw, phoff, i)
        where = f"{path}: segment {i}"
        if p_type == _PT_INTERP:
            return  # dynamically linked: _parse says so
        if p_type != _PT_LOAD:
            continue
        if offset + filesz > len(raw):
            raise BadInput(
                f"{where}: its {filesz} bytes at offset {offset:#x} lie past the file's end"
            )
        if filesz > memsz:
            raise BadInput(
                f"{where}: p_filesz {filesz:#x} > p_memsz {memsz:#x}; Linux refuses it (EINVAL)"
            )
        if memsz == 0:
            continue
        start = base + vaddr
        if memsz > TASK_SIZE or start + memsz > TASK_SIZE:
            raise BadInput(
                f"{where}: {start:#x} + {memsz:#x} bytes ends above the user address space "
                f"({TASK_SIZE:#x}); Linux refuses it (EINVAL)"
            )
        if start < MMAP_MIN_ADDR:
            raise BadInput(
                f"{where}: at {start:#x}, below vm.mmap_min_addr ({MMAP_MIN_ADDR:#x}); "
                "Linux refuses to map it (EPERM)"
            )
        if (offset - vaddr) % PAGE:
            raise BadInput(
                f"{where}: file offset {offset:#x} and address {vaddr:#x} differ modulo the "
                "page size; Linux cannot map it (EINVAL)"
            )
        memory += (start + memsz + PAGE - 1) // PAGE * PAGE - start // PAGE * PAGE
    _check_sections(path, raw)
    if memory > MAX_PROCESS_MEMORY:
        raise BadInput(
            f"{path}: its segments and stack need {memory} bytes of memory, more than a "
            f"process may use here ({MAX_PROCESS_MEMORY} bytes, docs/machine.md#limits)"
        )


# Reading and demangling a Rust program's symbols takes seconds (pure Python):
# once per binary in a process (the discovery pass, the recording, a replay).
# A dynamic program brings its loader and libraries, each read at two bases.
@functools.lru_cache(maxsize=32)
def _parse(path: Path, raw: bytes, sha256: str, pie_base: int) -> ElfImage:
    elf = ELFFile(io.BytesIO(raw))
    machine = elf["e_machine"]
    if elf.elfclass != 64:
        what = _MACHINES.get(machine, machine)
        raise BadInput(f"{path}: a 32-bit ELF ({what}); only x86-64 programs can be recorded")
    if machine != "EM_X86_64":
        what = _MACHINES.get(machine, machine)
        raise BadInput(f"{path}: an ELF for {what}; only x86-64 programs can be recorded")
    kind = elf["e_type"]
    if kind not in ("ET_EXEC", "ET_DYN"):
        raise BadInput(f"{path}: not an executable ({kind}); link it into a program first")
    segments = list(elf.iter_segments())
    interp = next(
        (_interp_name(s) for s in segments if s["p_type"] == "PT_INTERP"),
        None,
    )
    pie = kind == "ET_DYN"
    base = pie_base if pie else 0
    loads = []
    for seg in segments:
        if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
            continue
        flags = seg["p_flags"]
        perms = (
            ("r" if flags & 4 else "-") + ("w" if flags & 2 else "-") + ("x" if flags & 1 else "-")
        )
        loads.append(Segment(base + seg["p_vaddr"], seg["p_memsz"], perms, seg.data()))
    if not loads:
        raise BadInput(f"{path}: the ELF has no loadable segment")
    if not any("x" in seg.perms for seg in loads):
        # Linux maps it and the first instruction fetch kills it (SIGSEGV):
        # there is no instruction to record.
        raise BadInput(
            f"{path}: no executable segment; Linux would kill it with SIGSEGV at its "
            "first instruction"
        )
    phdr = next((s["p_vaddr"] for s in segments if s["p_type"] == "PT_PHDR"), None)
    if phdr is None:  # the headers lie in the first segment that maps file offset 0
        first = next(s for s in segments if s["p_type"] == "PT_LOAD")
        phdr = first["p_vaddr"] - first["p_offset"] + elf["e_phoff"]
    symbols, raw_symbols, data_symbols = _symbols(elf, sha256, base)
    return ElfImage(
        path=path,
        sha256=sha256,
        pie=pie,
        load_base=base,
        entry=base + elf["e_entry"],
        segments=tuple(loads),
        phdr=base + phdr,
        phnum=elf["e_phnum"],
        phent=elf["e_phentsize"],
        symbols=symbols,
        data_symbols=tuple(data_symbols),
        raw_symbols=raw_symbols,
        interp=interp,
    )


def _interp_name(segment: Any) -> str:
    """PT_INTERP's path: its bytes up to the first NUL."""
    return bytes(segment.data()).split(b"\0", 1)[0].decode("utf-8", "replace")


#: Elf64_Sym, as the ELF specification lays it out (24 bytes, little-endian).
_ELF64_SYM = np.dtype(
    [
        ("name", "<u4"),
        ("info", "u1"),
        ("other", "u1"),
        ("shndx", "<u2"),
        ("value", "<u8"),
        ("size", "<u8"),
    ]
)
_STT_NOTYPE, _STT_OBJECT, _STT_FUNC, _STT_GNU_IFUNC = 0, 1, 2, 10
_SHN_UNDEF, _SHN_ABS = 0, 0xFFF1


#: One symbol as a table holds it, before relocation: (name as stored, without any
#: `@version`), address from the image's base, size, whether it is a data object.
_RawSymbol = tuple[str, int, int, bool]
#: The symbols of the images read lately, by sha256: a library is read at two
#: bases (the probe at PIE_BASE, then where the loader put it) and its separate
#: debug file once more; its symbol tables are read and demangled once.
_TABLES: dict[str, tuple[list[_RawSymbol], list[str]]] = {}
_TABLES_KEPT = 32


def _symbols(
    elf: ELFFile, sha256: str, base: int
) -> tuple[dict[str, int], dict[str, int], list[DataSymbol]]:
    found = _TABLES.get(sha256)
    if found is None:
        entries: list[_RawSymbol] = []
        seen: set[str] = set()
        # .symtab has every label; a stripped shared library keeps its exports in .dynsym.
        for section in (".symtab", ".dynsym"):
            _read_table(elf, section, entries, seen)
        found = entries, demangle_all([name for name, *_ in entries])
        if len(_TABLES) >= _TABLES_KEPT:
            del _TABLES[next(iter(_TABLES))]
        _TABLES[sha256] = found
    entries, names = found
    symbols: dict[str, int] = {}
    raw: dict[str, int] = {}
    data: list[DataSymbol] = []
    for (mangled, value, size, is_object), name in zip(entries, names, strict=True):
        addr = base + value
        raw.setdefault(mangled, addr)
        symbols.setdefault(name, addr)
        if is_object and size > 0:
            data.append(DataSymbol(name, addr, size))
    data.sort(key=lambda d: (d.addr, d.size, d.name))
    return symbols, raw, data


def _read_table(elf: ELFFile, section: str, entries: list[_RawSymbol], seen: set[str]) -> None:
    """The table's code and data labels, but names an earlier table had (`seen`).
    A name twice in one table (static objects of two files) is kept twice: both
    are data symbols; the first is the name's address."""
    table = elf.get_section_by_name(section)
    if not isinstance(table, SymbolTableSection) or table["sh_entsize"] != _ELF64_SYM.itemsize:
        return
    earlier = set(seen)
    # pyelftools finds the tables; the entries are read as one numpy array
    # (its per-symbol parsing took a second for a Rust program's 3,000 symbols).
    symbols = np.frombuffer(table.data(), dtype=_ELF64_SYM)
    strings = elf.get_section(table["sh_link"]).data()
    kind = symbols["info"] & 0xF
    keep = (
        np.isin(kind, (_STT_NOTYPE, _STT_OBJECT, _STT_FUNC, _STT_GNU_IFUNC))
        & ~np.isin(symbols["shndx"], (_SHN_UNDEF, _SHN_ABS))
        & (symbols["value"] != 0)
        & (symbols["name"] != 0)
    )
    kept = symbols[keep]
    for start, value, size, info in zip(
        kept["name"].tolist(),
        kept["value"].tolist(),
        kept["size"].tolist(),
        kept["info"].tolist(),
        strict=True,
    ):
        name_bytes = strings[start : strings.index(b"\0", start)]
        mangled = name_bytes.decode("utf-8", "replace").split("@", 1)[0]
        if not mangled or mangled.startswith((".L", "$")) or mangled in earlier:
            continue
        seen.add(mangled)
        entries.append((mangled, value, size, info & 0xF == _STT_OBJECT))


@cache
def _rust_demangler() -> object:
    try:
        import rust_demangler
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    return rust_demangler


@cache
def _cxx_demangler() -> object:
    """cxxfilt, imported for the first C++ name only: its import looks for the C++
    runtime (ctypes.util.find_library runs ldconfig), 0.04 CPU s a Rust program's
    recording does not need."""
    try:
        import cxxfilt
    except (ImportError, OSError):  # cxxfilt needs the C++ runtime library
        return None
    return cxxfilt


def demangle(name: str) -> str:
    """Rust (legacy and v0) and C++ names readable; anything else as it is."""
    return demangle_all([name])[0]


def demangle_all(names: list[str]) -> list[str]:
    """`demangle` of each name. Only `_Z...` (C++, legacy Rust) and `_R...` (Rust v0)
    names are mangled; the others (C's, most of a C library's) are returned as
    they are without asking a demangler."""
    if not any(name.startswith(("_Z", "_R")) for name in names):
        return list(names)
    # rust-demangler prints what it has so far before giving up on a name.
    with contextlib.redirect_stdout(io.StringIO()):
        return [_demangled(name) if name.startswith(("_Z", "_R")) else name for name in names]


def _demangled(name: str) -> str:
    if name.startswith("_R"):
        return demangle_v0(name) or name
    is_rust = name.startswith("_ZN") and _RUST_LEGACY.search(name) is not None
    try:
        rust = _rust_demangler() if is_rust else None
        if rust is not None:
            return _RUST_HASH.sub("", str(rust.demangle(name)))  # type: ignore[attr-defined]
        cxx = _cxx_demangler() if name.startswith("_Z") else None
        if cxx is not None:
            return str(cxx.demangle(name))  # type: ignore[attr-defined]
    except Exception:  # a name the demangler does not understand stays mangled
        return name
    return name


def line_table(path: Path, load_base: int) -> tuple[SourceLine, ...]:
    """DWARF's line table: (address, file, line) rows in address order, relocated.

    The end of each sequence becomes a row of line 0 ("no line from here"), so
    code without debug information after a compiled unit (the C library) is
    not attributed to that unit's last line. Files keep DWARF's names: relative
    to the compilation directory when the compiler was given a relative path,
    else absolute (Rust's std: /rustc/<commit>/library/...).
    """
    try:
        return _line_table(path, load_base)
    except (BadInput, MemoryError):
        raise
    except Exception as exc:
        # As for the headers (load_elf): pyelftools raises many types on a
        # corrupt .debug_line; the program runs, but its lines cannot be read.
        raise BadInput(f"{path}: malformed DWARF line table: {_reason(exc)}") from None


def _line_table(path: Path, load_base: int) -> tuple[SourceLine, ...]:
    # Decoded by record/linux/dwarf_lines.py (pyelftools reads the headers).
    from .dwarf_lines import LineIndex

    return LineIndex(path, load_base).all_rows()
