"""Hostile programs under `record` (issue 26): a process's memory, mappings and files are bounded.

Each program is a few instructions in a static ELF built byte by byte
(tests/elf_builder.py); it exits with the negated result of the call under
test, so the exit status reads as the errno Linux would give. Before: mmap of
1 TiB returned -EFAULT and the run ended in `fault: UC_ERR_NOMEM`; brk past
the limit returned -14 (glibc's sbrk reads it as the new break); kill(1,
SIGKILL) killed the program itself; MAP_FIXED at address 0 was granted; a
loop mapping and touching memory reached 5 GB; open descriptors and
mappings were unbounded; writev read every vector whole before the output cap.

The expensive ones ("bombs": loops that map memory until the limit) are
marked `bomb`; they run in the default suite and in .ci/run, each within
seconds because the limits stop them early.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stacktrace_lab.limits import MAX_MAPPINGS, MAX_OPEN_FILES, MAX_PROCESS_MEMORY, MiB
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.record.recorder import RecordOptions
from stacktrace_lab.trace import load_trace
from stacktrace_lab.trace.format import TraceMetadata

from .elf_builder import PF_R, PF_W, Phdr, program

ENOMEM, EPERM, ESRCH, EMFILE = 12, 1, 3, 24
DATA = 0x600000
PATH_MAPS = DATA  # "/proc/self/maps"
IOVEC = DATA + 0x20

EXIT_WITH_MINUS_RAX = """
    negq %rax
    movq %rax, %rdi
    movl $0x3c, %eax
    syscall
"""


def mmap(length: int, flags: int = 0x22, addr: int = 0) -> str:
    """mmap(addr, length, PROT_READ|PROT_WRITE, flags, -1, 0); flags 0x22: private anonymous."""
    return f"""
    movabsq ${addr:#x}, %rdi
    movabsq ${length:#x}, %rsi
    movl $0x3, %edx
    movl ${flags:#x}, %r10d
    movq $-1, %r8
    xorl %r9d, %r9d
    movl $0x9, %eax
    syscall
"""


def _run(tmp_path: Path, asm: str, max_steps: int = 100_000) -> TraceMetadata:
    path = tmp_path / "prog"
    data = Phdr(DATA, b"/proc/self/maps\0" + bytes(0x100), PF_R | PF_W)
    path.write_bytes(program(asm, data))
    options = RecordOptions(max_steps=max_steps)
    meta = record_elf(path, tmp_path / "t.parquet", options).metadata
    # The calls, read from the trace's `syscall` column, beside the metadata.
    return replace(meta, syscalls=tuple(load_trace(tmp_path / "t.parquet").syscalls()))


def _exit_status(meta: TraceMetadata) -> int:
    assert meta.stop.reason == "exit", meta.stop
    return int(meta.stop.detail.removeprefix("exit(").removesuffix(")"))


def _results(meta: TraceMetadata, name: str) -> list[int | None]:
    return [c.result for c in meta.syscalls if c.name == name]


def test_mmap_of_a_terabyte_is_enomem_and_the_program_goes_on(tmp_path: Path) -> None:
    meta = _run(tmp_path, mmap(1 << 40) + EXIT_WITH_MINUS_RAX)
    assert _results(meta, "mmap") == [-ENOMEM]
    assert _exit_status(meta) == ENOMEM


def test_mmap_past_the_memory_limit_is_enomem(tmp_path: Path) -> None:
    meta = _run(tmp_path, mmap(MAX_PROCESS_MEMORY) + EXIT_WITH_MINUS_RAX)
    assert _exit_status(meta) == ENOMEM


def test_mmap_under_the_limit_is_granted(tmp_path: Path) -> None:
    meta = _run(
        tmp_path, mmap(256 * MiB) + "movb $1, (%rax)\nxorl %eax, %eax\n" + EXIT_WITH_MINUS_RAX
    )
    assert _exit_status(meta) == 0
    (address,) = _results(meta, "mmap")
    assert address is not None and address > 0
    assert any(r.name == "mmap_1" and r.base == address for r in meta.regions)


def test_map_fixed_below_mmap_min_addr_is_eperm(tmp_path: Path) -> None:
    """Linux keeps page 0 (vm.mmap_min_addr, 65536) unmapped, so a null pointer faults."""
    meta = _run(tmp_path, mmap(0x1000, flags=0x32, addr=0) + EXIT_WITH_MINUS_RAX)
    assert _exit_status(meta) == EPERM
    meta = _run(tmp_path, mmap(0x1000, flags=0x32, addr=0x10000) + EXIT_WITH_MINUS_RAX)
    assert _results(meta, "mmap") == [0x10000]


BRK_BY = """
    xorl %edi, %edi
    movl $0xc, %eax
    syscall
    movq %rax, %rbx
    movabsq ${grow:#x}, %rdi
    addq %rax, %rdi
    movl $0xc, %eax
    syscall
    subq %rbx, %rax
    negq %rax
"""


def test_brk_past_the_limit_leaves_the_break_unchanged(tmp_path: Path) -> None:
    """glibc's sbrk compares the answer with what it asked for: an error code
    (-14 before) would read as a new break."""
    meta = _run(tmp_path, BRK_BY.format(grow=64 << 30) + EXIT_WITH_MINUS_RAX)
    first, second = _results(meta, "brk")
    assert second == first
    assert _exit_status(meta) == 0


def test_brk_under_the_limit_grows(tmp_path: Path) -> None:
    meta = _run(tmp_path, BRK_BY.format(grow=0x3000) + EXIT_WITH_MINUS_RAX)
    first, second = _results(meta, "brk")
    assert first is not None and second == first + 0x3000


KILL = """
    movq ${pid:#x}, %rdi
    movl ${sig:#x}, %esi
    movl $0x3e, %eax
    syscall
"""


@pytest.mark.parametrize(("pid", "errno"), [(1, EPERM), (999, EPERM), (4242, ESRCH), (-1, ESRCH)])
def test_kill_of_another_process_is_refused_not_suicide(
    tmp_path: Path, pid: int, errno: int
) -> None:
    meta = _run(tmp_path, KILL.format(pid=pid & 0xFFFFFFFF, sig=9) + EXIT_WITH_MINUS_RAX)
    assert _exit_status(meta) == errno


def test_kill_of_itself_still_kills(tmp_path: Path) -> None:
    meta = _run(tmp_path, KILL.format(pid=1000, sig=9) + EXIT_WITH_MINUS_RAX)
    assert meta.stop.detail == "killed by SIGKILL"


OPEN_MAPS_FOREVER = f"""
again:
    movq $-100, %rdi
    movl ${PATH_MAPS:#x}, %esi
    xorl %edx, %edx
    movl $0x101, %eax
    syscall
    cmpq $-4096, %rax
    jb again
{EXIT_WITH_MINUS_RAX}
"""


def test_opening_without_closing_stops_at_emfile(tmp_path: Path) -> None:
    """Each open kept a copy of /proc/self/maps until MemoryError (396 s); now
    the text is made when read, and descriptor 1024 is -EMFILE (RLIMIT_NOFILE)."""
    meta = _run(tmp_path, OPEN_MAPS_FOREVER)
    assert _exit_status(meta) == EMFILE
    opened = _results(meta, "openat")
    assert opened[:2] == [3, 4] and opened[-2:] == [MAX_OPEN_FILES - 1, -EMFILE]


WRITEV_MAPPED = (
    mmap(512 * MiB)
    + f"""
    movq %rax, {IOVEC:#x}
    movabsq ${512 * MiB:#x}, %rcx
    movq %rcx, {IOVEC + 8:#x}
    movl $1, %edi
    movl ${IOVEC:#x}, %esi
    movl $1, %edx
    movl $0x14, %eax
    syscall
    xorl %eax, %eax
"""
    + EXIT_WITH_MINUS_RAX
)


def test_writev_reads_only_what_the_output_keeps(tmp_path: Path) -> None:
    """A 512 MiB vector: 1 MiB kept, the rest counted, the call says all was written."""
    meta = _run(tmp_path, WRITEV_MAPPED)
    assert _results(meta, "writev") == [512 * MiB]
    assert len(meta.stdout) == MiB
    doc = json.loads(pq.ParquetFile(tmp_path / "t.parquet").metadata.metadata[b"stacktrace_lab"])
    assert doc["output_cut"] == {"stdout": 512 * MiB - MiB, "stderr": 0}


# --- bombs: loops that run until a limit stops them -------------------------------------


MAP_AND_TOUCH_FOREVER = f"""
loop:
{mmap(256 * MiB)}
    cmpq $-4096, %rax
    ja done
    movq %rax, %rbx
    movl $0x100, %ecx
touch:
    movb $1, (%rbx)
    addq $0x100000, %rbx
    loop touch
    jmp loop
done:
{EXIT_WITH_MINUS_RAX}
"""


@pytest.mark.bomb
def test_mapping_and_touching_memory_in_a_loop_stops_at_the_limit(tmp_path: Path) -> None:
    """Reached 5 GB in 67 s before; now the fourth 256 MiB mapping is -ENOMEM."""
    meta = _run(tmp_path, MAP_AND_TOUCH_FOREVER)
    assert _exit_status(meta) == ENOMEM
    results = _results(meta, "mmap")
    assert results[-1] == -ENOMEM
    granted = [r for r in results if r is not None and r > 0]
    assert len(granted) * 256 * MiB <= MAX_PROCESS_MEMORY


BRK_FOREVER = f"""
    xorl %edi, %edi
    movl $0xc, %eax
    syscall
    movq %rax, %rbx
again:
    addq $0x8000000, %rbx
    movq %rbx, %rdi
    movl $0xc, %eax
    syscall
    cmpq %rax, %rbx
    je again
    xorl %eax, %eax
{EXIT_WITH_MINUS_RAX}
"""


@pytest.mark.bomb
def test_growing_the_break_in_a_loop_stops_at_the_limit(tmp_path: Path) -> None:
    meta = _run(tmp_path, BRK_FOREVER)
    assert _exit_status(meta) == 0
    breaks = _results(meta, "brk")
    assert breaks[-1] == breaks[-2]  # refused: the break did not move
    assert len(breaks) < MAX_PROCESS_MEMORY // 0x8000000 + 2


MANY_MAPPINGS = f"""
loop:
{mmap(0x1000)}
    cmpq $-4096, %rax
    ja done
    movb $1, (%rax)
    jmp loop
done:
{EXIT_WITH_MINUS_RAX}
"""


@pytest.mark.bomb
def test_mappings_are_bounded_in_number(tmp_path: Path) -> None:
    """2,000 mappings took 24 s (a sort of every region at each call, and
    unicorn's own cost per mapping); now the process map is bisected and
    mmap past MAX_MAPPINGS mappings is -ENOMEM."""
    meta = _run(tmp_path, MANY_MAPPINGS, max_steps=200_000)
    assert _exit_status(meta) == ENOMEM
    granted = [r for r in _results(meta, "mmap") if r is not None and r > 0]
    assert MAX_MAPPINGS - 10 < len(granted) < MAX_MAPPINGS
