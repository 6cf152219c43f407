"""Keystone in a child process: the crash shield.

Keystone 0.9.2 segfaults on some input (`.text`), stops the process on
others ("LLVM ERROR: Unfinished frame!") and can loop or eat memory without
end (`.skip 0x7fffffffff`). None of that may take the tool, or a pytest
session, down with it. So keystone never runs in the tool's process: a
worker answers requests over pipes, one JSON line each way; a worker that
dies or does not answer in time becomes an `AssemblerCrash` the caller turns
into one line naming the source line, and the next request starts a new one.

Starting a worker costs about 0.1 s (an interpreter and keystone), more than
assembling a program, so one worker serves every recording of a process
(`shared()`); requests are serialised by a lock, so recordings on several
threads share it safely.

A fresh interpreter (not a fork) also means keystone's process-wide state
(the radix a syntax option leaks, docs/pitfalls.md) starts clean each time.

This file is also the worker's program: `python keystone_worker.py`. It
imports nothing from the package, so the worker starts fast.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType

#: Seconds one request may take. Generous: machines are shared, and a normal
#: program assembles in milliseconds.
REQUEST_TIMEOUT = 30.0
#: Address-space limit of the worker, so a runaway directive fails instead of
#: swapping the machine.
MEMORY_LIMIT = 2 << 30


class AssemblerCrash(Exception):
    """The worker died or hung while assembling."""


class KeystoneWorker:
    """A keystone child process; `assemble(text, address)` -> (bytes, error)."""

    def __init__(self, timeout: float = REQUEST_TIMEOUT) -> None:
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned = 0
        self.owner = os.getpid()
        self.lock = threading.Lock()

    def __enter__(self) -> KeystoneWorker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> subprocess.Popen[bytes]:
        if self.owner != os.getpid():
            # A forked child must not talk over its parent's pipes.
            self.process, self.owner = None, os.getpid()
        if self.process is None or self.process.poll() is not None:
            # The same interpreter and environment as the tool, so keystone is
            # found wherever the tool found it (a venv, --user, PYTHONPATH);
            # -P: this file's directory is not put on sys.path, so the
            # package's modules cannot shadow the standard library's.
            self.process = subprocess.Popen(
                [sys.executable, "-P", os.path.abspath(__file__)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            self.spawned += 1
        return self.process

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
            self.process = None

    def assemble(self, text: str, address: int) -> tuple[bytes | None, str | None]:
        """(code, None) or (None, keystone's error). Raises AssemblerCrash."""
        with self.lock:
            return self._assemble(text, address)

    def _assemble(self, text: str, address: int) -> tuple[bytes | None, str | None]:
        process = self._start()
        assert process.stdin is not None and process.stdout is not None
        request = json.dumps({"text": text, "address": address}) + "\n"
        try:
            process.stdin.write(request.encode())
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._crash() from None
        line = self._read_line(process)
        answer = json.loads(line)
        if "error" in answer:
            return None, str(answer["error"])
        return bytes.fromhex(answer["code"]), None

    def _read_line(self, process: subprocess.Popen[bytes]) -> bytes:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        buffer = b""
        deadline = time.monotonic() + self.timeout
        while not buffer.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                process.kill()
                process.wait()
                raise AssemblerCrash(f"keystone did not finish within {self.timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise self._crash()
                buffer += chunk
        return buffer

    def _crash(self) -> AssemblerCrash:
        process = self.process
        assert process is not None
        code = process.wait()
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        self.close()
        how = f"died of {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        said = next((line.strip() for line in stderr.splitlines() if line.strip()), "")
        return AssemblerCrash(f"keystone {how}" + (f" ({said})" if said else ""))


_SHARED: KeystoneWorker | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> KeystoneWorker:
    """The process's worker, started on first use and stopped at exit."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = KeystoneWorker()
            atexit.register(_SHARED.close)
        return _SHARED


def _serve() -> None:
    """The worker: read requests, assemble, answer; die with keystone if it does."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks, KsError

    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            encoding, _ = ks.asm(request["text"], request["address"])
            answer = {"code": bytes(encoding or b"").hex()}
        except KsError as exc:
            answer = {"error": str(exc)}
        except MemoryError:
            answer = {"error": "out of memory"}
        except Exception as exc:  # the binding's own refusals (non-ASCII text...)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
