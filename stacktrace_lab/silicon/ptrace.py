"""The few ptrace(2) calls the native stepper needs, through ctypes on libc.

No third-party binding: python-ptrace is GPL, and five calls do not need one.
Everything here is x86-64 Linux only; `unavailable_reason()` says why ptrace
cannot be used on this machine (wrong platform, or the kernel refuses it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
from collections.abc import Callable

PTRACE_TRACEME = 0
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
#: Run (or single-step), and stop at a system call's entry without running it.
PTRACE_SYSEMU = 31
PTRACE_SYSEMU_SINGLESTEP = 32
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETSIGINFO = 0x4202

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_EXITKILL = 0x100000

#: personality(2) flag: the same addresses on every run, as with ASLR off.
ADDR_NO_RANDOMIZE = 0x0040000

#: struct user_regs_struct of <sys/user.h>, x86-64: 27 unsigned longs.
USER_REGS = (
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
)
UserRegs = ctypes.c_uint64 * len(USER_REGS)


class SigInfo(ctypes.Structure):
    """The head of siginfo_t: enough for si_signo, si_code and si_addr."""

    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad", ctypes.c_int),
        ("si_addr", ctypes.c_uint64),
        ("_rest", ctypes.c_byte * 104),
    ]


class PtraceError(OSError):
    """A ptrace call failed."""


def _load_libc() -> ctypes.CDLL:
    """glibc by its soname; find_library (which runs ldconfig, a child process) only
    where that is not there."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = _load_libc()
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    libc.personality.argtypes = [ctypes.c_ulong]
    libc.personality.restype = ctypes.c_int
    return libc


@functools.cache
def _raw_ptrace() -> Callable[..., int]:
    """libc's ptrace loaded again without prototypes: it takes prepared ctypes
    arguments as they are, for the native stepper's per-step calls."""
    libc = _load_libc()
    function: Callable[..., int] = libc.ptrace
    return function


def ptrace(request: int, pid: int, addr: int | None = None, data: object = None) -> int:
    result = int(_libc().ptrace(request, pid, addr, data))
    if result == -1:
        errno = ctypes.get_errno()
        if errno:
            raise PtraceError(errno, f"ptrace({request}): {os.strerror(errno)}")
    return result


def trace_me_without_aslr() -> None:
    """In the child, before execve: let the parent trace it; fixed addresses."""
    libc = _libc()
    libc.personality(ADDR_NO_RANDOMIZE)
    if libc.ptrace(PTRACE_TRACEME, 0, None, None) == -1:
        raise PtraceError(ctypes.get_errno(), "ptrace(PTRACE_TRACEME) refused")


def how_to_allow() -> str:
    return (
        "allow ptrace: in a container run it with --cap-add=SYS_PTRACE (Docker) "
        "and a seccomp profile that permits ptrace; on the host set "
        "kernel.yama.ptrace_scope to 0 or 1 (sysctl)"
    )


@functools.cache
def unavailable_reason() -> str | None:
    """None when this machine can single-step a child natively, else why not."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs x86-64 Linux, this is {sys.platform} on {platform.machine()}"
    true = "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"
    try:
        pid = os.fork()
    except OSError as exc:
        return f"cannot fork: {exc}"
    if pid == 0:  # the child: ask to be traced, then run /bin/true
        try:
            trace_me_without_aslr()
            os.execv(true, [true])
        finally:
            os._exit(126)
    _, status = os.waitpid(pid, 0)
    if os.WIFSTOPPED(status):
        reason = ""
        try:
            ptrace(PTRACE_SINGLESTEP, pid)
            _, status = os.waitpid(pid, 0)
            ok = os.WIFSTOPPED(status)
        except PtraceError as exc:
            ok = False
            reason = str(exc)
        finally:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        return None if ok else f"ptrace single-step refused ({reason}); {how_to_allow()}"
    return f"ptrace(PTRACE_TRACEME) refused by the kernel; {how_to_allow()}"
