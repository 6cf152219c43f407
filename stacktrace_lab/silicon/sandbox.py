"""What the native run's system calls may do: nothing outside the traced process.

The native side of the silicon check runs a program someone may have sent
you. Every system call it makes is stopped before the kernel runs it
(`native.py`: the stepper decodes each instruction before stepping it, and
steps with PTRACE_SYSEMU_SINGLESTEP, so a call it did not decode — `int
0x80`, `sysenter`, code rewritten since it was decoded — is not run
either). Then, by `policy(nr, args, pid)`:

- RUN: calls whose whole effect is on the traced process itself (its memory
  map, its signal state, its own identity, the clock, random bytes) run in
  the kernel, so the program works as it would;
- ANSWER: the rest are not run at all, and answered as the recorder's
  machine answers them (record/machine/syscalls.py): `write`/`writev` to fd 1 and 2
  are captured from the process's memory into the check's stdout/stderr
  (bounded, as the recorder bounds them) and return the count; `read` from
  fd 0 is end of file; every other call (open, unlink, kill of another
  process, socket, rseq — whose area the kernel would write behind the
  program's back — ...) is -ENOSYS;
- STOP: `clone`, `clone3`, `fork`, `vfork`, `execve`, `execveat` end the
  native run of a program as they end its recording: reason `unsupported`
  (a scenario's bare machine answers them -ENOSYS, and so does the check).

So nothing the native run does reaches the file system, other processes or
the network; its stdin is /dev/null, its stdout and stderr /dev/null too (the
tracer captures what it writes), it inherits no other descriptor, and the
process group is killed when the check ends (and by PTRACE_O_EXITKILL if the tool dies).
"""

from __future__ import annotations

RUN, ANSWER, STOP = "run", "answer", "stop"
ENOSYS, EBADF = 38, 9
#: Output kept per stream, as the recorder keeps it (record/machine/syscalls.py max_output).
MAX_OUTPUT = 1 << 20

_MAP_ANONYMOUS = 0x20
_TCGETS, _TIOCGWINSZ = 0x5401, 0x5413
#: Calls that act on the calling process only (args checked below where they could reach out).
_SELF_ONLY = frozenset(
    (
        3,  # close (its own descriptor)
        10,  # mprotect
        11,  # munmap
        12,  # brk
        13,  # rt_sigaction
        14,  # rt_sigprocmask
        24,  # sched_yield
        25,  # mremap
        28,  # madvise
        39,  # getpid
        60,  # exit
        63,  # uname
        72,  # fcntl
        96,  # gettimeofday
        97,  # getrlimit
        102,  # getuid
        104,  # getgid
        107,  # geteuid
        108,  # getegid
        110,  # getppid
        131,  # sigaltstack
        158,  # arch_prctl
        186,  # gettid
        204,  # sched_getaffinity
        218,  # set_tid_address
        228,  # clock_gettime
        231,  # exit_group
        273,  # set_robust_list
        318,  # getrandom
    )
)
#: What a recording stops at (record/machine/syscalls.py): a thread, a process, another program.
_STOPS = {56: "clone", 435: "clone3", 57: "fork", 58: "vfork", 59: "execve", 322: "execveat"}
WRITE, READ, WRITEV = 1, 0, 20
CLONE, CLONE3, CLONE_THREAD = 56, 435, 0x10000
#: What the stop says when the call would start a thread (the check refuses those).
THREAD_DETAIL = "a new thread: threads are not compared yet"
_KILLS = {62: 0, 200: 0, 234: 0}  # kill(pid), tkill(tid), tgkill(tgid): the target argument


#: Calls whose effect is the process itself (its map, signal state, exit): a
#: second pass runs them again; the others' answers are replayed from the first.
SHAPES_THE_PROCESS = frozenset(
    (3, 9, 10, 11, 12, 13, 14, 25, 28, 60, 62, 72, 131, 158, 200, 231, 234, 273)
)  # not set_tid_address (218): it answers the tid, another in each pass


def policy(nr: int, args: tuple[int, ...], pid: int, linux: bool = True) -> str:
    """RUN, ANSWER or STOP for system call `nr` with `args` made by process `pid`;
    `linux`: the recorder's machine is a Linux process (else a scenario's bare one)."""
    if nr in _STOPS:
        return STOP if linux else ANSWER
    if nr in _SELF_ONLY:
        return RUN
    if nr == 9:  # mmap: anonymous memory only (a file mapping reads the host's files)
        return RUN if args[3] & _MAP_ANONYMOUS else ANSWER
    if nr == 16:  # ioctl: terminal queries on the standard streams only
        return RUN if args[0] <= 2 and args[1] in (_TCGETS, _TIOCGWINSZ) else ANSWER
    if nr == 7:  # poll without waiting (Rust's std checks fds 0-2 so at start)
        return RUN if args[2] == 0 else ANSWER
    if nr in (89, 267):  # readlink, readlinkat: reads a name, changes nothing
        return RUN
    if nr == 5:  # fstat of the standard streams
        return RUN if args[0] <= 2 else ANSWER
    if nr == 302:  # prlimit64 of itself, reading only
        return RUN if args[0] in (0, pid) and args[2] == 0 else ANSWER
    if nr in _KILLS:  # a signal to itself only (abort, raise)
        return RUN if args[_KILLS[nr]] == pid else ANSWER
    return ANSWER


def stop_name(nr: int) -> str:
    return _STOPS[nr]
