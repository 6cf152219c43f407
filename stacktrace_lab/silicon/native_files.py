"""The native run's files: the recorder's read-only file view, answered by the tracer.

A program the recorder runs as a Linux process (an ELF) sees the host's
files only through record/linux/files.py's view: the loader's library
directories, /etc/ld.so.cache, the program's own directory, read-only and
bounded. The native run must see the same files, and must not touch the
host either: so its file system calls are never run by the kernel. The
tracer answers them with the recorder's own kernel (`FileKernel`), reading
and writing the traced process's memory through /proc/PID/mem instead of
unicorn's:

- open/openat (read-only; writing or creating is EACCES), read, pread64,
  lseek, close of the view's descriptors, stat/lstat/newfstatat/fstat of
  the view's files, access/faccessat, getcwd, and every call that would
  change the file system (EACCES): the recorder's answers, byte for byte
  (its descriptor numbers, its stat buffers);
- mmap of one of the view's descriptors: an anonymous private mapping runs
  natively in its place (the kernel places it, or MAP_FIXED where the
  program or the trace says), and the tracer copies the file's bytes into
  it. The process never holds a host file descriptor.
"""

from __future__ import annotations

import os
from pathlib import Path

from unicorn import UC_ERR_READ_UNMAPPED
from unicorn.unicorn_py3.unicorn import UcError

from ..record.linux.elf import ElfImage
from ..record.linux.files import MODIFYING, FileKernel, FileView
from ..record.linux.process import linux_process

#: The calls the view answers whatever their descriptor (they name a path, or
#: change the file system); read/pread64/lseek/close/fstat only for its descriptors
#: (and /proc/self/maps, which the recorder's kernel writes from its own map).
_BY_PATH = frozenset((2, 4, 6, 21, 79, 257, 262, 269, 439, *MODIFYING))
_BY_FD = frozenset((0, 3, 5, 8, 17))
_SYS_NEWFSTATAT, _AT_EMPTY_PATH = 262, 0x1000
_MAP_TYPE, _MAP_PRIVATE, _MAP_ANONYMOUS = 0x0F, 0x02, 0x20


class _ProcessMemory:
    """What FileKernel asks of unicorn, over the traced process's memory."""

    def __init__(self, mem_fd: int, pid: int) -> None:
        self.mem_fd = mem_fd
        self.pid = pid

    def mem_read(self, addr: int, size: int) -> bytes:
        try:
            data = os.pread(self.mem_fd, size, addr)
        except OSError:
            data = b""
        if len(data) < size:
            raise UcError(UC_ERR_READ_UNMAPPED)
        return data

    def mem_write(self, addr: int, data: bytes) -> None:
        os.pwrite(self.mem_fd, data, addr)

    def mapped(self, addr: int, size: int) -> bool:
        """Whether addr ..< addr + size lies in the process's mappings."""
        cursor, end = addr, addr + size
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            begin, last = (int(x, 16) for x in line.split()[0].split("-"))
            if begin <= cursor < last:
                cursor = last
                if cursor >= end:
                    return True
        return size == 0

    def emu_stop(self) -> None:
        """FileKernel stops the run at a view limit: its `stop` says so."""


class _Placement:
    """What the recorder's kernel asks of unicorn when it only places mappings:
    nothing is mapped or written (the native kernel does that)."""

    def mem_map(self, *_: object) -> None: ...
    def mem_unmap(self, *_: object) -> None: ...
    def mem_protect(self, *_: object) -> None: ...
    def mem_write(self, *_: object) -> None: ...
    def mem_regions(self) -> list[tuple[int, int, int]]:
        return []


class NativeFiles:
    """The recorder's file view for one native run (one process)."""

    def __init__(self, image: ElfImage, interp: ElfImage | None, mem_fd: int, pid: int) -> None:
        view = FileView(Path(image.path).resolve().parent, ())
        process = linux_process(image, [], [], interp, lambda state: FileKernel(state, view))
        kernel = process.spec.kernel()
        assert isinstance(kernel, FileKernel)
        self.kernel = kernel
        self.memory = _ProcessMemory(mem_fd, pid)
        kernel.write_memory = self.memory.mem_write
        kernel.code_changed = lambda _addr, _size: None
        #: A trace's run: /proc/self/maps is the recorder's too (its kernel's map).
        self.own_files = False
        kernel.mapped = lambda _uc, addr, size: self.memory.mapped(addr, size)  # type: ignore[method-assign,assignment]

    def answers(self, nr: int, args: tuple[int, ...]) -> bool:
        """Whether the view answers this call (not the sandbox's -ENOSYS, nor the kernel)."""
        # The view's descriptors, and the recorder's own files (/proc/self/maps).
        opened = set(self.kernel.open_files)
        if self.own_files:
            opened |= self.kernel.process.files.keys()
        if nr in _BY_PATH:
            if nr == _SYS_NEWFSTATAT and args[3] & _AT_EMPTY_PATH:
                return args[0] in opened
            return True
        return nr in _BY_FD and args[0] in opened

    def answer(self, nr: int, args: tuple[int, ...]) -> int:
        """The recorder's kernel's answer (filling the process's memory as it does)."""
        handler = self.kernel.handlers.get(nr)
        if handler is None:
            return -38  # ENOSYS
        try:
            result = handler(self.memory, *args)  # type: ignore[arg-type]
        except UcError:
            return -14  # EFAULT
        return int(result) if result is not None else 0

    def place(self, nr: int, args: tuple[int, ...]) -> int:
        """mmap, munmap or brk in the recorder's kernel's own map of the process
        (nothing mapped): for an mmap, the address the recorder gives it (or its
        -errno), so the native one goes there too (a trace's run)."""
        handler = self.kernel.handlers.get(nr)
        if handler is None:
            return 0
        result = handler(_Placement(), *args)  # type: ignore[arg-type]
        return int(result) if result is not None else 0

    def mapped_file(self, args: tuple[int, ...]) -> bytes | None:
        """An mmap of one of the view's descriptors: the bytes the mapping starts
        with (the file's, from the offset; None: not such an mmap)."""
        flags, fd, offset = args[3], args[4], args[5]
        if flags & _MAP_ANONYMOUS or fd not in self.kernel.open_files:
            return None
        return self.kernel.open_files[fd].data[offset : offset + args[1]]

    @staticmethod
    def anonymous_flags(flags: int) -> int:
        """The flags of the anonymous private mapping run in a file mapping's place."""
        return (flags & ~_MAP_TYPE) | _MAP_PRIVATE | _MAP_ANONYMOUS
