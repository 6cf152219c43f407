"""Writing output files safely: regular files only, whole or not at all.

Every file the tool writes (a trace, each file of a report) goes through here:

- `check_target` refuses a path that names anything but a regular file (a
  character device such as `/dev/null`, a FIFO, a socket, a directory) with
  one line, instead of replacing the node by a regular file; and names a
  parent that is a file where a directory should be.
- `create_temp` makes the temporary file beside the target under a name that
  fits the file system's name limit (NAME_MAX), so a legal long target name
  is not refused because the temporary name is longer.
- `commit_temp` renames the complete temporary file into place. Between
  `create_temp` and `commit_temp` or `discard_temp` the temporary file is
  registered; `stop_on_signals` turns SIGINT, SIGTERM and SIGHUP into an
  exception like Ctrl-C's, so the code that is writing unwinds and removes it, and
  `remove_pending` removes whatever is left. The few statements that create,
  rename or remove a temporary file and (un)register it form a critical
  section: a stopping signal arriving inside one is held until it ends, so no
  interruption can land between the file appearing and its registration.

  Why not block the signals with `pthread_sigmask`: that blocks them for the
  main thread only. Other threads (pyarrow's pools, rich's refresh thread) take
  the signal instead, and CPython then runs the Python handler on the main
  thread at the next bytecode, mask or no mask: a report interrupted there left
  `.index.html.XXXX.tmp` behind (seen in CI).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from .errors import BadInput

_TEMP_SUFFIX = ".tmp"
_RANDOM = 8  # characters mkstemp adds
_pending: set[Path] = set()
#: temporary file -> the output it becomes, so a message names the output
_target_of: dict[Path, Path] = {}
# Ctrl-C too: Python's own SIGINT handler would raise KeyboardInterrupt inside a
# critical section. `Interrupted` is a KeyboardInterrupt, so callers see the same.
_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Critical-section depth, and the stopping signal that arrived inside one.
_critical_depth = 0
_held_signal: list[int] = []
#: The command-line process (not a caller in process, such as a test): a stopping
#: signal ends the process at once (`exit_now`) instead of raising `Interrupted`.
_exit_process = False
#: A signal's handler waits for the main thread's next bytecode; a main thread
#: stuck in a long C call (pyarrow, DuckDB) would delay it: the watchdog ends the
#: process this long after the signal if it is still running.
WATCHDOG_SECONDS = 0.8

_KINDS = {
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a directory",
}


class Interrupted(KeyboardInterrupt):
    """A stopping signal (SIGTERM, SIGHUP) arrived while writing: unwind like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def write_error(target: Path, exc: OSError) -> BadInput:
    """One line naming the file for a failed write; Arrow's messages name neither
    the file nor, in words, the cause (`Error writing bytes to file ... [errno 28]`)."""
    number = exc.errno
    if number is None:
        found = re.search(r"errno (\d+)", str(exc))
        number = int(found.group(1)) if found else None
    cause = os.strerror(number) if number else (exc.strerror or str(exc))
    return BadInput(f"{target}: cannot write: {cause}" + (f" (errno {number})" if number else ""))


def kind_of(path: Path) -> str | None:
    """What `path` is if it exists and is not a regular file ('a FIFO' ...), else None."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    for test, kind in _KINDS.items():
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def check_target(path: Path) -> None:
    """Refuse, in one line, an output path that is not (or cannot become) a regular file."""
    kind = kind_of(path)
    if kind is not None:
        raise BadInput(f"{path}: is {kind}, not a regular file; refusing to replace it")
    check_parent(path.parent, path)


def check_parent(directory: Path, target: Path) -> None:
    """The nearest existing ancestor of `directory` must be a directory."""
    for ancestor in [directory, *directory.parents]:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise BadInput(f"{target}: cannot write: {ancestor} is not a directory")
            return


def _name_limit(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def temp_prefix(name: str, limit: int) -> str:
    """`.NAME.`, cut at a UTF-8 character boundary so that it, the random part
    and the suffix fit in `limit` bytes."""
    room = max(limit - 2 - _RANDOM - len(_TEMP_SUFFIX), 1)
    kept = name.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return f".{kept}."


@contextlib.contextmanager
def _critical_section() -> Iterator[None]:
    """Hold a stopping signal that arrives inside until the section ends, then
    raise it. Python runs signal handlers on the main thread only, between
    bytecodes, so the handler sees this depth and the section's statements
    complete in between. Off the main thread there is nothing to hold: no
    handler runs there, and a held signal must be raised where it was caught."""
    global _critical_depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _critical_depth += 1
    try:
        yield
    finally:
        _critical_depth -= 1
        if _critical_depth == 0 and _held_signal:
            signum = _held_signal.pop()
            if _exit_process:
                exit_now(signum)
            raise Interrupted(signum)


#: A temporary file of ours untouched this long was left by a killed run (SIGKILL, a
#: power cut): the next write beside it removes it. A live writer touches its file far
#: more often (a trace grows by row groups; a report file is written in one go).
STALE_AFTER_SECONDS = 15 * 60


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporary files of our own naming for `target` (`.NAME.XXXXXXXX.tmp`,
    regular files) that no run has touched for STALE_AFTER_SECONDS; returns them."""
    directory = target.parent
    prefix = temp_prefix(target.name, _name_limit(directory))
    ours = re.compile(re.escape(prefix) + f"[a-z0-9_]{{{_RANDOM}}}" + re.escape(_TEMP_SUFFIX))
    now = time.time()
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if not ours.fullmatch(entry.name) or Path(entry.path) in _pending:
            continue
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_AFTER_SECONDS:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def create_temp(target: Path) -> Path:
    """A new, empty, registered temporary file in `target`'s directory (and the
    stale ones a killed run left for the same target, gone)."""
    directory = target.parent
    remove_stale_temps(target)
    with _critical_section():
        fd, name = tempfile.mkstemp(
            prefix=temp_prefix(target.name, _name_limit(directory)),
            suffix=_TEMP_SUFFIX,
            dir=directory,
        )
        os.close(fd)
        temp = Path(name)
        _pending.add(temp)
        _target_of[temp] = target
    return temp


def output_named(filename: object) -> object:
    """The output a temporary file of ours stands for (for messages), else `filename`."""
    if isinstance(filename, str | os.PathLike):
        return _target_of.get(Path(filename), filename)
    return filename


def commit_temp(temp: Path, target: Path) -> None:
    """Rename the complete `temp` onto `target` (a regular file or nothing)."""
    check_target(target)  # it may have become a FIFO while we wrote
    os.chmod(temp, 0o644)
    with _critical_section():
        os.replace(temp, target)
        _pending.discard(temp)


def discard_temp(temp: Path) -> None:
    with _critical_section():
        with contextlib.suppress(OSError):
            temp.unlink()
        _pending.discard(temp)


def remove_pending() -> None:
    """Remove every temporary file still registered (after an interruption)."""
    for temp in list(_pending):
        discard_temp(temp)


def write_file(target: Path, data: bytes) -> Path:
    """Write `data` to `target` through a temporary file: the old file or the new, whole."""
    check_target(target)
    temp = create_temp(target)
    try:
        with open(temp, "wb") as out:
            out.write(data)
        commit_temp(temp, target)
    except BaseException:
        discard_temp(temp)
        raise
    return target


def exit_now(signum: int) -> None:
    """End the process as a shell reports one killed by `signum` (128 + its number),
    with one line and no partial output: the temporary files in progress go, and
    what stdout has not flushed yet is dropped, not printed half."""
    remove_pending()
    with contextlib.suppress(OSError):
        os.write(2, f"stacktrace-lab: interrupted ({signal.Signals(signum).name})\n".encode())
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_on_signals(exit_process: bool = False) -> Iterator[None]:
    """While a command runs: SIGINT, SIGTERM and SIGHUP raise `Interrupted`, held
    until the end of a critical section when one is running.

    `exit_process` (the command line's own process): the signal ends the process
    at once instead, through `exit_now`. An exception raised at an arbitrary
    bytecode is not safe in a reading command: one raised inside an import (pandas,
    loaded lazily by pyarrow) left a half-imported module and a traceback of an
    unrelated AttributeError, and C code that catches it (DuckDB: "Query
    interrupted") turns it into its own error. A watchdog thread, woken by the
    signal itself, ends the process if the main thread is stuck in C code.
    """
    global _exit_process
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if _critical_depth:
            _held_signal[:] = [signum]  # raised when the critical section ends
            return
        if _exit_process:
            exit_now(signum)
        raise Interrupted(signum)

    previous = {number: signal.signal(number, on_signal) for number in _STOPPING}
    watchdog = _Watchdog() if exit_process else None
    _exit_process = exit_process
    try:
        yield
    finally:
        _exit_process = False
        if watchdog is not None:
            watchdog.close()
        for number, handler in previous.items():
            signal.signal(number, handler)


class _Watchdog:
    """Ends the process WATCHDOG_SECONDS after a stopping signal if the main thread
    has not: Python runs a signal's handler only between the main thread's
    bytecodes. The signal reaches this thread through `signal.set_wakeup_fd`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            data = os.read(self._read, 64)
        except OSError:
            return
        stopping = [n for n in data if n in _STOPPING]
        if not stopping or self._closed.wait(WATCHDOG_SECONDS):
            return
        while _critical_depth:  # a few statements: let them finish (and exit) first
            time.sleep(0.01)
        exit_now(stopping[0])

    def close(self) -> None:
        self._closed.set()
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)  # wakes the thread: read returns b""
        self._thread.join(timeout=1)
        os.close(self._read)


def refuse_dash_folder(option: str, folder: Path | None) -> None:
    """`-` is standard output for a single file; a report is a folder of files."""
    if folder is not None and str(folder) == "-":
        raise BadInput(
            f"{option} -: a report is a folder of files (index.html, plots, ...), "
            "not one stream; give a directory"
        )
