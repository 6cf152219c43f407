"""Safe outputs (issue 16): regular files only, names inside their directory, whole or nothing."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab import safe_output
from stacktrace_lab.cli import main
from stacktrace_lab.safe_output import temp_prefix
from stacktrace_lab.trace import load_trace

from .conftest import scenario_toml

pytest_plugins = ["pytester"]

LOOP = scenario_toml("main:\n    incq %rax\n    pushq %rax\n    popq %rbx\n    jmp main\n")


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.removeprefix("stacktrace-lab: error: ").rstrip("\n")


def _char_device(path: Path) -> Path:
    """A character device like /dev/null (1, 3), made in tmp_path, never the system's."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a character device needs root (CAP_MKNOD)")
    return path


def test_record_refuses_to_replace_a_character_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device = _char_device(tmp_path / "null")
    assert main(["record", "first-switch", "-o", str(device)]) == 2
    assert _one_line(capsys) == (
        f"{device}: is a character device, not a regular file; refusing to replace it"
    )
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert os.listdir(tmp_path) == ["null"]


def test_record_refuses_a_fifo_a_socket_and_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)
    assert main(["record", "first-switch", "-o", str(fifo)]) == 2
    assert _one_line(capsys) == f"{fifo}: is a FIFO, not a regular file; refusing to replace it"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)

    import socket

    sock_path = tmp_path / "s.parquet"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert main(["record", "first-switch", "-o", str(sock_path)]) == 2
        assert "is a socket, not a regular file" in _one_line(capsys)

    directory = tmp_path / "dir.parquet"
    directory.mkdir()
    assert main(["record", "first-switch", "-o", str(directory)]) == 2
    assert _one_line(capsys) == (
        f"stacktrace-lab record: Invalid value for '-o' / '--output': File '{directory}' "
        "is a directory. (see 'stacktrace-lab record --help')"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dir.parquet",
        "fifo.parquet",
        "s.parquet",
    ]


def test_report_refuses_a_fifo_or_device_among_its_files(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    out.mkdir()
    os.mkfifo(out / "report.md")
    assert main(["report", str(first_switch_trace), "-o", str(out)]) == 2
    assert _one_line(capsys) == (
        f"{out / 'report.md'}: is a FIFO, not a regular file; refusing to replace it"
    )
    assert os.listdir(out) == ["report.md"]  # nothing written before the refusal


def test_a_file_where_a_directory_should_be_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    target = afile / "t.parquet"
    assert main(["record", "first-switch", "-o", str(target)]) == 2
    assert _one_line(capsys) == f"{target}: cannot write: {afile} is not a directory"
    deeper = afile / "sub" / "t.parquet"
    assert main(["record", "first-switch", "-o", str(deeper)]) == 2
    assert _one_line(capsys) == f"{deeper}: cannot write: {afile} is not a directory"


@pytest.mark.parametrize("name", ["...parquet", "..parquet"])
def test_a_trace_stem_never_leaves_the_reports_directory(
    name: str,
    first_switch_trace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(first_switch_trace, name)
    stem = Path(name).stem
    assert main(["report", name]) == 2
    assert _one_line(capsys) == (
        f"{name}: the name {stem!r} cannot name a directory under reports/; give one with -o DIR"
    )
    assert sorted(os.listdir(tmp_path)) == [name]


def test_a_legal_250_byte_output_name_works(tmp_path: Path) -> None:
    name = "t" * 242 + ".parquet"
    assert len(name) == 250
    assert main(["record", "first-switch", "-o", str(tmp_path / name)]) == 0
    assert os.listdir(tmp_path) == [name]
    # A multi-byte name is cut at a character boundary: 255 bytes at most.
    prefix = temp_prefix("é" * 127, 255)
    assert len(prefix.encode()) + 8 + len(".tmp") <= 255 and prefix.endswith("é.")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real ENOSPC (errno 28) for a trace of a few hundred KiB."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_a_full_disk_names_the_file(
    full_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "loop.toml"
    scenario.write_text(LOOP)
    target = full_disk / "t.parquet"
    assert main(["record", str(scenario), "-o", str(target), "--max-steps", "200000"]) == 2
    assert _one_line(capsys) == f"{target}: cannot write: No space left on device (errno 28)"
    assert os.listdir(full_disk) == []


def _run_and_signal(argv: list[str], cwd: Path, delay: float) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "stacktrace_lab", *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=120)


def _timed(argv: list[str], cwd: Path) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "stacktrace_lab", *argv], cwd=cwd, capture_output=True
    )
    assert done.returncode in (0, 1), done.stderr  # report: 1 when an invariant fails
    return time.monotonic() - started


def test_sigterm_at_any_moment_leaves_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    """SIGTERM spread over a whole record and a whole report: never a temporary file,
    never a damaged target. `old` is a complete trace of another length."""
    (tmp_path / "loop.toml").write_text(LOOP)
    record = ["record", "loop.toml", "-o", "t.parquet", "--max-steps", "50000"]
    # A whole run, timed, then an old complete file of another length in its place.
    duration = _timed(record, tmp_path)
    _timed([*record[:-1], "1000"], tmp_path)
    old_size = (tmp_path / "t.parquet").stat().st_size
    # Python's own start-up (the first ~third) is covered once; the rest more densely.
    for fraction in (0.2, 0.5, 0.7, 0.85, 1.0, 1.3):
        status = _run_and_signal(record, tmp_path, duration * fraction)
        names = sorted(p.name for p in tmp_path.iterdir())
        assert not [n for n in names if n.endswith(".tmp")], (fraction, status, names)
        steps = load_trace(tmp_path / "t.parquet").metadata.steps
        assert steps in (1000, 50000), (fraction, status)
        if steps == 50000:
            assert status in (0, 143, -signal.SIGTERM)
            break
        # 143 (128 + SIGTERM) once the tool's handlers are in place, wherever it
        # was (emulating or writing); -SIGTERM during Python's own start-up.
        assert status in (143, -signal.SIGTERM)
        assert (tmp_path / "t.parquet").stat().st_size == old_size
    report = ["report", "t.parquet", "-o", "out"]
    report_time = _timed(report, tmp_path)
    for fraction in (0.5, 0.8, 0.95):
        _run_and_signal(report, tmp_path, report_time * fraction)
        leftovers = [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
        assert not leftovers, (fraction, leftovers)


@pytest.mark.parametrize("moment", ["created", "renamed"])
def test_a_signal_right_as_a_temporary_file_appears_or_goes_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """The race CI hit (`.index.html.XXXX.tmp` left by a report stopped with SIGTERM):
    with another thread alive, as pyarrow's pools and rich's refresh thread are, the
    kernel hands a process signal to that thread and Python runs the handler on the
    main thread at its next bytecode, whatever the main thread's signal mask. Here
    the signal lands exactly between the file appearing (or being renamed) and the
    bookkeeping: the write must still end with the old file or the new one, whole,
    and no temporary file."""
    bystander_stop = threading.Event()
    bystander = threading.Thread(target=bystander_stop.wait)
    bystander.start()
    target = tmp_path / "index.html"
    target.write_bytes(b"old")

    def signal_now() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the other thread takes it; the main thread's handler is due

    real_mkstemp, real_replace = safe_output.tempfile.mkstemp, safe_output.os.replace

    def mkstemp_then_signal(*args: Any, **kwargs: Any) -> tuple[int, str]:
        made = real_mkstemp(*args, **kwargs)
        signal_now()
        return made

    def replace_then_signal(source: Path, destination: Path) -> None:
        real_replace(source, destination)
        signal_now()

    if moment == "created":
        monkeypatch.setattr(safe_output.tempfile, "mkstemp", mkstemp_then_signal)
    else:
        monkeypatch.setattr(safe_output.os, "replace", replace_then_signal)
    try:
        with pytest.raises(safe_output.Interrupted), safe_output.stop_on_signals():
            safe_output.write_file(target, b"new")
        safe_output.remove_pending()  # what the command line does on Interrupted
    finally:
        bystander_stop.set()
        bystander.join()
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]
    assert target.read_bytes() == (b"old" if moment == "created" else b"new")


# --- issue 24 item 3: `-o -` is standard output for one file, refused for a folder;
# --- issue 26 item 7: export goes through the same check as record.


EXPORT = [sys.executable, "-m", "stacktrace_lab", "export"]


@pytest.mark.parametrize("to", ["tenet", "perfetto"])
def test_export_to_dash_writes_stdout_and_no_file_named_dash(
    first_switch_trace: Path, tmp_path: Path, to: str
) -> None:
    run = subprocess.run(
        [*EXPORT, str(first_switch_trace), "--to", to, "-o", "-"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert os.listdir(tmp_path) == []  # no file named "-"
    assert main(["export", str(first_switch_trace), "--to", to, "-o", str(tmp_path / "f")]) == 0
    assert run.stdout == (tmp_path / "f").read_text()
    assert run.stderr.startswith("-: ")  # the summary, out of the data's way


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_export_never_replaces_a_device_a_fifo_or_a_directory(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = tmp_path / "out"
    if kind == "device":
        _char_device(target)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    before = os.lstat(target)
    assert main(["export", str(first_switch_trace), "--to", "tenet", "-o", str(target)]) == 2
    assert "refusing to replace it" in _one_line(capsys)
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary file left


@pytest.mark.parametrize(
    "args", [["report", "TRACE", "-o", "-"], ["record", "--report", "--report-dir", "-"]]
)
def test_a_folder_output_refuses_dash_in_one_line(
    first_switch_trace: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([str(first_switch_trace) if a == "TRACE" else a for a in args]) == 2
    assert "a report is a folder of files" in _one_line(capsys)
    assert os.listdir(tmp_path) == []  # no folder named "-"


def test_a_stale_temporary_file_of_ours_is_removed_on_the_next_write(tmp_path: Path) -> None:
    """After a SIGKILL, `.NAME.XXXXXXXX.tmp` stayed forever (issue 26): the next write
    of NAME removes those of our own naming that no run touched for a while."""
    target = tmp_path / "trace.parquet"
    prefix = temp_prefix(target.name, 255)
    stale = tmp_path / f"{prefix}abcd_123.tmp"
    fresh = tmp_path / f"{prefix}zzzz_999.tmp"  # a run writing right now
    other = tmp_path / ".other.parquet.abcd_123.tmp"  # another target's
    mine_too_long = tmp_path / f"{prefix}abcd_1234.tmp"  # not our naming
    for path in (stale, fresh, other, mine_too_long):
        path.write_bytes(b"half")
    old = time.time() - safe_output.STALE_AFTER_SECONDS - 60
    for path in (stale, other, mine_too_long):
        os.utime(path, (old, old))
    safe_output.write_file(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not stale.exists()
    assert fresh.exists() and other.exists() and mine_too_long.exists()


# --- issue 24 item 6: interruptible emulation

#: Builds the loop scenario's machine; `fast_forward` then runs it without recording
#: (as `record ./prog --from SYMBOL` runs a program's start-up) towards an address
#: it never reaches.
FAST_FORWARD = """
from stacktrace_lab.record.recorder import describe_scenario, prepare_machine
from stacktrace_lab.scenario import load_scenario

def fast_forward_forever():
    machine, _ = prepare_machine(describe_scenario(load_scenario("loop.toml")))
    machine.fast_forward(0xDEAD000, limit=10**12)
"""


def test_pytest_timeout_stops_an_emulation_that_does_not_end(pytester: pytest.Pytester) -> None:
    """pytest-timeout's SIGALRM fired inside unicorn's callbacks, where its exception
    was printed and ignored: a hung run went on. Now the engine stops and the test
    fails with pytest-timeout's own message."""
    pytest.importorskip("pytest_timeout")
    pytester.makefile(".toml", loop=LOOP)
    pytester.makepyfile(
        test_hang=FAST_FORWARD
        + """
import pytest

@pytest.mark.timeout(3, method="signal")
def test_hang():
    fast_forward_forever()
"""
    )
    result = pytester.runpytest_subprocess("-p", "timeout", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>3.0s) from pytest-timeout*"])
    assert "Exception ignored" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_an_unrecorded_run_within_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """A signal during a run that records nothing (the start-up before --from) was
    raised inside the engine's callback and lost."""
    (tmp_path / "loop.toml").write_text(LOOP)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(FAST_FORWARD, namespace)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signum))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(safe_output.Interrupted) as stopped:
            namespace["fast_forward_forever"]()
    finally:
        timer.cancel()
    assert stopped.value.signum == signum
    assert time.monotonic() - started < 1.0 + 1.0  # the signal, then within a second


# --- issue 26 item 5: signals are never lost in a reading command


@pytest.fixture(scope="module")
def long_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace long enough (200,000 steps) that every command is still at work when
    the signal comes."""
    where = tmp_path_factory.mktemp("long")
    (where / "loop.toml").write_text(LOOP)
    out = where / "long.parquet"
    assert main(["record", str(where / "loop.toml"), "-o", str(out), "--max-steps", "200000"]) == 0
    return out


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


READING_COMMANDS = {
    "check": ["check", "TRACE"],
    "diff --align": ["diff", "--align", "TRACE", "TRACE"],
    "show": ["show", "TRACE", "--step", "150000"],
    "report": ["report", "TRACE", "-o", "OUT"],
    "query": ["query", "TRACE", "SELECT count(*) FROM accesses a JOIN steps s USING (step)"],
    "export": ["export", "TRACE", "--to", "tenet", "-o", "OUT"],
    "who-wrote": ["who-wrote", "TRACE", "main:4088"],
    "serve": ["serve", "TRACE", "--port", "0"],
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("name", list(READING_COMMANDS))
def test_a_signal_ends_a_reading_command_at_once_with_one_line(
    long_trace: Path, tmp_path: Path, name: str
) -> None:
    """SIGINT or SIGTERM as soon as the command is under way: exit 128 + n with one
    line, within a second, no output, no traceback, no file left."""
    if name == "query":
        pytest.importorskip("duckdb")
    signum = signal.SIGINT if len(name) % 2 else signal.SIGTERM
    out = tmp_path / "out"
    argv = [str(long_trace) if a == "TRACE" else str(out) if a == "OUT" else a
            for a in READING_COMMANDS[name]]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "stacktrace_lab", *argv],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _catches(process.pid, signal.SIGTERM) and process.poll() is None:
        assert time.monotonic() < deadline, "the command never set its handlers"
        time.sleep(0.005)
    time.sleep(0.2)  # into its work
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert process.returncode == 128 + signum, stderr
    assert stderr == f"stacktrace-lab: interrupted ({signal.Signals(signum).name})\n"
    assert stdout == ""
    assert took < 1.0 + 0.5, took  # a second, and the process's own exit
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["out"])
