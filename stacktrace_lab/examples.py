"""Building the tutorial's program (examples/ in a checkout) with gcc and rustc.

Used by `stacktrace-lab demo --rust` and `demo --example NAME`, the tests and
benchmarks/bench_elf.py.
The build commands are the ones examples/README.md gives; nothing here is
needed to record a program you built yourself.

The sources ship with the package: stacktrace_lab/examples_data/ holds
symlinks to examples/ in the checkout, and a wheel (a plain `pip install .`)
stores the files they point to, so the demo works from any install.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

#: The tutorial's sources, installed with the package (in a checkout: links to examples/).
EXAMPLES = Path(__file__).resolve().parent / "examples_data"
RUST_SOURCE = EXAMPLES / "first_switch.rs"
C_SOURCE = EXAMPLES / "first_switch.c"
#: Three coroutines: two on a hand-written switch, one on glibc's ucontext.
COROUTINES_SOURCE = EXAMPLES / "three_coroutines.c"

#: The builds, by name: the compiler and its flags (the output path follows -o).
BUILDS: dict[str, tuple[str, ...]] = {
    # rustc's default on the gnu target with crt-static is a static-pie.
    "rust-static-pie": ("rustc", "-O", "-g", "-C", "target-feature=+crt-static"),
    "rust-static-pie-O0": ("rustc", "-g", "-C", "target-feature=+crt-static"),
    "rust-static": (
        "rustc", "-O", "-g", "-C", "target-feature=+crt-static", "-C", "relocation-model=static",
    ),
    "c-static": ("gcc", "-static", "-O0", "-g"),
    # As a new user builds them: dynamically linked against the host's libc.
    "c-dynamic": ("gcc", "-O0", "-g"),
    "rust-dynamic": ("rustc", "-g"),
    # -fno-toplevel-reorder keeps the three stacks and the gaps between them in order.
    "c-coroutines": ("gcc", "-static", "-O1", "-g", "-fno-toplevel-reorder"),
}  # fmt: skip
#: The source of each build that is not the tutorial's program.
SOURCES: dict[str, Path] = {"c-coroutines": COROUTINES_SOURCE}


@dataclass(frozen=True)
class Example:
    """A committed example report: what `stacktrace-lab demo --example NAME` builds,
    records from `main` and reports into reports/NAME/."""

    build: str
    what: str


#: The example reports in reports/, by name (the first-switch scenario is the default demo).
EXAMPLE_REPORTS: dict[str, Example] = {
    "first-switch-rust": Example(
        "rust-dynamic", "the tutorial's Rust program as a new user builds it: rustc -g, dynamic"
    ),
    "first-switch-c-dynamic": Example(
        "c-dynamic", "the tutorial's C program as a new user builds it: gcc -O0, dynamic"
    ),
    "three-coroutines": Example(
        "c-coroutines", "three coroutines in C: a hand-written switch and glibc's ucontext"
    ),
}


def source_of(build: str) -> Path:
    """The source file `build` compiles."""
    return SOURCES.get(build) or (RUST_SOURCE if BUILDS[build][0] == "rustc" else C_SOURCE)


def compiler_missing(build: str) -> str | None:
    """Why `build` cannot be made here (its compiler or source is missing), or None."""
    tool = BUILDS[build][0]
    if shutil.which(tool) is None:
        return f"{tool} is not installed"
    source = source_of(build)
    if not source.is_file():
        return f"{source} is not there (the package was installed without its examples)"
    return None


def build_example(build: str, out_dir: Path) -> Path:
    """Compile the example for `build` into `out_dir`; returns the program's path."""
    why = compiler_missing(build)
    if why is not None:
        raise BadInput(f"cannot build the {build} example: {why}")
    command = BUILDS[build]
    source = source_of(build)
    out_dir.mkdir(parents=True, exist_ok=True)
    program = out_dir / f"{source.stem}-{build}"
    # From the source's directory with its bare name: the debug information
    # then names `first_switch.rs`, not where this checkout happens to be.
    result = subprocess.run(
        [*command, "-o", str(program.resolve()), source.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=source.parent,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BadInput(f"{source}: {command[0]} failed: {last}")
    return program
