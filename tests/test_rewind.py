"""The recording on the discovery pass's machine, rewound (Machine.checkpoint/rewind).

A whole-program recording runs on the machine the discovery pass ran, put back
where the pass started, so unicorn's translations of the pass are used again.
Its trace must be the one a new machine records, byte for byte: the program's
memory, mappings, CPU, kernel and CPU model all come back as they were.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.core.hooks import PURE_PYTHON_ENV, native_core
from stacktrace_lab.record.linux.elf_front import describe_elf
from stacktrace_lab.record.machine.machine import Machine
from stacktrace_lab.record.recorder import RecordOptions, record_description

from .test_native_core import first_difference

pytestmark = pytest.mark.skipif(
    native_core() is None,
    reason=f"the C recording core is not built here (or {PURE_PYTHON_ENV}=1 turns it off)",
)


def _both_ways(program: Path, tmp_path: Path, **describe: object) -> tuple[Path, Path]:
    """The program recorded on the rewound machine, and on a new one."""
    rewound = describe_elf(program, **describe)  # type: ignore[arg-type]
    assert rewound.rewound is not None  # the discovery pass's machine, back at the start
    fresh = describe_elf(program, **describe)  # type: ignore[arg-type]
    fresh.rewound = None  # the recorder makes a new machine
    paths = tmp_path / "rewound.parquet", tmp_path / "fresh.parquet"
    record_description(rewound, paths[0], RecordOptions())
    record_description(fresh, paths[1], RecordOptions())
    return paths


def test_the_c_example_records_the_same_on_the_rewound_machine(tmp_path: Path) -> None:
    why = compiler_missing("c-static")
    if why:
        pytest.skip(why)
    program = build_example("c-static", tmp_path / "bin")
    rewound, fresh = _both_ways(program, tmp_path)
    assert first_difference(rewound, fresh) is None
    # --to: the stop at the symbol is honoured on code the pass translated without it.
    rewound, fresh = _both_ways(program, tmp_path, to_symbol="main")
    assert first_difference(rewound, fresh) is None


def _built(tmp_path: Path, source: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / "p.c").write_text(source)
    program = tmp_path / "p"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(program), str(tmp_path / "p.c")], check=True)
    return program


def test_a_stop_by_the_kernel_copy_is_the_copys(tmp_path: Path) -> None:
    """execve ends the run: the checkpoint's copy of the kernel stops itself (its
    handler was a closure over the kernel the pass ran, which a deep copy kept)."""
    source = '#include <unistd.h>\nint main(void) { execl("/bin/true", "true", (char *)0); }\n'
    program = _built(tmp_path, source)
    rewound, fresh = _both_ways(program, tmp_path)
    assert first_difference(rewound, fresh) is None
    description = describe_elf(program)
    recording = record_description(description, tmp_path / "again.parquet", RecordOptions())
    assert recording.metadata.stop.reason == "unsupported"
    assert "execve" in recording.metadata.stop.detail


def test_rewind_undoes_memory_mappings_and_the_kernel(tmp_path: Path) -> None:
    """A program that grows the heap, maps and unmaps memory and writes its data:
    after a run and a rewind the machine holds what a new one holds."""
    program = _built(
        tmp_path,
        "#include <stdlib.h>\n#include <string.h>\n#include <sys/mman.h>\n"
        "static char data[8192];\n"
        "int main(void) {\n"
        "  char *heap = malloc(1 << 20); memset(heap, 7, 1 << 20);\n"
        "  int rw = PROT_READ | PROT_WRITE;\n"
        "  char *map = mmap(0, 65536, rw, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);\n"
        "  memset(map, 3, 65536); munmap(map, 4096); mprotect(map + 8192, 4096, PROT_READ);\n"
        "  memset(data, 1, sizeof data);\n"
        "  return heap[5] + data[3];\n}\n",
    )
    description = describe_elf(program)
    machine = description.rewound
    assert machine is not None
    new = Machine(description.spec)
    assert list(machine.uc.mem_regions()) == list(new.uc.mem_regions())
    for begin, last, _perms in new.uc.mem_regions():
        assert machine.read(begin, last - begin + 1) == new.read(begin, last - begin + 1)
    assert machine.registers() == new.registers()
    assert machine.kernel.stop is None and not machine.kernel.stdout
    assert machine.kernel.process.brk == new.kernel.process.brk  # type: ignore[attr-defined]
    assert machine.kernel.process.mmaps == new.kernel.process.mmaps  # type: ignore[attr-defined]
    rewound, fresh = _both_ways(program, tmp_path)
    assert first_difference(rewound, fresh) is None
