"""Hostile ELF files (issue 26): what Linux's loader refuses is one line, what it runs runs.

Each file is built byte by byte (tests/elf_builder.py) with one hostile field.
Before, these gave an OverflowError, a UC_ERR_MAP or an IndexError traceback,
a MemoryError after a minute at 3 GB (a `p_memsz` of 64 GiB), or were
recorded though Linux refuses them. Now: exit 2 with one line naming the
file and the field, no output file; or, where Linux runs the file, a trace.
The ELF loader is also fuzzed: mutated headers of a small real static
program either load or raise BadInput, never another exception.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacktrace_lab.cli import main
from stacktrace_lab.errors import BadInput
from stacktrace_lab.record.linux.elf import line_table, load_elf
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.trace import load_trace

from .elf_builder import BASE, EXIT_0, PF_R, PF_W, Phdr, assemble, elf_file, program

CODE = assemble(EXIT_0)


def _refused(tmp_path: Path, data: bytes, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "prog"
    path.write_bytes(data)
    output = tmp_path / "t.parquet"
    assert main(["record", str(path), "-o", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err
    assert not output.exists()
    return err


def _data(memsz: int, vaddr: int = 0x600000) -> Phdr:
    return Phdr(vaddr, b"x", PF_R | PF_W, memsz=memsz)


def _misaligned() -> bytes:
    """A segment whose file offset is not congruent to its address modulo 4096."""
    good = elf_file([Phdr(BASE, CODE)], BASE)
    return good[:64] + struct.pack(
        "<IIQQQQQQ", 1, 5, 0x1001, BASE, BASE, len(CODE), len(CODE), 0x1000
    ) + good[120:] + bytes(0x1100)  # fmt: skip


REFUSED = {
    "p_memsz 64 GiB": (program(EXIT_0, _data(64 << 30)), "more than a process may use"),
    "p_memsz 1 TiB": (program(EXIT_0, _data(1 << 40)), "more than a process may use"),
    "p_memsz 2^63": (program(EXIT_0, _data(1 << 63)), "ends above the user address space"),
    "e_phoff 2^63": (elf_file([Phdr(BASE, CODE)], BASE, phoff=1 << 63), "past its end"),
    "p_offset 2^63": (elf_file([Phdr(BASE, CODE, offset=1 << 63)], BASE), "past the file's end"),
    "PT_LOAD at 2^64-4096": (
        program(EXIT_0, Phdr((1 << 64) - 4096, b"x", PF_R)),
        "ends above the user address space",
    ),
    "non-canonical vaddr": (
        program(EXIT_0, Phdr(0x800000000000, b"x", PF_R)),
        "ends above the user address space",
    ),
    "below vm.mmap_min_addr": (program(EXIT_0, Phdr(0x1000, b"x", PF_R)), "mmap_min_addr"),
    "entry in the only, non-executable, segment": (
        elf_file([Phdr(BASE, CODE, PF_R)], BASE),
        "no executable segment",
    ),
    "big-endian": (elf_file([Phdr(BASE, CODE)], BASE, ei_data=2), "big-endian"),
    "e_phentsize 1000": (elf_file([Phdr(BASE, CODE)], BASE, phentsize=1000), "e_phentsize"),
    "p_filesz > p_memsz": (elf_file([Phdr(BASE, CODE, memsz=4)], BASE), "p_filesz"),
    "misaligned p_offset": (_misaligned(), "differ modulo the page size"),
    "4,000 program headers": (
        elf_file(
            [Phdr(BASE, CODE)] + [_data(1, 0x10000000 + i * 0x2000) for i in range(3999)], BASE
        ),
        "Linux takes 1 to 1170",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_file_linux_refuses_is_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, expected = REFUSED[case]
    assert expected in _refused(tmp_path, data, capsys)


def test_the_builders_plain_program_is_recorded(tmp_path: Path) -> None:
    """The control: the same builder's file without the hostile field runs and exits."""
    path = tmp_path / "prog"
    path.write_bytes(program(EXIT_0))
    recording = record_elf(path, tmp_path / "t.parquet")
    assert recording.metadata.stop.detail == "exit(0)"


def test_a_segment_over_the_stack_moves_the_stack_as_linux_makes_room(tmp_path: Path) -> None:
    """Linux runs a program with a segment in the 8 MiB under its stack top (its stack
    grows on demand); the whole stack is mapped here, so it moves below the segment."""
    segment = 0x7FFFFFF00000
    path = tmp_path / "prog"
    path.write_bytes(program(EXIT_0, Phdr(segment, b"x", PF_R | PF_W)))
    recording = record_elf(path, tmp_path / "t.parquet")
    assert recording.metadata.stop.detail == "exit(0)"
    main_stack = next(r for r in recording.metadata.regions if r.name == "stack")
    assert main_stack.top <= segment
    assert load_trace(tmp_path / "t.parquet").metadata.initial["rsp"] < segment


def test_an_entry_in_a_data_segment_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With an executable segment elsewhere, Linux runs the file and the first
    fetch from the non-executable page kills it: nothing to record, one line."""
    data = 0x600000
    built = elf_file([Phdr(BASE, CODE), Phdr(data, CODE, PF_R | PF_W)], data)
    err = _refused(tmp_path, built, capsys)
    assert "stopped before its first step: fetch from protected memory" in err


def test_sysenter_is_an_invalid_opcode_not_a_no_op(tmp_path: Path) -> None:
    """Unicorn ran `sysenter` as a no-op; a 64-bit Linux process dies on it."""
    path = tmp_path / "prog"
    path.write_bytes(
        elf_file([Phdr(BASE, bytes.fromhex("0f34") + assemble(EXIT_0, BASE + 2))], BASE)
    )
    stop = record_elf(path, tmp_path / "t.parquet").metadata.stop
    assert stop.reason == "fault"
    assert stop.detail.startswith(f"invalid opcode (#UD) at {BASE:#x}: sysenter")


def test_1170_one_page_segments_load(tmp_path: Path) -> None:
    """The most program headers Linux takes (64 KiB of them): the pages are found by a
    sweep over the segments' ends, not one dict entry per page."""
    segments = [_data(1, 0x10000000 + i * 0x2000) for i in range(1169)]
    path = tmp_path / "prog"
    path.write_bytes(elf_file([Phdr(BASE, CODE), *segments], BASE))
    image = load_elf(path)
    assert len(image.segments) == 1170


# --- a real program with a broken .debug_line, and the fuzz target ---------------------

_TINY_C = """
void _start(void) {
    __asm__ volatile("mov $60, %eax; xor %edi, %edi; syscall");
}
"""


@pytest.fixture(scope="module")
def tiny_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real static x86-64 program with DWARF, built by gcc (skips without it)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    directory = tmp_path_factory.mktemp("tiny")
    (directory / "tiny.c").write_text(_TINY_C)
    program_path = directory / "tiny"
    subprocess.run(
        ["gcc", "-static", "-nostdlib", "-g", "-O1", "-o", str(program_path), "tiny.c"],
        cwd=directory,
        check=True,
    )
    return program_path


def _section(path: Path, name: str) -> tuple[int, int]:
    from elftools.elf.elffile import ELFFile

    with path.open("rb") as f:
        section = ELFFile(f).get_section_by_name(name)
        assert section is not None
        return int(section["sh_offset"]), int(section["sh_size"])


def test_random_debug_line_is_one_line(
    tiny_static: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(tiny_static.read_bytes())
    offset, size = _section(tiny_static, ".debug_line")
    data[offset : offset + size] = random.Random(26).randbytes(size)
    err = _refused(tmp_path, bytes(data), capsys)
    assert "malformed DWARF line table" in err


def test_the_unmodified_tiny_program_has_lines(tiny_static: Path) -> None:
    assert any(row.file.endswith("tiny.c") for row in line_table(tiny_static, 0))


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_mutated_headers_load_or_are_one_bad_input(
    tiny_static: Path, tmp_path: Path, data: st.DataObject
) -> None:
    """Up to 8 bytes of the ELF header, the program headers or the section headers
    set to hostile values: load_elf returns an image or raises BadInput, nothing else."""
    raw = bytearray(tiny_static.read_bytes())
    e_shoff = struct.unpack_from("<Q", raw, 40)[0]
    e_phnum = struct.unpack_from("<H", raw, 56)[0]
    headers = list(range(64 + 56 * e_phnum)) + list(range(e_shoff, len(raw)))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.sampled_from(headers))
        width = data.draw(st.sampled_from([1, 2, 4, 8]))
        value = data.draw(
            st.sampled_from([0, 1, 0xFF, 0x7FFF_FFFF, 1 << 63, (1 << 64) - 1])
            | st.integers(0, (1 << 64) - 1)
        )
        chunk = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        raw[at : at + width] = chunk[: max(len(raw) - at, 0)]
    path = tmp_path / "fuzzed"
    path.write_bytes(bytes(raw))
    try:
        image = load_elf(path)
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    assert image.segments
    try:
        line_table(path, image.load_base)
    except BadInput as exc:
        assert "\n" not in str(exc)
