"""Dynamically linked programs: the interpreter placed, the libraries found.

As the kernel does (fs/binfmt_elf.c), the program is mapped at its own
addresses (a PIE at `PIE_BASE`) and its interpreter (PT_INTERP, the host's
ld-linux-x86-64.so.2) at the top of the mmap area: `INTERP_TOP` minus the
interpreter's size (0x7ffff7fc3000 for Debian 12's), which is where Linux
puts it with ASLR off. The run starts at the interpreter's entry, with
AT_BASE saying where it is; the interpreter then opens and maps the
libraries itself through the file view's system calls (files.py), at fixed
addresses downwards from there.

After a run, `loaded_objects` reads the kernel's file mappings back: every
library's load address, so its symbols (`.dynsym`: libc's `puts`,
`malloc`...), its code (for the disassembly) and its DWARF lines (when it
has them) name what ran there. A stripped library's separate debug file
(`DEBUG_ROOT/.build-id/ab/cdef....debug`, as Debian's `libc6-dbg` installs
it, or the file its `.gnu_debuglink` names) adds its full symbol table and
its source lines, read only for the compile units that ran
(record/linux/dwarf_lines.py); it is read by the tool, not by the program, so it is
not part of the file view.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from ...arch import PAGE
from ...errors import BadInput
from ...layout import Region, page_ceil
from ...limits import MAX_PROGRAM_FILE_BYTES, read_input
from .dwarf_lines import LineIndex, line_index
from .elf import PIE_BASE, ElfImage, Placement, elf_image, load_elf, placement
from .files import FileKernel, FileView
from .process import MMAP_TOP, _segment_regions

#: The interpreter ends here (Linux's mmap_base with ASLR off and an 8 MiB stack).
INTERP_TOP = MMAP_TOP
#: Where separate debug files are found by build ID (gdb's default too).
DEBUG_ROOT = Path("/usr/lib/debug")


def load_interp(image: ElfImage, view: FileView) -> ElfImage:
    """The program's interpreter, read through the view and placed under `INTERP_TOP`."""
    assert image.interp is not None
    found = view.lookup(image.interp)
    if isinstance(found, int):
        raise BadInput(
            f"{image.path}: its interpreter {image.interp} is not on this machine "
            "(or outside the loader's directories)"
        )
    # Its size, from its program headers, says where it goes; then it is read there.
    raw = read_input(Path(found.host_path), MAX_PROGRAM_FILE_BYTES, "program", option=None)
    sha256 = hashlib.sha256(raw).hexdigest()
    placed = placement(raw)
    if placed is None:  # not a program's headers: read where any shared object may go
        probe = elf_image(Path(found.host_path), raw, sha256, PIE_BASE)  # says why
        ends = [s.vaddr + s.memsz - PIE_BASE for s in probe.segments]
        placed = Placement(probe.pie, probe.interp is not None, 0, max(ends))
    if not placed.pie or placed.interp:
        raise BadInput(f"{image.path}: its interpreter {image.interp} is not a loader")
    # As when it was read at PIE_BASE first: the span from PIE_BASE to its highest end.
    span = page_ceil(placed.high)
    return with_debug_symbols(elf_image(Path(found.host_path), raw, sha256, INTERP_TOP - span))


@dataclass(frozen=True)
class LoadedObject:
    """A shared library the loader mapped, at its load address."""

    name: str  # the file name: libc.so.6
    image: ElfImage

    def regions(self) -> list[Region]:
        return _segment_regions(self.image, f"{self.name} ", whole_pages=True)


def loaded_objects(
    kernel: FileKernel, known: dict[tuple[str, int], LoadedObject | None] | None = None
) -> list[LoadedObject]:
    """The ELF files the run mapped (not the ld.so cache), in load order, placed
    where the loader put them: the address it mapped offset 0 at. Each is read
    from the bytes the program read through the view (what it mapped).
    `known`: the objects an earlier call on the same run found (by path and
    address), not read again (the run goes on after the start-up: dlopen)."""
    objects: list[LoadedObject] = []
    seen: set[str] = set()
    known = {} if known is None else known
    for mapping in kernel.file_maps:
        if mapping.offset != 0 or mapping.path in seen:
            continue
        seen.add(mapping.path)
        key = (mapping.path, mapping.start)
        if key not in known:
            known[key] = _loaded_object(kernel.view, mapping.path, mapping.start)
        found = known[key]
        if found is not None:
            objects.append(found)
    return objects


def _loaded_object(view: FileView, path: str, start: int) -> LoadedObject | None:
    entry = view.files.get(path)
    if entry is None or entry.data[:4] != b"\x7fELF":
        return None
    # Where it was mapped says where its addresses start: its headers tell how far
    # its lowest segment is from there; then it is read once, at that base.
    placed = placement(entry.data)
    if placed is None or not placed.pie:
        return None  # a file mapped that is not a library the program runs
    first = placed.low // PAGE * PAGE
    try:
        image = elf_image(Path(path), entry.data, entry.sha256, pie_base=start - first)
    except BadInput:
        return None
    return LoadedObject(Path(path).name, with_debug_symbols(image))


def merged_symbols(images: list[ElfImage]) -> tuple[dict[str, int], dict[str, int]]:
    """(demangled, raw) names of all the images: the first image naming one wins."""
    symbols: dict[str, int] = {}
    raw: dict[str, int] = {}
    for image in images:
        for name, addr in image.symbols.items():
            symbols.setdefault(name, addr)
        for name, addr in image.raw_symbols.items():
            raw.setdefault(name, addr)
    return symbols, raw


def code_segments(images: list[ElfImage]) -> list[tuple[int, bytes]]:
    return [(s.vaddr, s.data) for image in images for s in image.segments if "x" in s.perms]


def line_indexes(images: list[ElfImage]) -> list[LineIndex]:
    """The line tables of the libraries that have one: their own DWARF, else their
    separate debug file's (which has the library's addresses). A table that
    cannot be read names nothing; the run is unaffected."""
    found: list[LineIndex] = []
    for image in images:
        source = image.path if _has_lines(image.path) else debug_file(image.path)
        if source is None:
            continue
        try:
            found.append(line_index(source, _file_key(source), image.load_base))
        except (BadInput, OSError):
            continue
    return found


@functools.lru_cache(maxsize=64)
def _has_lines(path: Path) -> bool:
    """Whether `path` carries its own DWARF line table (not stripped)."""
    try:
        with path.open("rb") as f:
            section = ELFFile(f).get_section_by_name(".debug_line")
            return section is not None and section["sh_size"] > 0
    except Exception:  # not an ELF file we can read: no lines
        return False


def _file_key(path: Path) -> str:
    """What tells one version of a file from another for the caches: its size and
    modification time (a debug file is installed by the package manager)."""
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


@functools.lru_cache(maxsize=32)
def build_id(path: Path) -> str | None:
    """The GNU build ID note of an ELF file, as hex, or None."""
    try:
        with path.open("rb") as f:
            for section in ELFFile(f).iter_sections():
                if not isinstance(section, NoteSection):
                    continue
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return str(note["n_desc"])
    except Exception:  # not an ELF file we can read: no build ID
        return None
    return None


def debug_file(path: Path) -> Path | None:
    """The separate debug file of `path`, when it is installed, found as gdb finds
    it: by build ID under `DEBUG_ROOT` (`.build-id/ab/cdef....debug`, Debian's
    `libc6-dbg`), else by its `.gnu_debuglink` name (checked by its CRC) next to
    it, in `.debug/` there, or under `DEBUG_ROOT` + its directory."""
    found = build_id(path)
    if found is not None and len(found) >= 3:
        candidate = DEBUG_ROOT / ".build-id" / found[:2] / f"{found[2:]}.debug"
        if candidate.is_file():
            return candidate
    link = debug_link(path)
    if link is None:
        return None
    name, crc = link
    directory = path.resolve().parent
    for candidate in (
        directory / name,
        directory / ".debug" / name,
        DEBUG_ROOT / directory.relative_to("/") / name,
    ):
        if candidate.is_file() and candidate.resolve() != path.resolve() and _crc(candidate) == crc:
            return candidate
    return None


@functools.lru_cache(maxsize=32)
def debug_link(path: Path) -> tuple[str, int] | None:
    """The `.gnu_debuglink` section of an ELF file: (file name, CRC-32), or None."""
    try:
        with path.open("rb") as f:
            section = ELFFile(f).get_section_by_name(".gnu_debuglink")
            if section is None:
                return None
            data = section.data()
    except Exception:  # not an ELF file we can read: no link
        return None
    end = data.find(b"\0")
    if end <= 0 or "/" in data[:end].decode("utf-8", "replace"):
        return None  # a name only, never a path (it must not lead out of the directory)
    crc_at = (end + 4) // 4 * 4  # the name, its NUL, padding to 4 bytes, the CRC
    if len(data) < crc_at + 4:
        return None
    return data[:end].decode("utf-8", "replace"), int.from_bytes(
        data[crc_at : crc_at + 4], "little"
    )


def _crc(path: Path) -> int:
    # A debug file is tens of MiB at most (libc's is 4); read in pieces all the same.
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def with_debug_symbols(image: ElfImage) -> ElfImage:
    """`image` with the symbols of its separate debug file too (its own names win)."""
    debug = debug_file(image.path)
    if debug is None:
        return image
    try:
        extra = load_elf(debug, pie_base=image.load_base)
    except BadInput:
        return image
    return replace(
        image,
        symbols={**extra.symbols, **image.symbols},
        raw_symbols={**extra.raw_symbols, **image.raw_symbols},
    )
