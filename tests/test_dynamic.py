"""Dynamically linked programs, as `gcc -g` and `rustc -g` build them.

The loader (the host's ld-linux-x86-64.so.2) runs emulated and maps the
libraries through the read-only file view (record/linux/files.py); the tutorial's
program gives the same verdicts as its static builds (tests/test_elf.py).
The programs are compiled at test time; without gcc or rustc the tests skip.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import unicorn.x86_const as x86

from stacktrace_lab.analysis.check import check
from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.errors import BadInput
from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.linux.dynamic import INTERP_TOP
from stacktrace_lab.record.linux.elf import PIE_BASE, elf_image, load_elf, placement
from stacktrace_lab.record.linux.elf_front import describe_elf, record_elf
from stacktrace_lab.record.machine.machine import Machine
from stacktrace_lab.record.recorder import Recording, record_description
from stacktrace_lab.replay import replay
from stacktrace_lab.trace import load_trace
from stacktrace_lab.trace.format import SourceLine

LINE = "I LOVE WAKING UP ON A NEW STACK!\n"
BUILDS = ["c-dynamic", "rust-dynamic"]
AT_BASE, AT_ENTRY = 7, 9


def _need(build: str) -> None:
    why = compiler_missing(build)
    if why is not None:
        pytest.skip(f"cannot build the {build} example: {why}")


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dynamic-examples")
    return {b: build_example(b, out) for b in BUILDS if compiler_missing(b) is None}


@pytest.fixture(scope="module")
def recordings(
    programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Recording]:
    out = tmp_path_factory.mktemp("dynamic-traces")
    return {build: record_elf(p, out / f"{build}.parquet") for build, p in programs.items()}


def _build_c(directory: Path, name: str, source: str, *flags: str) -> Path:
    """`source` built with plain gcc (dynamically linked) as directory/name."""
    _need("c-dynamic")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.c").write_text(source)
    program = directory / name
    subprocess.run(
        ["gcc", "-g", "-O1", *flags, "-o", str(program), str(directory / f"{name}.c")], check=True
    )
    return program


# --- the tutorial's program: the same verdicts as the static builds ---------------------


@pytest.mark.parametrize("build", BUILDS)
def test_the_dynamic_build_finds_the_48_byte_stack_and_its_overflow(
    recordings: dict[str, Recording], build: str
) -> None:
    _need(build)
    trace = load_trace(recordings[build].path)
    meta = trace.metadata
    assert meta.stop.reason == "spin" and meta.stdout == LINE
    # Found through libc's calloc, hooked at its load address.
    (planted,) = derive_facts(trace).planted_returns
    stack = meta.region(str(planted.region))
    assert (stack.name, stack.kind, stack.size) == ("calloc_48", "stack", 48)
    assert planted.index == 32 and planted.target.split("+")[0].endswith("hello")
    # Printing overflows it, down to the heap's start (C: further, into the
    # program's last data page, reported apart as writes outside the stacks).
    heap = meta.region("heap")
    rsp = trace.table(["rsp"])["rsp"].to_numpy().astype(np.int64)
    below = rsp[(rsp < stack.base) & (rsp >= heap.base)]
    depth = int(stack.base - below.min())
    assert depth > 64
    result = check(trace).result("stack-bounds")
    assert not result.holds
    messages = [v.message for v in result.violations]
    assert any(f"48 bytes) overflows by {depth} bytes" in m for m in messages)


def test_the_loader_and_the_libraries_are_named(
    programs: dict[str, Path], recordings: dict[str, Recording]
) -> None:
    _need("c-dynamic")
    trace = load_trace(recordings["c-dynamic"].path)
    meta = trace.metadata
    libc_text = meta.region("libc.so.6 text")
    loader_text = meta.region("ld-linux-x86-64.so.2 text")
    assert libc_text.kind == loader_text.kind == "code"
    # The interpreter sits under INTERP_TOP; the libraries below it, where it mapped them.
    assert loader_text.top <= INTERP_TOP and libc_text.top <= loader_text.base
    for name in ("puts", "malloc", "calloc", "free"):
        assert libc_text.base <= meta.symbols[name] < libc_text.top, name
    # The run starts in the loader, and libc's puts runs (named in the rows).
    first_rip = int(trace.slice(0, 1, ["rip"])["rip"][0])
    assert loader_text.base <= first_rip < loader_text.top
    rips = trace.table(["rip"])["rip"].to_numpy()
    assert ((rips >= meta.symbols["puts"]) & (rips < meta.symbols["puts"] + 16)).any()
    # AT_BASE in the initial auxiliary vector says where the loader is.
    spec = describe_elf(programs["c-dynamic"], max_steps=1).spec
    rsp = spec.registers["rsp"]
    words = np.frombuffer(Machine(spec).read_or_zero(rsp, 1024), dtype="<u8")
    argc = int(words[0])
    auxv = words[argc + 2 :]  # past argv and its NULL
    auxv = auxv[int(np.flatnonzero(auxv == 0)[0]) + 1 :]  # past envp and its NULL
    pairs = dict(zip(auxv[0::2].tolist(), auxv[1::2].tolist(), strict=False))
    assert pairs[AT_BASE] == loader_text.base - 0x1000
    assert pairs[AT_ENTRY] == meta.symbols["_start"]
    assert spec.entry != pairs[AT_ENTRY]  # the run starts in the loader


def test_every_file_read_is_in_the_metadata_once(recordings: dict[str, Recording]) -> None:
    _need("c-dynamic")
    files = load_trace(recordings["c-dynamic"].path).metadata.options["files"]
    paths = [f["path"] for f in files]
    assert len(paths) == len(set(paths))
    assert "/etc/ld.so.cache" in paths
    libc = next(f for f in files if Path(f["path"]).name == "libc.so.6")
    data = Path(libc["path"]).read_bytes()
    assert libc["size"] == len(data) and libc["sha256"] == hashlib.sha256(data).hexdigest()


def test_re_recording_is_byte_identical_and_replay_confirms(
    programs: dict[str, Path], recordings: dict[str, Recording], tmp_path: Path
) -> None:
    _need("c-dynamic")
    rec = recordings["c-dynamic"]
    again = record_elf(programs["c-dynamic"], tmp_path / "again.parquet")
    assert again.path.read_bytes() == rec.path.read_bytes()
    result = replay(load_trace(rec.path))
    assert result.matches and result.steps_compared == rec.metadata.steps


def test_from_main_skips_the_loader(
    programs: dict[str, Path], recordings: dict[str, Recording], tmp_path: Path
) -> None:
    _need("rust-dynamic")
    full = recordings["rust-dynamic"]
    rec = record_elf(programs["rust-dynamic"], tmp_path / "from.parquet", from_symbol="main")
    meta = rec.metadata
    assert meta.start is not None and meta.start.symbol == "main"
    assert meta.start.step + meta.steps == full.metadata.steps
    assert meta.stop.reason == "spin" and meta.stdout == LINE
    trace = load_trace(rec.path)
    assert int(trace.slice(0, 1, ["rip"])["rip"][0]) == meta.symbols["main"]
    assert meta.region("calloc_48").size == 48
    assert replay(trace).matches


@pytest.mark.parametrize("build", BUILDS)
def test_from_main_records_the_same_from_the_discovery_pass_copy(
    programs: dict[str, Path], build: str, tmp_path: Path
) -> None:
    """`--from main` records from a copy of the discovery pass's machine at the
    program's entry (Machine.fork: the loader runs once); the same description
    recorded from a fresh machine that runs the loader again writes the same bytes."""
    _need(build)
    forked = describe_elf(programs[build], from_symbol="main")
    assert forked.prepared is not None
    assert int(forked.prepared.uc.reg_read(x86.UC_X86_REG_RIP)) == load_elf(programs[build]).entry
    fresh = replace(forked, prepared=None)
    a = record_description(forked, tmp_path / "forked.parquet")
    b = record_description(fresh, tmp_path / "fresh.parquet")
    assert forked.prepared is None  # used once
    assert a.metadata.start == b.metadata.start and a.metadata.start is not None
    assert a.metadata.start.step > 80_000  # the loader's instructions are counted
    assert a.path.read_bytes() == b.path.read_bytes()


def test_placement_is_what_reading_the_object_says(
    programs: dict[str, Path], recordings: dict[str, Recording]
) -> None:
    """Libraries are placed from their program headers (elf.placement) before they are
    read, once, where they go: the same span and kind as reading them at PIE_BASE."""
    _need("c-dynamic")
    libraries = [Path(f["path"]) for f in recordings["c-dynamic"].metadata.options["files"]]
    objects = [p for p in [*programs.values(), *libraries] if p.read_bytes()[:4] == b"\x7fELF"]
    assert len(objects) >= 3  # the programs, the loader, libc
    for path in objects:
        raw = path.read_bytes()
        image = elf_image(path, raw, hashlib.sha256(raw).hexdigest(), PIE_BASE)
        base = PIE_BASE if image.pie else 0
        placed = placement(raw)
        assert placed is not None
        assert (placed.pie, placed.interp) == (image.pie, image.interp is not None)
        assert placed.low == min(s.vaddr for s in image.segments) - base
        assert placed.high == max(s.vaddr + s.memsz for s in image.segments) - base
    c_program = programs["c-dynamic"].read_bytes()
    assert placement(c_program[:40]) is None
    assert placement(b"\x7fELF" + bytes(60)) is None  # no class, machine, headers
    big_endian = c_program[:5] + b"\x02" + c_program[6:]
    assert placement(big_endian) is None


@pytest.mark.parametrize("start", ["main", "gt_switch", "hello"])
def test_from_a_function_names_the_stack_as_the_whole_recording(
    programs: dict[str, Path],
    recordings: dict[str, Recording],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start: str,
) -> None:
    """The start-up before `--from` is watched for allocations once the loader has
    mapped libc: the stack main calloc'd is `calloc_48` (`calloc(48) in main`) as in
    the whole recording, not a heap chunk read from headers (`chunk_56`), whichever
    function the trace starts at; the C core and the Python hooks agree."""
    from tests.test_native_core import both_ways

    _need("c-dynamic")
    whole = recordings["c-dynamic"].metadata.region("calloc_48")
    program = programs["c-dynamic"]
    rec = both_ways(monkeypatch, tmp_path, lambda out: record_elf(program, out, from_symbol=start))
    stack = rec.metadata.region("calloc_48")
    assert (stack.base, stack.size, stack.label) == (whole.base, 48, "calloc(48) in main")
    assert rec.metadata.start is not None
    assert rec.metadata.start.step + rec.metadata.steps == recordings["c-dynamic"].metadata.steps


def test_replay_refuses_when_a_file_read_has_changed(tmp_path: Path, capsys) -> None:
    program = _build_c(tmp_path / "bin", "cat_config", CAT_CONFIG_C)
    config = tmp_path / "bin" / "config.txt"  # in the program's directory: readable
    config.write_text("colour = green\n")
    out = tmp_path / "t.parquet"
    assert main(["record", str(program), "-o", str(out), "--", "config.txt"]) == 0
    meta = load_trace(out).metadata
    assert meta.stdout == "colour = green\n"
    assert str(config.resolve()) in [f["path"] for f in meta.options["files"]]
    capsys.readouterr()
    config.write_text("colour = red\n")
    assert main(["replay", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config.resolve()) in err and "differs" in err


CAT_CONFIG_C = r"""
#include <stdio.h>

int main(int argc, char **argv)
{
    char line[256];
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    while (fgets(line, sizeof line, f))
        fputs(line, stdout);
    fclose(f);
    return 0;
}
"""


# --- the host is never touched --------------------------------------------------------

HOSTILE_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static void report(const char *what, long rc)
{
    printf("%s %s\n", what, rc >= 0 ? "ok" : errno == EACCES ? "EACCES"
                                         : errno == ENOENT ? "ENOENT" : "other");
}

int main(int argc, char **argv)
{
    char victim[512], other[512];
    snprintf(victim, sizeof victim, "%s/victim.txt", argv[1]);
    snprintf(other, sizeof other, "%s/new.txt", argv[1]);
    report("create", open(other, O_WRONLY | O_CREAT | O_TRUNC, 0644));
    report("open-rw", open(victim, O_RDWR));
    report("open-append", open(victim, O_WRONLY | O_APPEND));
    report("read", open(victim, O_RDONLY));
    report("unlink", unlink(victim));
    report("rename", rename(victim, other));
    snprintf(other, sizeof other, "%s/sub", argv[1]);
    report("mkdir", mkdir(other, 0755));
    report("rmdir", rmdir(argv[1]));
    report("truncate", truncate(victim, 0));
    report("chmod", chmod(victim, 0777));
    report("symlink", symlink(victim, other));
    report("passwd", open("/etc/passwd", O_RDONLY));
    return 0;
}
"""
REFUSED = {
    "create": "EACCES",
    "open-rw": "EACCES",
    "open-append": "EACCES",
    "unlink": "EACCES",
    "rename": "EACCES",
    "mkdir": "EACCES",
    "rmdir": "EACCES",
    "truncate": "EACCES",
    "chmod": "EACCES",
    "symlink": "EACCES",
    "passwd": "ENOENT",
}


def _tree(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(directory)): (
            p.read_bytes() if p.is_file() else b"",
            p.stat().st_mode,
            p.stat().st_mtime_ns,
        )
        for p in sorted(directory.rglob("*"))
    }


@pytest.mark.parametrize("allow", [False, True])
def test_a_hostile_program_changes_nothing_on_the_host(tmp_path: Path, allow: bool, capsys) -> None:
    program = _build_c(tmp_path / "bin", "hostile", HOSTILE_C)
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "victim.txt").write_text("precious\n")
    before = _tree(victim_dir)
    out = tmp_path / "t.parquet"
    allow_read = ["--allow-read", str(victim_dir)] if allow else []
    assert main(["record", str(program), "-o", str(out), *allow_read, "--", str(victim_dir)]) == 0
    assert _tree(victim_dir) == before
    trace = load_trace(out)
    said = dict(line.split() for line in trace.metadata.stdout.splitlines())
    # Reading outside the view is ENOENT; --allow-read widens it, and only for reading.
    assert said == {**REFUSED, "read": "ok" if allow else "ENOENT"}
    calls = {c.name for c in trace.syscalls() if c.result == -13}
    assert {"openat", "unlink", "rename", "mkdir", "rmdir", "chmod", "symlink"} <= calls


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("fork();", "clone: a new process"),
        ('execl("/bin/true", "true", (char *)0);', "execve: another program"),
    ],
)
def test_fork_and_execve_stop_the_run(tmp_path: Path, body: str, detail: str) -> None:
    source = f"#include <unistd.h>\nint main(void) {{ {body} return 0; }}\n"
    program = _build_c(tmp_path, "spawn", source)
    meta = record_elf(program, tmp_path / "t.parquet").metadata
    assert meta.stop.reason == "unsupported" and detail in meta.stop.detail


# --- a coroutine program on glibc's contexts ------------------------------------------

COROUTINE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

static ucontext_t main_ctx, co_ctx;

static void coroutine(void)
{
    for (int i = 0; i < 3; i++) {
        printf("co %d\n", i);
        swapcontext(&co_ctx, &main_ctx);
    }
}

int main(void)
{
    size_t size = 64 * 1024;
    char *stack = malloc(size);
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = stack;
    co_ctx.uc_stack.ss_size = size;
    co_ctx.uc_link = &main_ctx;
    makecontext(&co_ctx, coroutine, 0);
    for (int i = 0; i < 3; i++) {
        swapcontext(&main_ctx, &co_ctx);
        printf("main %d\n", i);
    }
    free(stack);
    return 0;
}
"""


def test_a_swapcontext_coroutine_program_records_and_checks_clean(tmp_path: Path) -> None:
    program = _build_c(tmp_path, "coroutine", COROUTINE_C)
    native = subprocess.run([str(program)], capture_output=True, text=True, check=True)
    trace = load_trace(record_elf(program, tmp_path / "t.parquet").path)
    meta = trace.metadata
    assert meta.stop.reason == "exit" and meta.stdout == native.stdout
    assert meta.region("malloc_65536").kind == "stack"
    facts = derive_facts(trace)
    assert len(facts.planted_returns) == 6  # one entry, five resumes
    assert check(trace, facts).holds


@pytest.mark.silicon
def test_silicon_check_compares_a_dynamic_program(tmp_path: Path, capsys) -> None:
    """As a static one (docs/silicon.md); a missing interpreter is one line."""
    program = _build_c(tmp_path, "spawn", "int main(void) { return 3; }\n")
    assert main(["silicon-check", str(program)]) == 0
    assert "agree on all" in capsys.readouterr().out
    source = "int main(void) { return 0; }\n"
    elsewhere = _build_c(tmp_path, "elsewhere", source, "-Wl,-dynamic-linker,/nowhere/ld.so")
    assert main(["silicon-check", str(elsewhere)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/nowhere/ld.so" in err


def test_a_missing_interpreter_is_one_line(tmp_path: Path, capsys) -> None:
    source = "int main(void) { return 0; }\n"
    program = _build_c(tmp_path, "elsewhere", source, "-Wl,-dynamic-linker,/nowhere/ld.so")
    out = tmp_path / "t.parquet"
    assert main(["record", str(program), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/nowhere/ld.so" in err and not out.exists()
    assert os.path.exists(program)


def test_diff_names_a_library_that_changed(recordings: dict[str, Recording]) -> None:
    from dataclasses import replace

    from stacktrace_lab.diff.metadata import compare_metadata

    _need("c-dynamic")
    meta = load_trace(recordings["c-dynamic"].path).metadata
    files = [dict(f) for f in meta.options["files"]]
    libc = next(f for f in files if Path(f["path"]).name == "libc.so.6")
    libc["sha256"] = "0" * 64
    other = replace(meta, options={**meta.options, "files": files})
    deltas, _notes = compare_metadata(meta, other, ())
    (delta,) = [d for d in deltas if d.field == "options"]
    assert delta.lines == (f"files: {libc['path']} sha256 {libc_sha(meta)} -> {'0' * 16}",)


def libc_sha(meta) -> str:  # type: ignore[no-untyped-def]
    return next(f["sha256"] for f in meta.options["files"] if f["path"].endswith("libc.so.6"))[:16]


# --- the file view alone -------------------------------------------------------------


def test_the_view_follows_links_only_into_itself(tmp_path: Path) -> None:
    from stacktrace_lab.record.linux.files import FileView

    program_dir = tmp_path / "bin"
    program_dir.mkdir()
    (program_dir / "data.txt").write_text("mine\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    (program_dir / "escape").symlink_to(secret)
    view = FileView(program_dir)
    found = view.lookup("/stacktrace-lab/data.txt")
    assert not isinstance(found, int) and found.data == b"mine\n"
    assert view.lookup("data.txt") == found  # relative to the working directory
    assert view.lookup("/stacktrace-lab/escape") == -2  # ENOENT: the target is outside
    assert view.lookup("/stacktrace-lab/../secret.txt") == -2
    assert view.lookup(str(secret)) == -2
    assert view.lookup("/stacktrace-lab") == -21  # EISDIR
    wider = FileView(program_dir, (secret,))
    assert not isinstance(wider.lookup(str(secret)), int)
    assert [f["path"] for f in view.metadata()] == [str((program_dir / "data.txt").resolve())]


def test_the_view_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stacktrace_lab.record.linux import files

    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(bytes(100 + i))
    monkeypatch.setattr(files, "MAX_FILES", 2)
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 101)
    view = files.FileView(tmp_path)
    view.lookup("f0")
    with pytest.raises(files.FileLimit, match="larger than 101 bytes"):
        view.lookup("f2")
    view.lookup("f1")
    assert view.lookup("f0") is view.files[str((tmp_path / "f0").resolve())]  # read once
    (tmp_path / "f3").write_bytes(b"x")
    with pytest.raises(files.FileLimit, match="more than 2 files"):
        view.lookup("f3")


# --- a library of the program's own, stripped, with a separate debug file ---------------

GREET_C = r"""
#include <stdio.h>

static int shout(const char *who)
{
    return printf("HELLO %s\n", who);
}

int greet(const char *who)
{
    return shout(who) > 0;
}
"""
GREET_MAIN_C = r"""
int greet(const char *who);
int main(void) { return !greet("WORLD"); }
"""


@pytest.mark.parametrize("found_by", ["build-id", "debuglink"])
def test_a_stripped_library_is_named_from_its_debug_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, found_by: str
) -> None:
    import shutil

    from stacktrace_lab.record.linux import dynamic

    _need("c-dynamic")
    if shutil.which("objcopy") is None or shutil.which("strip") is None:
        pytest.skip("needs binutils (objcopy, strip)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "greet.c").write_text(GREET_C)
    (bin_dir / "main.c").write_text(GREET_MAIN_C)
    library = bin_dir / "libgreet.so"

    def run(*command: str) -> None:
        subprocess.run(command, check=True, cwd=bin_dir)

    run("gcc", "-g", "-O0", "-shared", "-fPIC", "greet.c", "-o", "libgreet.so")
    # Found by the loader in the program's own directory: $ORIGIN is /stacktrace-lab.
    run("gcc", "-g", "main.c", "-L.", "-lgreet", "-Wl,-rpath,$ORIGIN", "-o", "greet")
    build_id = dynamic.build_id(library)
    assert build_id is not None
    if found_by == "build-id":
        # As Debian's -dbg packages install them: /usr/lib/debug/.build-id/ab/cdef....debug
        debug = tmp_path / "debug" / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    else:
        # As `objcopy --add-gnu-debuglink` names it: in .debug/ next to the library.
        debug = bin_dir / ".debug" / "libgreet.so.debug"
    debug.parent.mkdir(parents=True)
    run("objcopy", "--only-keep-debug", "libgreet.so", str(debug))
    run("strip", "--strip-all", "libgreet.so")
    if found_by == "debuglink":
        run("objcopy", f"--add-gnu-debuglink={debug}", "libgreet.so")
    dynamic.build_id.cache_clear()
    dynamic.debug_link.cache_clear()
    monkeypatch.setattr(dynamic, "DEBUG_ROOT", tmp_path / "debug")

    trace = load_trace(record_elf(bin_dir / "greet", tmp_path / "t.parquet").path)
    meta = trace.metadata
    assert meta.stdout == "HELLO WORLD\n" and meta.stop.detail == "exit_group(0)"
    assert str(library.resolve()) in [f["path"] for f in meta.options["files"]]
    assert str(debug) not in [
        f["path"] for f in meta.options["files"]
    ]  # the tool's, not the program's
    text = meta.region("libgreet.so text")
    assert text.base <= meta.symbols["shout"] < text.top  # a static function: .symtab only
    rips = trace.table(["rip"])["rip"].to_numpy()
    assert (rips == meta.symbols["shout"]).any()
    # The stripped library's source lines, from the debug file.
    sources = set(trace.table(["source"])["source"].drop_null().to_pylist())
    assert {"greet.c:6", "greet.c:11"} <= sources, sorted(sources)
    # Without it, the library has names from .dynsym and no lines.
    debug.unlink()
    dynamic.build_id.cache_clear()
    bare = load_trace(record_elf(bin_dir / "greet", tmp_path / "bare.parquet").path)
    assert not {
        s for s in bare.table(["source"])["source"].drop_null().to_pylist() if "greet.c" in s
    }


def test_libc_frames_have_source_lines_from_its_debug_file(
    programs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stacktrace_lab.record.linux import dynamic

    _need("c-dynamic")
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve()
    if not libc.is_file() or dynamic.debug_file(libc) is None:
        pytest.skip("libc's separate debug file is not installed (Debian: libc6-dbg)")
    out = tmp_path / "t.parquet"
    assert main(["record", str(programs["c-dynamic"]), "--from", "main", "-o", str(out)]) == 0
    trace = load_trace(out)
    meta = trace.metadata
    table = trace.table(["rip", "source"])
    rips = table["rip"].to_numpy()
    sources = table["source"].to_pylist()
    libc_text = meta.region("libc.so.6 text")
    in_libc = [s for r, s in zip(rips, sources, strict=True) if libc_text.contains(int(r))]
    named = [s for s in in_libc if s is not None]
    # glibc's own files: puts is ioputs.c, calloc and malloc are malloc.c.
    assert any(s.startswith("ioputs.c:") for s in named)
    assert any(s.startswith("malloc.c:") for s in named)
    assert len(named) > len(in_libc) // 2
    # A backtrace in libc shows them, down to main.
    capsys.readouterr()
    assert main(["show", str(out), "--at", "_int_malloc", "--context", "0"]) == 0
    shown = capsys.readouterr().out
    assert "_int_malloc" in shown and "malloc.c:" in shown and "first_switch.c:" in shown


def _reference_line_table(path: Path, load_base: int) -> tuple[SourceLine, ...]:
    """The whole line table as pyelftools decodes it (what elf.line_table returned
    before record/linux/dwarf_lines.py): the oracle for the small decoder."""
    from elftools.elf.elffile import ELFFile

    from stacktrace_lab.record.linux.dwarf_lines import file_names

    rows: dict[int, SourceLine] = {}
    with path.open("rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            program = dwarf.line_program_for_CU(cu)
            if program is None:
                continue
            files = file_names(program)
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


@pytest.mark.parametrize("build", BUILDS)
def test_lines_read_by_unit_are_the_whole_tables(programs: dict[str, Path], build: str) -> None:
    """The decoder gives pyelftools' table, and asking one address at a time (only
    the units that cover it) gives the whole table's answer at every instruction."""
    from stacktrace_lab.record.linux.dwarf_lines import LineIndex
    from stacktrace_lab.record.linux.elf import load_elf

    _need(build)
    path = programs[build]
    image = load_elf(path)
    whole = LineIndex(path, image.load_base).all_rows()
    assert whole == _reference_line_table(path, image.load_base)
    addrs = [row.addr for row in whole]
    lazy = LineIndex(path, image.load_base)
    for segment in (s for s in image.segments if "x" in s.perms):
        for addr in range(segment.vaddr, segment.vaddr + segment.memsz):
            k = bisect.bisect_right(addrs, addr) - 1
            assert lazy.nearest(addr) == (whole[k] if k >= 0 else None), hex(addr)


def test_libc_debug_file_units_decode_as_pyelftools_does() -> None:
    """Every 40th unit of glibc's debug file (DWARF 5, compressed sections): its
    header and its rows."""
    from elftools.elf.elffile import ELFFile

    from stacktrace_lab.record.linux import dynamic
    from stacktrace_lab.record.linux.dwarf_lines import LineIndex, decode, file_names, unit_of

    libc = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve()
    debug = dynamic.debug_file(libc) if libc.is_file() else None
    if debug is None:
        pytest.skip("libc's separate debug file is not installed (Debian: libc6-dbg)")
    index = LineIndex(debug, 0)
    with debug.open("rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        section = dwarf.debug_line_sec.stream.getvalue()
        for i, cu in enumerate(dwarf.iter_CUs()):
            program = dwarf.line_program_for_CU(cu) if i % 40 == 0 else None
            if program is None:
                continue
            files = file_names(program)
            # The header read directly is pyelftools' (file names included).
            assert index._header(cu.cu_offset) == unit_of(program)
            expected: dict[int, tuple[int, int]] = {}
            for entry in program.get_entries():
                state = entry.state
                if state is not None and state.end_sequence:
                    expected.setdefault(state.address, (0, 0))
                elif state is not None and state.line > 0:
                    expected[state.address] = (state.file, state.line)
            header = unit_of(program)
            assert decode(section, header, 0, 8) == expected, files


def test_a_library_with_its_own_dwarf_gives_source_lines(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _need("c-dynamic")
    (bin_dir / "greet.c").write_text(GREET_C)
    (bin_dir / "main.c").write_text(GREET_MAIN_C)
    for command in (
        ["gcc", "-g", "-O0", "-shared", "-fPIC", "greet.c", "-o", "libgreet.so"],
        ["gcc", "-g", "main.c", "-L.", "-lgreet", "-Wl,-rpath,$ORIGIN", "-o", "greet"],
    ):
        subprocess.run(command, check=True, cwd=bin_dir)
    trace = load_trace(record_elf(bin_dir / "greet", tmp_path / "t.parquet").path)
    sources = set(trace.table(["source"])["source"].drop_null().to_pylist())
    assert {"greet.c:6", "greet.c:11"} <= sources, sorted(sources)


def test_replay_reads_only_bounded_regular_files_a_trace_names(tmp_path: Path) -> None:
    from stacktrace_lab.record.linux.files import changed_files

    data = tmp_path / "lib.so"
    data.write_bytes(b"abc")
    good = {"path": str(data), "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
    assert changed_files([good]) is None
    assert "differs" in str(changed_files([{**good, "sha256": "0" * 64}]))
    assert "differs" in str(changed_files([{**good, "size": 4}]))
    # A device named in a (hostile) trace is not read: /dev/zero would never end.
    assert "differs" in str(changed_files([{**good, "path": "/dev/zero"}]))
    assert "not on this machine" in str(changed_files([{**good, "path": str(tmp_path / "no")}]))
    assert "malformed" in str(changed_files(["/etc/passwd"]))


# --- directories: opendir/readdir, and openat from a directory descriptor ------------

DIRS_C = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static void show(const char *what, int fd)
{
    char buf[64] = {0};
    if (fd < 0) {
        printf("%s %s\n", what, errno == ENOENT ? "ENOENT" : errno == EACCES ? "EACCES"
                                : errno == ENOTDIR ? "ENOTDIR" : "other");
        return;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    printf("%s %s", what, n > 0 ? buf : "(empty)\n");
    close(fd);
}

int main(void)
{
    DIR *dir = opendir(".");
    if (dir == NULL)
        return 1;
    int count = 0;
    for (struct dirent *e; (e = readdir(dir)) != NULL; count++)
        if (e->d_name[0] != '.')
            printf("entry %s %s\n", e->d_name,
                   e->d_type == DT_DIR ? "dir" : e->d_type == DT_REG ? "file" : "other");
    rewinddir(dir);
    int again = 0;
    while (readdir(dir) != NULL)
        again++;
    printf("entries %d again %d\n", count, again);
    closedir(dir);

    int sub = open("sub", O_RDONLY | O_DIRECTORY);
    struct stat st;
    printf("fstat %s\n", fstat(sub, &st) == 0 && S_ISDIR(st.st_mode) ? "dir" : "not a dir");
    show("sub/c.txt", openat(sub, "c.txt", O_RDONLY));
    show("sub/a.txt", openat(sub, "a.txt", O_RDONLY));
    show("sub/../a.txt", openat(sub, "../a.txt", O_RDONLY));
    show("a.txt-as-dir", open("a.txt", O_RDONLY | O_DIRECTORY));
    printf("fstatat %s\n", fstatat(sub, "c.txt", &st, 0) == 0 && st.st_size == 6 ? "ok" : "wrong");
    return 0;
}
"""


def _dirs_tree(directory: Path) -> Path:
    program = _build_c(directory, "dirs", DIRS_C)
    (directory / "a.txt").write_text("alpha\n")
    (directory / "b.txt").write_text("beta\n")
    (directory / "sub").mkdir()
    (directory / "sub" / "c.txt").write_text("gamma\n")
    return program


def test_opendir_readdir_and_openat_from_a_directory(tmp_path: Path) -> None:
    program = _dirs_tree(tmp_path / "bin")
    native = subprocess.run(
        [str(program)], cwd=program.parent, capture_output=True, text=True, check=True
    ).stdout
    trace = load_trace(record_elf(program, tmp_path / "t.parquet").path)
    meta = trace.metadata
    assert meta.stop.detail == "exit_group(0)"
    emulated = meta.stdout.splitlines()
    # The same lines as the real run; the entries in name order (the real
    # run's order is the file system's).
    entries = [line for line in emulated if line.startswith("entry ")]
    assert entries == sorted(line for line in native.splitlines() if line.startswith("entry "))
    assert entries == sorted(entries) and "entry sub dir" in entries
    assert emulated[len(entries) :] == native.splitlines()[len(entries) :]
    assert "sub/c.txt gamma" in emulated  # relative to the descriptor, not the program's directory
    assert "sub/a.txt ENOENT" in emulated and "sub/../a.txt alpha" in emulated
    # The listing is recorded (a hash of the names and types), the unlisted sub/ is not.
    listed = {f["path"]: f for f in meta.options["files"] if f.get("kind") == "directory"}
    assert list(listed) == [str(program.parent.resolve())]
    # Replay confirms every step; a file added to the directory is refused by name.
    assert replay(trace).matches
    (program.parent / "new.txt").write_text("late\n")
    with pytest.raises(BadInput, match=f"{program.parent.resolve()} lists other files"):
        replay(trace)


#: Its own directory listed twice: by readdir (getdents64) and by the legacy
#: getdents call, whose records carry the type in their last byte; a buffer
#: of 64 bytes makes each call give a few entries at a time.
LISTING_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
struct linux_dirent {
    unsigned long d_ino;
    unsigned long d_off;
    unsigned short d_reclen;
    char d_name[];
};
static const char *kind(int t) {
    return t == DT_DIR ? "dir" : t == DT_REG ? "file" : t == DT_LNK ? "link" : "other";
}
int main(void) {
    DIR *dir = opendir(".");
    if (dir == NULL) return 1;
    for (struct dirent *e; (e = readdir(dir)) != NULL;)
        printf("readdir %s %s\n", e->d_name, kind(e->d_type));
    closedir(dir);
    int fd = open(".", O_RDONLY | O_DIRECTORY);
    char buf[64];
    long n, calls = 0;
    while ((n = syscall(SYS_getdents, fd, buf, sizeof buf)) > 0) {
        calls++;
        for (long at = 0; at < n;) {
            struct linux_dirent *d = (struct linux_dirent *)(buf + at);
            printf("getdents %s %s\n", d->d_name, kind(buf[at + d->d_reclen - 1]));
            at += d->d_reclen;
        }
    }
    printf("end %ld %s\n", n, calls > 1 ? "in pieces" : "at once");
    return 0;
}
"""


def test_a_program_lists_its_own_directory_with_getdents_and_getdents64(tmp_path: Path) -> None:
    program = _build_c(tmp_path / "bin", "listing", LISTING_C)
    for name in ("b.txt", "a.txt", "zz-long-name-of-a-file.txt"):
        (program.parent / name).write_text(name)
    (program.parent / "sub").mkdir()
    (program.parent / "to-a").symlink_to("a.txt")
    native = subprocess.run(
        [str(program)], cwd=program.parent, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    first = record_elf(program, tmp_path / "one.parquet").path
    emulated = load_trace(first).metadata.stdout.splitlines()
    # The same entries with the same types (the host's order is its file system's).
    assert sorted(emulated) == sorted(native)
    assert "getdents to-a link" in emulated and "getdents sub dir" in emulated
    for call in ("readdir", "getdents"):
        names = [line.split()[1] for line in emulated if line.startswith(call)]
        assert names == [".", "..", *sorted(names[2:])]  # sorted by name
    assert emulated[-1] == "end 0 in pieces"
    # Recorded twice, the same bytes.
    second = record_elf(program, tmp_path / "two.parquet").path
    assert first.read_bytes() == second.read_bytes()


HOSTILE_DIRS_C = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static void report(const char *what, long rc)
{
    printf("%s %s\n", what, rc >= 0 ? "ok" : errno == EACCES ? "EACCES"
                                         : errno == ENOENT ? "ENOENT" : "other");
}

int main(void)
{
    int here = open(".", O_RDONLY | O_DIRECTORY);
    report("shadow", openat(here, "../../../../../../etc/shadow", O_RDONLY));
    report("passwd", openat(here, "../../../../../../etc/passwd", O_RDONLY));
    report("link-to-file", openat(here, "passwd-link", O_RDONLY));
    report("link-to-dir", openat(here, "etc-link/passwd", O_RDONLY));
    report("opendir-link", opendir("etc-link") ? 0 : -1);
    report("opendir-root", opendir("/") ? 0 : -1);
    report("opendir-etc", opendir("/etc") ? 0 : -1);
    report("stat-shadow", fstatat(here, "../../../../../../etc/shadow", &(struct stat){0}, 0));
    report("create", openat(here, "new.txt", O_WRONLY | O_CREAT, 0644));
    report("unlinkat", unlinkat(here, "victim.txt", 0));
    report("mkdirat", mkdirat(here, "newdir", 0755));
    report("renameat", renameat(here, "victim.txt", here, "moved.txt"));
    return 0;
}
"""


def test_directory_descriptors_do_not_lead_out_of_the_view(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    program = _build_c(bin_dir, "hostile_dirs", HOSTILE_DIRS_C)
    (bin_dir / "victim.txt").write_text("precious\n")
    (bin_dir / "passwd-link").symlink_to("/etc/passwd")
    (bin_dir / "etc-link").symlink_to("/etc")
    before = _tree(bin_dir)
    meta = record_elf(program, tmp_path / "t.parquet").metadata
    assert _tree(bin_dir) == before
    said = dict(line.split() for line in meta.stdout.splitlines())
    assert said == {
        **dict.fromkeys(
            ["shadow", "passwd", "link-to-file", "link-to-dir", "opendir-link"], "ENOENT"
        ),
        **dict.fromkeys(["opendir-root", "opendir-etc", "stat-shadow"], "ENOENT"),
        **dict.fromkeys(["create", "unlinkat", "mkdirat", "renameat"], "EACCES"),
    }
    assert not any(
        f["path"].startswith("/etc/") and f["path"] != "/etc/ld.so.cache"
        for f in meta.options["files"]
    )
