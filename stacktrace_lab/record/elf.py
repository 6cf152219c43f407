"""Reading a static x86-64 Linux executable (pyelftools): segments, symbols, line table.

Static (`gcc -static`, `rustc -C relocation-model=static`), static-pie
(`rustc -C target-feature=+crt-static`) and dynamically linked executables
(`interp` names their loader, PT_INTERP; record/dynamic.py loads it) and
shared libraries are read. Everything else is bad input with one line saying
why: a 32-bit or non-x86-64 ELF, a file that is not an ELF executable.

A shared library's exported functions come from `.dynsym` when it has no
`.symtab` (the host's libc is stripped), so `malloc` and `puts` are named.

Symbol names are demangled (Rust with rust-demangler, without the `::h<hash>`
suffix; C++ with cxxfilt), so labels read `first_switch::hello`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from ..errors import BadInput
from ..limits import MAX_PROGRAM_FILE_BYTES, read_input
from ..trace.format import SourceLine

#: Where a static-pie is loaded (Linux's ELF_ET_DYN_BASE with ASLR off).
PIE_BASE = 0x555555554000
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_MACHINES = {"EM_386": "32-bit x86", "EM_AARCH64": "ARM64", "EM_ARM": "ARM"}


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
    if raw[:4] != b"\x7fELF":
        raise BadInput(f"{path}: not an ELF executable (no ELF header)")
    try:
        return _parse(path, raw, hashlib.sha256(raw).hexdigest(), pie_base)
    except (ELFError, ValueError, KeyError, IndexError) as exc:
        raise BadInput(f"{path}: malformed ELF file: {exc}") from None


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
    phdr = next((s["p_vaddr"] for s in segments if s["p_type"] == "PT_PHDR"), None)
    if phdr is None:  # the headers lie in the first segment that maps file offset 0
        first = next(s for s in segments if s["p_type"] == "PT_LOAD")
        phdr = first["p_vaddr"] - first["p_offset"] + elf["e_phoff"]
    symbols, raw_symbols, data_symbols = _symbols(elf, base)
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


def _symbols(elf: ELFFile, base: int) -> tuple[dict[str, int], dict[str, int], list[DataSymbol]]:
    symbols: dict[str, int] = {}
    raw: dict[str, int] = {}
    data: list[DataSymbol] = []
    # .symtab has every label; a stripped shared library keeps its exports in .dynsym.
    for section in (".symtab", ".dynsym"):
        _read_table(elf, section, base, symbols, raw, data)
    data.sort(key=lambda d: (d.addr, d.size, d.name))
    return symbols, raw, data


def _read_table(
    elf: ELFFile,
    section: str,
    base: int,
    symbols: dict[str, int],
    raw: dict[str, int],
    data: list[DataSymbol],
) -> None:
    table = elf.get_section_by_name(section)
    if not isinstance(table, SymbolTableSection) or table["sh_entsize"] != _ELF64_SYM.itemsize:
        return
    seen = set(raw)
    # pyelftools finds the tables; the entries are read as one numpy array
    # (its per-symbol parsing took a second for a Rust program's 3,000 symbols).
    entries = np.frombuffer(table.data(), dtype=_ELF64_SYM)
    strings = elf.get_section(table["sh_link"]).data()
    kind = entries["info"] & 0xF
    keep = (
        np.isin(kind, (_STT_NOTYPE, _STT_OBJECT, _STT_FUNC, _STT_GNU_IFUNC))
        & ~np.isin(entries["shndx"], (_SHN_UNDEF, _SHN_ABS))
        & (entries["value"] != 0)
        & (entries["name"] != 0)
    )
    for entry in entries[keep]:
        start = int(entry["name"])
        name_bytes = strings[start : strings.index(b"\0", start)]
        mangled = name_bytes.decode("utf-8", "replace").split("@", 1)[0]
        if not mangled or mangled.startswith((".L", "$")) or mangled in seen:
            continue
        addr = base + int(entry["value"])
        name = demangle(mangled)
        raw.setdefault(mangled, addr)
        symbols.setdefault(name, addr)
        if entry["info"] & 0xF == _STT_OBJECT and entry["size"] > 0:
            data.append(DataSymbol(name, addr, int(entry["size"])))


@cache
def _demanglers() -> tuple[object, object]:
    try:
        import rust_demangler
    except ImportError:  # pragma: no cover - a declared dependency
        rust_demangler = None
    try:
        import cxxfilt
    except (ImportError, OSError):  # cxxfilt needs the C++ runtime library
        cxxfilt = None
    return rust_demangler, cxxfilt


def demangle(name: str) -> str:
    """Rust (legacy and v0) and C++ names readable; anything else as it is."""
    rust, cxx = _demanglers()
    is_rust = name.startswith("_R") or (
        name.startswith("_ZN") and re.search(r"17h[0-9a-f]{16}E$", name) is not None
    )
    try:
        # rust-demangler prints what it has so far before giving up on a name.
        with contextlib.redirect_stdout(io.StringIO()):
            if is_rust and rust is not None:
                return _RUST_HASH.sub("", str(rust.demangle(name)))  # type: ignore[attr-defined]
            if name.startswith("_Z") and cxx is not None:
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
    rows: dict[int, SourceLine] = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            return ()
        dwarf = elf.get_dwarf_info()
        for cu in dwarf.iter_CUs():
            program = dwarf.line_program_for_CU(cu)
            if program is None:
                continue
            files = _file_names(program)
            for entry in program.get_entries():
                state = entry.state
                if state is None:
                    continue
                addr = load_base + state.address
                if state.end_sequence:
                    rows.setdefault(addr, SourceLine(addr, "", 0))
                elif state.line > 0:
                    rows[addr] = SourceLine(addr, files.get(state.file, "?"), state.line)
    return tuple(rows[addr] for addr in sorted(rows))


def _file_names(program: Any) -> dict[int, str]:
    """File number -> name, for DWARF 4 (numbered from 1) and 5 (from 0)."""
    header = program.header
    version = header["version"]
    dirs = [_text(d) for d in header["include_directory"]]
    names: dict[int, str] = {}
    for i, entry in enumerate(header["file_entry"]):
        number = i if version >= 5 else i + 1
        name = _text(entry.name)
        dir_index = entry.dir_index
        if version < 5:
            directory = dirs[dir_index - 1] if dir_index > 0 else ""
        else:
            directory = dirs[dir_index] if 0 < dir_index < len(dirs) else ""
        if name.startswith("/") or not directory:
            names[number] = name
        else:
            names[number] = f"{directory.rstrip('/')}/{name}"
    return names


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
