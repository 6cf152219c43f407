"""System calls: deterministic answers, every call logged.

Two kernels share one calling convention (`handle(uc, step)` from the
`syscall` instruction hook; number in rax, arguments in rdi, rsi, rdx, r10,
r8, r9; the result back in rax):

- `BareKernel`, the scenario machine's: write, exit, exit_group.
- `LinuxKernel`, a Linux process's: about thirty calls that glibc and Rust's
  std make at start-up and for output (docs/machine.md lists each with its
  fixed answer). Nothing depends on the host: the clock, the random bytes, the
  process ids and the files are fixed.

Any other number returns -ENOSYS and the run goes on. What the kernel writes
into the program's memory (a `struct stat`, a `poll` result) goes through
`write_memory`, which the machine logs as writes of the `syscall` step, so the
trace's stack snapshots stay true.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import unicorn.x86_const as x86
from unicorn import UC_PROT_EXEC, UC_PROT_NONE, UC_PROT_READ, UC_PROT_WRITE
from unicorn.unicorn_py3.unicorn import Uc, UcError

from ...arch import PAGE
from ...layout import page_ceil
from ...limits import MAX_MAPPINGS, MAX_OPEN_FILES, MAX_PROCESS_MEMORY
from ...trace.format import SyscallRecord
from .address_space import AddressSpace, Area
from .registers import RegisterBatch
from .threads import (
    CLOCK_START_NS,
    ETIMEDOUT,
    FUTEX_OWNER_DIED,
    FUTEX_TID_MASK,
    FUTEX_WAITERS,
    MATCH_ANY,
    Clock,
    Threads,
)

__all__ = ["Area", "BareKernel", "KernelStop", "LinuxKernel", "ProcessState", "fixed_random"]

MASK64 = (1 << 64) - 1
EPERM, ENOENT, ESRCH, EBADF, EAGAIN, ENOMEM, EFAULT, EEXIST, ENODEV, EINVAL, EMFILE, ENOTTY = (
    1, 2, 3, 9, 11, 12, 14, 17, 19, 22, 24, 25,
)  # fmt: skip
EDEADLK, ENOSYS = 35, 38
#: Linux's TASK_SIZE on x86-64 and vm.mmap_min_addr (elf.py checks segments with them).
TASK_SIZE = 0x7FFFFFFFF000
MMAP_MIN_ADDR = 0x10000
SSIZE_MAX = (1 << 63) - 1
_ARG_REGS = (
    x86.UC_X86_REG_RDI,
    x86.UC_X86_REG_RSI,
    x86.UC_X86_REG_RDX,
    x86.UC_X86_REG_R10,
    x86.UC_X86_REG_R8,
    x86.UC_X86_REG_R9,
)
#: The call's number and its arguments, read at once.
_CALL_REGS = RegisterBatch((x86.UC_X86_REG_RAX, *_ARG_REGS))

#: Names for the log, also of calls that get -ENOSYS.
NAMES = {
    0: "read", 1: "write", 2: "open", 3: "close", 4: "stat", 5: "fstat", 7: "poll",
    8: "lseek", 9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 13: "rt_sigaction",
    14: "rt_sigprocmask", 16: "ioctl", 20: "writev", 24: "sched_yield", 25: "mremap",
    28: "madvise", 35: "nanosleep", 39: "getpid", 96: "gettimeofday", 201: "time",
    230: "clock_nanosleep", 56: "clone", 57: "fork", 60: "exit", 62: "kill",
    63: "uname", 72: "fcntl", 89: "readlink", 102: "getuid", 104: "getgid",
    107: "geteuid", 108: "getegid", 110: "getppid", 131: "sigaltstack", 158: "arch_prctl",
    186: "gettid", 200: "tkill", 202: "futex", 204: "sched_getaffinity",
    218: "set_tid_address", 228: "clock_gettime", 231: "exit_group", 234: "tgkill",
    257: "openat", 262: "newfstatat", 273: "set_robust_list", 302: "prlimit64",
    318: "getrandom", 332: "statx", 334: "rseq", 435: "clone3",
}  # fmt: skip

PID = 1000
UID = 1000
#: The machine's clock at its first read, in seconds (threads.Clock): 2023-11-14
#: 22:13:20 UTC. Each read moves it on by a microsecond.
CLOCK_START_S = CLOCK_START_NS // 1_000_000_000
#: clock_nanosleep's flag: the request is a time on the clock, not a duration.
TIMER_ABSTIME = 1
STACK_RLIMIT = 8 << 20
RLIM_INFINITY = MASK64
#: The bytes getrandom gives (and AT_RANDOM holds): SHAKE-128 of this seed.
RANDOM_SEED = b"stacktrace-lab fixed random bytes"

_SIGNALS = {6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def fixed_random(size: int) -> bytes:
    return hashlib.shake_128(RANDOM_SEED).digest(size)


@dataclass
class KernelStop:
    reason: str
    detail: str


Handler = Callable[[Uc, int, int, int, int, int, int], int | None]


class BareKernel:
    """write to fd 1 and 2, exit, exit_group; every other call -ENOSYS."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        #: Bytes of stdout and of stderr kept (set by the machine, limits.py);
        #: the rest is counted in `dropped`, by fd.
        self.max_output = 1 << 20
        self.dropped = {1: 0, 2: 0}
        self.log: list[SyscallRecord] = []
        self.stop: KernelStop | None = None
        #: Set by the machine: writes program memory and logs the write.
        self.write_memory: Callable[[int, bytes], None] = self._plain_write
        #: Set by the machine: memory there was remapped or reprotected, so code
        #: decided there (user_mode.py) must be decided again.
        self.code_changed: Callable[[int, int], None] = lambda _addr, _size: None
        self._uc: Uc | None = None
        #: The process's threads (a Linux process's kernel); None: one thread, no futexes.
        self.threads: Threads | None = None
        #: Names the log gives calls: the bare machine knows only its own three.
        self.names = {nr: NAMES[nr] for nr in (1, 60, 231)}
        self.handlers: dict[int, Handler] = {
            1: self.sys_write,
            60: self.sys_exit,
            231: self.sys_exit,
        }

    def _plain_write(self, addr: int, data: bytes) -> None:
        assert self._uc is not None
        self._uc.mem_write(addr, data)

    def handle(self, uc: Uc, step: int) -> None:
        self._uc = uc
        nr, *rest = _CALL_REGS.read(uc)
        args = tuple(rest)
        handler = self.handlers.get(nr)
        self._nr = nr
        try:
            result = handler(uc, *args) if handler is not None else -ENOSYS
        except UcError:
            result = -EFAULT
        name = self.names.get(nr, "unknown")
        if result is not None:
            uc.reg_write(x86.UC_X86_REG_RAX, result & MASK64)
        # Calls made before recording began (`--from`) are not in the trace's log.
        if step >= 0:
            self.log.append(SyscallRecord(step, nr, name, args, result))

    # --- helpers for handlers ---------------------------------------------------

    def mapped(self, uc: Uc, addr: int, size: int) -> bool:
        """Whether `addr ..< addr + size` is mapped (checked before reading: a
        count of 2**63 would allocate the buffer before unicorn refuses it)."""
        if size == 0:
            return True
        regions = sorted((b, e) for b, e, _ in uc.mem_regions())
        cursor = addr
        for begin, end in regions:
            if begin <= cursor <= end:
                cursor = end + 1
                if cursor >= addr + size:
                    return True
        return False

    def output(self, uc: Uc, fd: int, data: bytes) -> None:
        kept = self.stdout if fd == 1 else self.stderr
        room = self.room(fd)
        kept.extend(data[:room])
        self.dropped[fd] += max(len(data) - room, 0)

    def room(self, fd: int) -> int:
        """Output bytes fd 1 or 2 may still keep: a program writing in a loop
        must not grow the tool's memory."""
        return max(self.max_output - len(self.stdout if fd == 1 else self.stderr), 0)

    # --- the calls ------------------------------------------------------------------

    def sys_write(self, uc: Uc, fd: int, buf: int, count: int, *_: int) -> int:
        if fd not in (1, 2):
            return -EBADF
        if count and not self.mapped(uc, buf, count):
            return -EFAULT
        kept = min(count, self.room(fd))  # read only what is kept
        self.output(uc, fd, bytes(uc.mem_read(buf, kept)) if kept else b"")
        self.dropped[fd] += count - kept
        return count

    def sys_exit(self, uc: Uc, status: int, *_: int) -> None:
        name = "exit" if self._nr == 60 else "exit_group"
        self.stop = KernelStop("exit", f"{name}({status & 0xFF})")
        uc.emu_stop()


@dataclass
class ProcessState:
    """What the Linux kernel keeps about the process between calls."""

    path: str
    #: The mappings at exec (segments, stack); `space` holds them from then on.
    areas: list[Area]
    brk_start: int
    mmap_top: int
    brk: int = 0
    mmap_cursor: int = 0
    #: Anonymous mmaps, (address, length) in call order: the first MAX_MAPPINGS
    #: of them become regions of the trace (elf_front.py).
    mmaps: list[tuple[int, int]] = field(default_factory=list)
    sigaltstack: tuple[int, int] | None = None  # (sp, size)
    #: Each break the heap grew from: where a memory allocator's blocks may start.
    brk_starts: list[int] = field(default_factory=list)
    #: Open files: fd -> what it reads (only "/proc/self/maps" exists), and its offset.
    files: dict[int, str] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    space: AddressSpace = field(init=False)

    def __post_init__(self) -> None:
        self.brk = self.brk or self.brk_start
        self.mmap_cursor = self.mmap_cursor or self.mmap_top
        self.space = AddressSpace(self.areas)
        self._maps: tuple[tuple[int, int], bytes] | None = None

    def maps(self) -> bytes:
        """/proc/self/maps now. Generated when read, as Linux does, not copied per
        open descriptor: 1,024 descriptors then cost nothing (issue 26)."""
        key = (self.space.version, len(self.space))
        if self._maps is None or self._maps[0] != key:
            self._maps = (key, "".join(a.line() + "\n" for a in self.space).encode())
        return self._maps[1]


def _uc_perms(prot: int) -> int:
    perms = UC_PROT_NONE
    if prot & 1:
        perms |= UC_PROT_READ
    if prot & 2:
        perms |= UC_PROT_WRITE
    if prot & 4:
        perms |= UC_PROT_EXEC
    return perms


def _perm_text(prot: int) -> str:
    return (
        ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + "p"
    )


#: clone's flags (linux/sched.h).
CLONE_THREAD = 0x10000
CLONE_SETTLS = 0x80000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_CLEARTID = 0x200000
CLONE_CHILD_SETTID = 0x1000000
#: futex operations (linux/futex.h).
FUTEX_WAIT, FUTEX_WAKE, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE, FUTEX_WAKE_OP = 0, 1, 3, 4, 5
FUTEX_LOCK_PI, FUTEX_UNLOCK_PI, FUTEX_TRYLOCK_PI, FUTEX_LOCK_PI2 = 6, 7, 8, 13
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10
#: Not emulated (-ENOSYS, counted in record's warning): condition variables
#: on PI mutexes, which glibc has not used since 2.25.
FUTEX_WAIT_REQUEUE_PI, FUTEX_CMP_REQUEUE_PI = 11, 12
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
#: sizeof(struct robust_list_head), and how many entries Linux walks at most.
ROBUST_HEAD_SIZE, ROBUST_LIST_LIMIT = 24, 2048
#: Threads one process may create (the trace's `thread` column is small).
MAX_THREADS = 1024


class LinuxKernel(BareKernel):
    """The system calls of one Linux process and its threads (docs/machine.md)."""

    def __init__(self, process: ProcessState) -> None:
        super().__init__()
        self.process = process
        self.threads = Threads(PID)
        self.names = NAMES
        self.handlers.update(
            {
                0: self.sys_read,
                3: self.sys_close,
                5: self.sys_fstat,
                7: self.sys_poll,
                9: self.sys_mmap,
                10: self.sys_mprotect,
                11: self.sys_munmap,
                12: self.sys_brk,
                13: self.sys_rt_sigaction,
                14: self.sys_rt_sigprocmask,
                16: self.sys_ioctl,
                20: self.sys_writev,
                24: self.sys_sched_yield,
                28: _returns(0),
                39: _returns(PID),
                62: self.sys_kill,
                63: self.sys_uname,
                72: self.sys_fcntl,
                89: self.sys_readlink,
                102: _returns(UID),
                104: _returns(UID),
                107: _returns(UID),
                108: _returns(UID),
                110: _returns(PID - 1),
                131: self.sys_sigaltstack,
                158: self.sys_arch_prctl,
                60: self.sys_exit_thread,
                186: self.sys_gettid,
                200: self.sys_tkill,
                202: self.sys_futex,
                204: self.sys_sched_getaffinity,
                218: self.sys_set_tid_address,
                228: self.sys_clock_gettime,
                96: self.sys_gettimeofday,
                201: self.sys_time,
                35: self.sys_nanosleep,
                230: self.sys_clock_nanosleep,
                234: self.sys_tgkill,
                257: self.sys_openat,
                262: self.sys_newfstatat,
                273: self.sys_set_robust_list,
                302: self.sys_prlimit64,
                318: self.sys_getrandom,
                # What one emulated process cannot do ends the run, never silently.
                56: self.sys_clone,
                57: self._unsupported("fork: a second process"),
                58: self._unsupported("vfork: a second process"),
                59: self._unsupported("execve: another program"),
                322: self._unsupported("execveat: another program"),
                435: self.sys_clone3,
            }
        )

    # --- files ------------------------------------------------------------------

    def sys_read(self, uc: Uc, fd: int, buf: int, count: int, *_: int) -> int:
        if fd == 0:
            return 0  # standard input is empty
        if fd not in self.process.files:
            return -EBADF
        return self.read_from(uc, fd, self.process.maps(), buf, count)

    def read_from(self, uc: Uc, fd: int, content: bytes, buf: int, count: int) -> int:
        """`read` of an open file whose bytes are `content`: up to `count` bytes from
        the file's offset into `buf` (-EFAULT where it is not mapped), the offset
        moved past them; how many (0 at the end)."""
        offset = self.process.offsets[fd]
        chunk = content[offset : offset + count]
        if chunk and not self.mapped(uc, buf, len(chunk)):
            return -EFAULT
        if chunk:
            self.write_memory(buf, chunk)
        self.process.offsets[fd] = offset + len(chunk)
        return len(chunk)

    def sys_writev(self, uc: Uc, fd: int, iov: int, count: int, *_: int) -> int:
        if fd not in (1, 2):
            return -EBADF
        if count > 1024 or not self.mapped(uc, iov, 16 * count):
            return -EINVAL if count > 1024 else -EFAULT
        raw = bytes(uc.mem_read(iov, 16 * count)) if count else b""
        vectors = [
            (
                int.from_bytes(raw[16 * i : 16 * i + 8], "little"),
                int.from_bytes(raw[16 * i + 8 : 16 * i + 16], "little"),
            )
            for i in range(count)
        ]
        # Linux checks every vector before writing any: lengths summing past
        # SSIZE_MAX are EINVAL, an unmapped buffer EFAULT.
        if sum(length for _, length in vectors) > SSIZE_MAX:
            return -EINVAL
        if any(length and not self.mapped(uc, base, length) for base, length in vectors):
            return -EFAULT
        total = 0
        for base, length in vectors:
            # Read only what is kept (64 vectors of 64 MiB each were read whole
            # before the output cap was applied: minutes and gigabytes).
            kept = min(length, self.room(fd))
            self.output(uc, fd, bytes(uc.mem_read(base, kept)) if kept else b"")
            self.dropped[fd] += length - kept
            total += length
        return total

    def sys_openat(self, uc: Uc, _dirfd: int, path_addr: int, *_: int) -> int:
        path = self._string(uc, path_addr)
        if path is None:
            return -EFAULT
        if path not in ("/proc/self/maps",):
            return -ENOENT
        fd = 3
        while fd in self.process.files:
            fd += 1
        if fd >= MAX_OPEN_FILES:  # RLIMIT_NOFILE, as prlimit64 reports it
            return -EMFILE
        self.process.files[fd] = path
        self.process.offsets[fd] = 0
        return fd

    def sys_close(self, uc: Uc, fd: int, *_: int) -> int:
        if fd in self.process.files:
            del self.process.files[fd]
            del self.process.offsets[fd]
            return 0
        return 0 if fd in (0, 1, 2) else -EBADF

    def _stat(self, fd: int, statbuf: int) -> int:
        if fd in (0, 1, 2):
            mode, size = 0o010600, 0  # a pipe, as when the output is captured
        elif fd in self.process.files:
            mode, size = 0o100444, 0  # /proc files say size 0
        else:
            return -EBADF
        stat = bytearray(144)
        stat[24:28] = mode.to_bytes(4, "little")  # st_mode
        stat[16:24] = (1).to_bytes(8, "little")  # st_nlink
        stat[28:32] = UID.to_bytes(4, "little")
        stat[32:36] = UID.to_bytes(4, "little")
        stat[48:56] = size.to_bytes(8, "little")
        stat[56:64] = PAGE.to_bytes(8, "little")  # st_blksize
        self.write_memory(statbuf, bytes(stat))
        return 0

    def sys_fstat(self, uc: Uc, fd: int, statbuf: int, *_: int) -> int:
        return self._stat(fd, statbuf)

    def sys_newfstatat(self, uc: Uc, fd: int, path_addr: int, statbuf: int, *_: int) -> int:
        path = self._string(uc, path_addr)
        if path is None:
            return -EFAULT
        if path:
            return -ENOENT  # only fstat of an open file (AT_EMPTY_PATH) is known
        return self._stat(fd, statbuf)

    def sys_ioctl(self, uc: Uc, fd: int, *_: int) -> int:
        # No terminal: standard output is a pipe, as when a test captures it.
        return -ENOTTY if fd in (0, 1, 2) or fd in self.process.files else -EBADF

    def sys_fcntl(self, uc: Uc, fd: int, cmd: int, *_: int) -> int:
        if fd not in (0, 1, 2) and fd not in self.process.files:
            return -EBADF
        return 2 if cmd == 3 and fd in (0, 1, 2) else 0  # F_GETFL: O_RDWR

    def sys_poll(self, uc: Uc, fds: int, count: int, *_: int) -> int:
        if count > 1024 or not self.mapped(uc, fds, 8 * count):
            return -EINVAL if count > 1024 else -EFAULT
        raw = bytearray(uc.mem_read(fds, 8 * count)) if count else bytearray()
        for i in range(count):
            raw[8 * i + 6 : 8 * i + 8] = b"\0\0"  # revents: nothing happened
        if count:
            self.write_memory(fds, bytes(raw))
        return 0

    def sys_readlink(self, uc: Uc, path_addr: int, buf: int, size: int, *_: int) -> int:
        path = self._string(uc, path_addr)
        if path != "/proc/self/exe":
            return -ENOENT if path is not None else -EFAULT
        target = self.process.path.encode()[:size]
        if target and not self.mapped(uc, buf, len(target)):
            return -EFAULT
        self.write_memory(buf, target)
        return len(target)

    def sys_uname(self, uc: Uc, buf: int, *_: int) -> int:
        fields = [b"Linux", b"stacktrace-lab", b"6.1.0", b"#1", b"x86_64", b""]
        data = b"".join(f.ljust(65, b"\0") for f in fields)
        if not self.mapped(uc, buf, len(data)):
            return -EFAULT
        self.write_memory(buf, data)
        return 0

    # --- memory ----------------------------------------------------------------------

    def mapped(self, uc: Uc, addr: int, size: int) -> bool:
        # The process's own map answers in a bisection; unicorn's region list
        # (a Python list built per call) only for what it does not hold.
        end = addr + size
        return self.process.space.covers(addr, end) or super().mapped(uc, addr, size)

    def _room_for(self, size: int) -> bool:
        """Whether `size` more bytes and one more mapping stay within the limits."""
        space = self.process.space
        return space.bytes + size <= MAX_PROCESS_MEMORY and len(space) < MAX_MAPPINGS

    def sys_brk(self, uc: Uc, addr: int, *_: int) -> int:
        # Any break Linux would not grant leaves the break where it was: glibc's
        # sbrk compares the answer with what it asked for (an error code would
        # read as a new break).
        p = self.process
        if addr <= p.brk_start or addr > p.mmap_cursor - (1 << 30):
            return p.brk
        mapped_end = page_ceil(p.brk)
        new_end = page_ceil(addr)
        heap = next((a for a in p.space.between(p.brk_start, p.brk_start + 1)), None)
        heap = heap if heap is not None and heap.kind == "heap" else None
        if new_end > mapped_end:
            grow = new_end - mapped_end
            if p.space.overlaps(mapped_end, new_end) or not self._room_for(grow):
                return p.brk
            try:
                uc.mem_map(mapped_end, grow, UC_PROT_READ | UC_PROT_WRITE)
            except UcError:
                return p.brk
            if heap is None:
                p.space.add(Area(p.brk_start, new_end, "rw-p", "[heap]", "heap"))
            else:
                p.space.grow(heap, new_end)
        elif heap is None:
            p.space.add(Area(p.brk_start, max(new_end, p.brk_start), "rw-p", "[heap]", "heap"))
        if addr > p.brk:
            p.brk_starts.append(p.brk)
        p.brk = addr
        return p.brk

    def sys_mmap(
        self, uc: Uc, addr: int, length: int, prot: int, flags: int, fd: int, _off: int
    ) -> int:
        map_fixed, map_anonymous, map_fixed_noreplace = 0x10, 0x20, 0x100000
        if not flags & map_anonymous:
            return -ENODEV  # no files to map
        if length == 0:
            return -EINVAL
        if length > TASK_SIZE:
            return -ENOMEM
        size = page_ceil(length)
        p = self.process
        if flags & (map_fixed | map_fixed_noreplace):
            if addr % PAGE:
                return -EINVAL
            if addr < MMAP_MIN_ADDR:
                return -EPERM  # vm.mmap_min_addr: page 0 stays unmapped
            if addr + size > TASK_SIZE:
                return -ENOMEM
            if flags & map_fixed_noreplace and p.space.overlaps(addr, addr + size):
                return -EEXIST
            replaced = sum(hi - lo for lo, hi in _pieces(p.space, addr, addr + size))
            if p.space.bytes - replaced + size > MAX_PROCESS_MEMORY or len(p.space) >= MAX_MAPPINGS:
                return -ENOMEM
            self._unmap(uc, addr, size)
            start = addr
        else:
            if not self._room_for(size):
                return -ENOMEM
            found = p.space.highest_below(p.mmap_cursor, size, MMAP_MIN_ADDR)
            if found is None:
                return -ENOMEM
            start = found
        try:
            uc.mem_map(start, size, _uc_perms(prot))
        except UcError:
            return -ENOMEM  # a page unicorn holds that the process map does not
        if not flags & (map_fixed | map_fixed_noreplace):
            p.mmap_cursor = start
        if len(p.mmaps) < MAX_MAPPINGS:
            p.mmaps.append((start, length))
        p.space.add(Area(start, start + size, _perm_text(prot), "", "mapped"))
        return start

    def _unmap(self, uc: Uc, addr: int, size: int) -> None:
        """Unmap `addr ..< addr + size` from the process map and from unicorn. Unicorn's
        regions are only listed when the process map does not hold the whole range."""
        end = addr + size
        removed = self.process.space.remove(addr, end)
        if sum(hi - lo for lo, hi in removed) == size:
            for lo, hi in removed:
                uc.mem_unmap(lo, hi - lo)
            return
        for begin, last, _ in list(uc.mem_regions()):
            lo, hi = max(begin, addr), min(last + 1, end)
            if lo < hi:
                uc.mem_unmap(lo, hi - lo)
                self.code_changed(lo, hi - lo)

    def sys_munmap(self, uc: Uc, addr: int, length: int, *_: int) -> int:
        if addr % PAGE or length == 0 or length > TASK_SIZE or addr + length > TASK_SIZE:
            return -EINVAL
        self._unmap(uc, addr, page_ceil(length))
        return 0

    def sys_mprotect(self, uc: Uc, addr: int, length: int, prot: int, *_: int) -> int:
        if addr % PAGE:
            return -EINVAL
        size = page_ceil(length)
        if size == 0:
            return 0
        if not self.mapped(uc, addr, size):
            return -ENOMEM
        uc.mem_protect(addr, size, _uc_perms(prot))
        self.code_changed(addr, size)
        return 0

    # --- signals, threads, process ----------------------------------------------------

    def sys_rt_sigaction(self, uc: Uc, signum: int, _act: int, oldact: int, *_: int) -> int:
        if not 1 <= signum <= 64 or signum in (9, 19):
            return -EINVAL
        if oldact:
            self.write_memory(oldact, bytes(32))  # no handler was installed
        return 0

    def sys_rt_sigprocmask(self, uc: Uc, _how: int, _set: int, oldset: int, *_: int) -> int:
        if oldset:
            self.write_memory(oldset, bytes(8))
        return 0

    def sys_sigaltstack(self, uc: Uc, new: int, old: int, *_: int) -> int:
        p = self.process
        if old:
            sp, size = p.sigaltstack or (0, 0)
            flags = 0 if p.sigaltstack else 2  # SS_DISABLE
            self.write_memory(
                old,
                sp.to_bytes(8, "little") + flags.to_bytes(8, "little") + size.to_bytes(8, "little"),
            )
        if new:
            raw = bytes(uc.mem_read(new, 24))
            sp = int.from_bytes(raw[0:8], "little")
            flags = int.from_bytes(raw[8:12], "little")
            size = int.from_bytes(raw[16:24], "little")
            p.sigaltstack = None if flags & 2 else (sp, size)
        return 0

    def sys_arch_prctl(self, uc: Uc, code: int, addr: int, *_: int) -> int:
        if code == 0x1002:  # ARCH_SET_FS
            uc.reg_write(x86.UC_X86_REG_FS_BASE, addr)
            return 0
        if code == 0x1003:  # ARCH_GET_FS
            self.write_memory(addr, uc.reg_read(x86.UC_X86_REG_FS_BASE).to_bytes(8, "little"))
            return 0
        return -EINVAL

    def sys_futex(
        self, uc: Uc, uaddr: int, op: int, val: int, timeout: int, uaddr2: int, val3: int
    ) -> int | None:
        """Wait and wake between the process's threads (threads.py). Private and
        shared futexes are the same here: there is one process."""
        threads = self.threads
        assert threads is not None
        command = op & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
        if command in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
            bitset = MATCH_ANY if command == FUTEX_WAIT else val3 & MATCH_ANY
            if bitset == 0:
                return -EINVAL
            if not self.mapped(uc, uaddr, 4) or (timeout and not self.mapped(uc, timeout, 16)):
                return -EFAULT
            if int.from_bytes(uc.mem_read(uaddr, 4), "little") != val & MATCH_ANY:
                return -EAGAIN
            deadline = None
            if timeout:
                wait = _timespec_ns(uc, timeout)
                if wait is None:
                    return -EINVAL
                # FUTEX_WAIT's timeout is relative, FUTEX_WAIT_BITSET's absolute:
                # on the machine's clock, one in the past has expired already.
                now = threads.clock.now
                deadline = wait + (now if command == FUTEX_WAIT else 0)
                if deadline <= now:
                    return -ETIMEDOUT
            threads.block(uaddr, bitset, deadline)
            uc.emu_stop()
            return None  # the answer (0, or -ETIMEDOUT) is given when the thread runs again
        if command in (FUTEX_WAKE, FUTEX_WAKE_BITSET):
            bitset = MATCH_ANY if command == FUTEX_WAKE else val3 & MATCH_ANY
            if bitset == 0:
                return -EINVAL
            return threads.wake(uaddr, _int32(val), bitset)
        if command in (FUTEX_REQUEUE, FUTEX_CMP_REQUEUE):
            if command == FUTEX_CMP_REQUEUE:
                if not self.mapped(uc, uaddr, 4):
                    return -EFAULT
                if int.from_bytes(uc.mem_read(uaddr, 4), "little") != val3 & MATCH_ANY:
                    return -EAGAIN
            return threads.requeue(uaddr, _int32(val), uaddr2, _int32(timeout))
        if command == FUTEX_WAKE_OP:
            return self._futex_wake_op(uc, uaddr, _int32(val), _int32(timeout), uaddr2, val3)
        if command in (FUTEX_LOCK_PI, FUTEX_LOCK_PI2, FUTEX_TRYLOCK_PI):
            return self._futex_lock_pi(uc, uaddr, timeout, trylock=command == FUTEX_TRYLOCK_PI)
        if command == FUTEX_UNLOCK_PI:
            return self._futex_unlock_pi(uc, uaddr)
        return -ENOSYS

    def _futex_word_error(self, uc: Uc, uaddr: int) -> int | None:
        """Why the kernel may not read and write the futex word at `uaddr`: -EINVAL
        (not 4-byte aligned) or -EFAULT (not mapped writable); None when it may."""
        if uaddr % 4:
            return -EINVAL
        areas = self.process.space.between(uaddr, uaddr + 4)
        writable = all("w" in a.perms for a in areas) if areas else self.mapped(uc, uaddr, 4)
        if not writable or not self.mapped(uc, uaddr, 4):
            return -EFAULT
        return None

    def _futex_wake_op(
        self, uc: Uc, uaddr: int, count: int, count2: int, uaddr2: int, encoded: int
    ) -> int:
        """FUTEX_WAKE_OP (man 2 futex): change the word at `uaddr2` by the encoded
        operation, wake up to `count` waiters at `uaddr`, and, when the word's old
        value passes the encoded comparison, up to `count2` waiters at `uaddr2`.
        The answer is how many were woken at both."""
        threads = self.threads
        assert threads is not None
        encoded &= MATCH_ANY
        op, cmp = (encoded >> 28) & 0x7, (encoded >> 24) & 0xF
        oparg, cmparg = _sign12((encoded >> 12) & 0xFFF), _sign12(encoded & 0xFFF)
        if encoded & (8 << 28):  # FUTEX_OP_OPARG_SHIFT: the argument is a shift count
            oparg = 1 << (oparg & 31)
        if op > 4:
            return -ENOSYS
        bad = self._futex_word_error(uc, uaddr2)
        if bad is not None:
            return bad
        old = int.from_bytes(uc.mem_read(uaddr2, 4), "little")
        new = (
            oparg,  # FUTEX_OP_SET
            old + oparg,  # FUTEX_OP_ADD
            old | oparg,  # FUTEX_OP_OR
            old & ~oparg,  # FUTEX_OP_ANDN
            old ^ oparg,  # FUTEX_OP_XOR
        )[op] & MATCH_ANY
        self.write_memory(uaddr2, new.to_bytes(4, "little"))
        if cmp > 5:  # Linux checks the comparison after the operation is done
            return -ENOSYS
        woken = threads.wake(uaddr, count)
        if woken < 0:
            return woken
        signed_old = old - (1 << 32) if old >> 31 else old
        passes = (
            signed_old == cmparg,  # FUTEX_OP_CMP_EQ
            signed_old != cmparg,  # FUTEX_OP_CMP_NE
            signed_old < cmparg,  # FUTEX_OP_CMP_LT
            signed_old <= cmparg,  # FUTEX_OP_CMP_LE
            signed_old > cmparg,  # FUTEX_OP_CMP_GT
            signed_old >= cmparg,  # FUTEX_OP_CMP_GE
        )[cmp]
        if passes:
            more = threads.wake(uaddr2, count2)
            if more < 0:
                return more
            woken += more
        return woken

    def _futex_lock_pi(self, uc: Uc, uaddr: int, timeout: int, trylock: bool) -> int | None:
        """FUTEX_LOCK_PI (and LOCK_PI2, TRYLOCK_PI): own the PI futex at `uaddr`.
        A free word (no owner tid) becomes the caller's tid; the owner asking again
        is -EDEADLK; an owner that is no thread of the process is -ESRCH. Else the
        caller sets FUTEX_WAITERS and waits until FUTEX_UNLOCK_PI hands it the
        futex (its timeout is absolute; the clock is fixed), or TRYLOCK_PI answers
        -EAGAIN (EWOULDBLOCK). Priorities are not modelled: all threads have one."""
        threads = self.threads
        assert threads is not None
        bad = self._futex_word_error(uc, uaddr)
        if bad is not None:
            return bad
        if timeout and not trylock and not self.mapped(uc, timeout, 16):
            return -EFAULT
        word = int.from_bytes(uc.mem_read(uaddr, 4), "little")
        me = threads.current.tid
        owner = word & FUTEX_TID_MASK
        if owner == 0:
            # Linux keeps OWNER_DIED for the new owner to see (a robust mutex).
            taken = (word & FUTEX_OWNER_DIED) | me
            if threads.pi_waiters(uaddr):
                taken |= FUTEX_WAITERS
            self.write_memory(uaddr, taken.to_bytes(4, "little"))
            return 0
        if owner == me:
            return -EDEADLK
        if threads.by_tid(owner) is None:
            return -ESRCH
        if trylock:
            return -EAGAIN
        deadline = None
        if timeout:
            deadline = _timespec_ns(uc, timeout)
            if deadline is None:
                return -EINVAL
        if not word & FUTEX_WAITERS:
            self.write_memory(uaddr, (word | FUTEX_WAITERS).to_bytes(4, "little"))
        if deadline is not None and deadline <= threads.clock.now:
            return -ETIMEDOUT
        threads.block(uaddr, MATCH_ANY, deadline, pi=True)
        uc.emu_stop()
        return None  # 0 once it owns the futex, or -ETIMEDOUT

    def _futex_unlock_pi(self, uc: Uc, uaddr: int) -> int:
        """FUTEX_UNLOCK_PI: the owner gives the PI futex to its first waiter (the word
        becomes FUTEX_WAITERS | that thread's tid, as Linux's wake_futex_pi writes
        it), or frees it (0) when none waits. Anyone else asking is -EPERM."""
        threads = self.threads
        assert threads is not None
        bad = self._futex_word_error(uc, uaddr)
        if bad is not None:
            return bad
        word = int.from_bytes(uc.mem_read(uaddr, 4), "little")
        if word & FUTEX_TID_MASK != threads.current.tid:
            return -EPERM
        waiting = threads.pi_waiters(uaddr)
        if not waiting:
            self.write_memory(uaddr, bytes(4))
            return 0
        heir = waiting[0]
        self.write_memory(uaddr, (FUTEX_WAITERS | heir.tid).to_bytes(4, "little"))
        threads.hand_over(heir)
        return 0

    def sys_sched_yield(self, uc: Uc, *_: int) -> int:
        threads = self.threads
        assert threads is not None
        if threads.several():
            threads.switch_wanted = True
            uc.emu_stop()
        return 0

    def sys_gettid(self, uc: Uc, *_: int) -> int:
        assert self.threads is not None
        return self.threads.current.tid

    def sys_set_tid_address(self, uc: Uc, tidptr: int, *_: int) -> int:
        assert self.threads is not None
        self.threads.current.clear_tid = tidptr
        return self.threads.current.tid

    def sys_set_robust_list(self, uc: Uc, head: int, size: int, *_: int) -> int:
        """Where the thread's robust futexes are listed (`struct robust_list_head`,
        24 bytes: else -EINVAL), walked when it exits (`_robust_list_exit`)."""
        if size != ROBUST_HEAD_SIZE:
            return -EINVAL
        assert self.threads is not None
        self.threads.current.robust_list = head
        return 0

    def sys_exit_thread(self, uc: Uc, status: int, *rest: int) -> None:
        """`exit`: the calling thread ends; the process with its last thread."""
        threads = self.threads
        assert threads is not None
        if not threads.several():
            self.sys_exit(uc, status, *rest)
            return
        self._robust_list_exit(uc)
        thread = threads.exit(status & 0xFF)
        if thread.clear_tid and self.mapped(uc, thread.clear_tid, 4):
            # CLONE_CHILD_CLEARTID: what pthread_join waits for.
            self.write_memory(thread.clear_tid, bytes(4))
            threads.wake(thread.clear_tid, 1)
        uc.emu_stop()

    def _robust_list_exit(self, uc: Uc) -> None:
        """Linux's exit_robust_list for the exiting thread: each robust futex it still
        owns (its tid in the word) gets FUTEX_OWNER_DIED (FUTEX_WAITERS kept), and
        one waiter is woken, which then sees EOWNERDEAD (a PI one is handed the
        futex). Also the entry in `list_op_pending` (a lock or unlock under way).
        At most ROBUST_LIST_LIMIT entries; an unreadable entry ends the walk."""
        threads = self.threads
        assert threads is not None
        head = threads.current.robust_list
        if not head or not self.mapped(uc, head, ROBUST_HEAD_SIZE):
            return
        raw = bytes(uc.mem_read(head, ROBUST_HEAD_SIZE))
        entry, offset, pending = (
            int.from_bytes(raw[0:8], "little"),
            int.from_bytes(raw[8:16], "little", signed=True),
            int.from_bytes(raw[16:24], "little"),
        )
        for _ in range(ROBUST_LIST_LIMIT):
            if entry & ~1 == head or not self.mapped(uc, entry & ~1, 8):
                break
            following = int.from_bytes(uc.mem_read(entry & ~1, 8), "little")
            if entry & ~1 != pending & ~1:
                self._futex_death(uc, (entry & ~1) + offset, pi=bool(entry & 1), pending=False)
            entry = following
        if pending & ~1:
            self._futex_death(uc, (pending & ~1) + offset, pi=bool(pending & 1), pending=True)

    def _futex_death(self, uc: Uc, uaddr: int, pi: bool, pending: bool) -> None:
        """Linux's handle_futex_death for one robust futex of the exiting thread."""
        threads = self.threads
        assert threads is not None
        uaddr &= MASK64
        if uaddr % 4 or not self.mapped(uc, uaddr, 4):
            return
        word = int.from_bytes(uc.mem_read(uaddr, 4), "little")
        if pending and not pi and word == 0:
            threads.wake(uaddr, 1)  # an unlock under way may have missed its wake-up
            return
        if word & FUTEX_TID_MASK != threads.current.tid:
            return
        died = (word & FUTEX_WAITERS) | FUTEX_OWNER_DIED
        waiting = threads.pi_waiters(uaddr) if pi else []
        if waiting:  # the first waiter owns it now, and sees that its owner died
            died = FUTEX_OWNER_DIED | FUTEX_WAITERS | waiting[0].tid
            threads.hand_over(waiting[0])
        self.write_memory(uaddr, died.to_bytes(4, "little"))
        if not pi and word & FUTEX_WAITERS:
            threads.wake(uaddr, 1)

    def sys_sched_getaffinity(self, uc: Uc, _pid: int, size: int, mask: int, *_: int) -> int:
        if size < 8:
            return -EINVAL
        self.write_memory(mask, (1).to_bytes(8, "little"))  # one CPU
        return 8

    # --- the clock (threads.Clock: the machine's, never the host's) ----------------------

    def _clock(self) -> Clock:
        assert self.threads is not None
        return self.threads.clock

    def sys_clock_gettime(self, uc: Uc, _clock: int, tp: int, *_: int) -> int:
        if not self.mapped(uc, tp, 16):
            return -EFAULT
        seconds, nanoseconds = divmod(self._clock().read(), 1_000_000_000)
        self.write_memory(tp, seconds.to_bytes(8, "little") + nanoseconds.to_bytes(8, "little"))
        return 0

    def sys_gettimeofday(self, uc: Uc, tv: int, tz: int, *_: int) -> int:
        if (tv and not self.mapped(uc, tv, 16)) or (tz and not self.mapped(uc, tz, 8)):
            return -EFAULT
        if tv:
            seconds, nanoseconds = divmod(self._clock().read(), 1_000_000_000)
            microseconds = nanoseconds // 1_000
            self.write_memory(
                tv, seconds.to_bytes(8, "little") + microseconds.to_bytes(8, "little")
            )
        if tz:
            self.write_memory(tz, bytes(8))  # UTC, no daylight saving
        return 0

    def sys_time(self, uc: Uc, tloc: int, *_: int) -> int:
        if tloc and not self.mapped(uc, tloc, 8):
            return -EFAULT
        seconds = self._clock().read() // 1_000_000_000
        if tloc:
            self.write_memory(tloc, seconds.to_bytes(8, "little"))
        return seconds

    def sys_nanosleep(self, uc: Uc, request: int, _remain: int, *_: int) -> int | None:
        return self._sleep(uc, request, absolute=False)

    def sys_clock_nanosleep(
        self, uc: Uc, _clock: int, flags: int, request: int, _remain: int, *_: int
    ) -> int | None:
        return self._sleep(uc, request, absolute=bool(flags & TIMER_ABSTIME))

    def _sleep(self, uc: Uc, request: int, absolute: bool) -> int | None:
        """The thread sleeps until the clock reads the deadline: other threads run
        meanwhile, and when none can, the clock jumps there (threads.py). Nothing
        interrupts a sleep, so the remaining time is never written."""
        threads = self.threads
        assert threads is not None
        if not self.mapped(uc, request, 16):
            return -EFAULT
        wait = _timespec_ns(uc, request)
        if wait is None:
            return -EINVAL
        deadline = wait if absolute else threads.clock.now + wait
        if deadline <= threads.clock.now:
            return 0
        threads.sleep(deadline)
        uc.emu_stop()
        return None  # 0 when it runs again

    def sys_prlimit64(self, uc: Uc, _pid: int, resource: int, _new: int, old: int, *_: int) -> int:
        limits = {3: (STACK_RLIMIT, RLIM_INFINITY), 7: (1024, 4096)}
        if old:
            cur, top = limits.get(resource, (RLIM_INFINITY, RLIM_INFINITY))
            self.write_memory(old, cur.to_bytes(8, "little") + top.to_bytes(8, "little"))
        return 0

    def sys_getrandom(self, uc: Uc, buf: int, count: int, *_: int) -> int:
        count = min(count, 1 << 20)
        if count and not self.mapped(uc, buf, count):
            return -EFAULT
        self.write_memory(buf, fixed_random(count))
        return count

    def _killed(self, uc: Uc, signal: int) -> int | None:
        """A signal to itself: no handlers run, the process dies (abort, a panic)."""
        if not signal:
            return 0
        name = _SIGNALS.get(signal, f"signal {signal}")
        self.stop = KernelStop("exit", f"killed by {name}")
        uc.emu_stop()
        return None

    def sys_kill(self, uc: Uc, pid: int, signal: int, *_: int) -> int | None:
        """Only the process itself can be signalled: its pid, 0 (its process group)
        or -pid. Init and the parent exist but belong to nobody the program may
        signal (-EPERM, as for an unprivileged user and init); -1 (every other
        process) and any other pid find none to signal (-ESRCH)."""
        pid = _pid_t(pid)
        if signal > 64:
            return -EINVAL
        if pid in (PID, 0, -PID):
            return self._killed(uc, signal)
        return -EPERM if pid in (1, PID - 1) else -ESRCH

    def sys_tkill(self, uc: Uc, tid: int, signal: int, *_: int) -> int | None:
        tid = _pid_t(tid)
        if tid <= 0 or signal > 64:
            return -EINVAL
        return self._killed(uc, signal) if self._thread_exists(tid) else -ESRCH

    def sys_tgkill(self, uc: Uc, pid: int, tid: int, signal: int, *_: int) -> int | None:
        """A signal to a thread: no handlers run, so the whole process dies, as
        Linux's default action for a fatal signal does."""
        pid, tid = _pid_t(pid), _pid_t(tid)
        if pid <= 0 or tid <= 0 or signal > 64:
            return -EINVAL
        return self._killed(uc, signal) if pid == PID and self._thread_exists(tid) else -ESRCH

    def _thread_exists(self, tid: int) -> bool:
        return self.threads.by_tid(tid) is not None if self.threads is not None else tid == PID

    # --- what one emulated process cannot do -----------------------------------------

    def _unsupported(self, what: str) -> Handler:
        """A call that stops the run with reason `unsupported`, naming what it asked for.

        Answering -ENOSYS instead lets the C library carry on another way (glibc's
        pthread_create gives up and the program exits 0 with half its output):
        the trace would say the program ran normally when it did not.

        A partial of a method, not a closure: a copy of the kernel (Machine.fork,
        Machine.checkpoint) must stop itself, and `copy.deepcopy` copies a bound
        method's kernel but keeps a closure as it is.
        """
        return functools.partial(self._stop_unsupported, what)

    def _stop_unsupported(self, what: str, uc: Uc, *_: int) -> None:
        self.stop = KernelStop("unsupported", f"{what} (the machine runs one process)")
        uc.emu_stop()

    def sys_clone(
        self, uc: Uc, flags: int, stack: int, parent_tid: int, child_tid: int, tls: int, *_: int
    ) -> int | None:
        if not flags & CLONE_THREAD:
            stop = self._unsupported("clone: a new process")
            stop(uc, flags, stack, parent_tid, child_tid, tls, 0)
            return None
        return self._new_thread(uc, flags, stack, parent_tid, child_tid, tls)

    def sys_clone3(self, uc: Uc, args_addr: int, size: int, *rest: int) -> int | None:
        if size < 64 or not self.mapped(uc, args_addr, 64):
            return -EINVAL if size < 64 else -EFAULT
        raw = bytes(uc.mem_read(args_addr, 64))
        flags, _pidfd, child_tid, parent_tid, _signal, stack, stack_size, tls = (
            int.from_bytes(raw[i : i + 8], "little") for i in range(0, 64, 8)
        )
        if not flags & CLONE_THREAD:
            self._unsupported("clone3: a new process")(uc, args_addr, size, *rest)
            return None
        top = stack + stack_size if stack else 0
        return self._new_thread(uc, flags, top, parent_tid, child_tid, tls)

    def _new_thread(
        self, uc: Uc, flags: int, stack: int, parent_tid: int, child_tid: int, tls: int
    ) -> int:
        """A thread of this process: a copy of the caller's CPU at this `syscall`,
        returning 0 on its own stack; the caller gets its thread id and goes on."""
        threads = self.threads
        assert threads is not None
        if len(threads.all) >= MAX_THREADS:
            return -EAGAIN
        rsp = stack or uc.reg_read(x86.UC_X86_REG_RSP)
        start = {
            x86.UC_X86_REG_RIP: uc.reg_read(x86.UC_X86_REG_RIP) + 2,  # after the syscall
            x86.UC_X86_REG_RAX: 0,
            x86.UC_X86_REG_RSP: rsp,
        }
        if flags & CLONE_SETTLS:
            start[x86.UC_X86_REG_FS_BASE] = tls
        thread = threads.create(uc.context_save(), start, rsp)
        thread.tls = start.get(x86.UC_X86_REG_FS_BASE, uc.reg_read(x86.UC_X86_REG_FS_BASE))
        tid = thread.tid.to_bytes(4, "little")
        if flags & CLONE_PARENT_SETTID and self.mapped(uc, parent_tid, 4):
            self.write_memory(parent_tid, tid)
        if flags & CLONE_CHILD_SETTID and self.mapped(uc, child_tid, 4):
            self.write_memory(child_tid, tid)
        if flags & CLONE_CHILD_CLEARTID:
            thread.clear_tid = child_tid
        # The caller goes on, now under the schedule's slices (machine.py).
        threads.reslice = True
        uc.emu_stop()
        return thread.tid

    @staticmethod
    def _string(uc: Uc, addr: int, limit: int = 4096) -> str | None:
        out = bytearray()
        try:
            while len(out) < limit:
                chunk = bytes(uc.mem_read(addr + len(out), 64 - (addr + len(out)) % 64))
                end = chunk.find(b"\0")
                if end >= 0:
                    out += chunk[:end]
                    return out.decode("utf-8", "replace")
                out += chunk
        except UcError:
            return None
        return None


def _sign12(value: int) -> int:
    """FUTEX_WAKE_OP's 12-bit fields are signed."""
    return value - 0x1000 if value & 0x800 else value


def _int32(value: int) -> int:
    """A register's low 32 bits as C's int, negatives as 0 (a count)."""
    value &= 0xFFFFFFFF
    return 0 if value >= 1 << 31 else value


def _pid_t(value: int) -> int:
    """A register's low 32 bits as C's signed pid_t."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _pieces(space: AddressSpace, start: int, end: int) -> list[tuple[int, int]]:
    """The mapped parts of `start ..< end` (without changing `space`)."""
    pieces = []
    for area in space.between(start, end):
        pieces.append((max(area.start, start), min(area.end, end)))
    return pieces


def _returns(value: int) -> Handler:
    def handler(uc: Uc, *_: Any) -> int:
        return value

    return handler


def _timespec_ns(uc: Uc, addr: int) -> int | None:
    """A `struct timespec` in nanoseconds; None where Linux answers -EINVAL (negative
    seconds, or nanoseconds outside 0..999,999,999)."""
    raw = bytes(uc.mem_read(addr, 16))
    seconds = int.from_bytes(raw[:8], "little", signed=True)
    nanoseconds = int.from_bytes(raw[8:], "little", signed=True)
    if seconds < 0 or not 0 <= nanoseconds < 1_000_000_000:
        return None
    return seconds * 1_000_000_000 + nanoseconds
