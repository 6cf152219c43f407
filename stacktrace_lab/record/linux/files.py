"""The files an emulated program sees: a read-only, bounded view of the host.

A dynamically linked program's loader opens, reads and maps its libraries
through system calls. They are answered from the host's files, but only
through this view (docs/machine.md, "The file view"):

- readable: the loader's library directories (`LIBRARY_DIRS`),
  /etc/ld.so.cache, the program's own directory (seen as `PROGRAM_DIR`), and
  what `--allow-read PATH` adds; /proc/self/maps comes from the process
  itself (syscalls.py). Anything else: ENOENT, as if it were not there.
- nothing is ever written: opening for writing or creating, rename, unlink,
  mkdir and the like get EACCES, whatever the path.
- bounded: a file of at most `MAX_FILE_BYTES`, at most `MAX_FILES` distinct
  files, read whole once and kept (the same bytes for every pass).
- recorded: each distinct file read, with its size and sha256, goes into the
  trace's metadata (`options.files`), so replay can refuse a machine whose
  libraries differ.

Symbolic links are followed on the host and the target must lie in the view
too: a link in the program's directory to /etc/passwd reads as ENOENT.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unicorn import UC_PROT_NONE
from unicorn.unicorn_py3.unicorn import Uc, UcError

from ...arch import PAGE
from ...layout import page_ceil
from ...limits import MAX_OPEN_FILES
from ..machine.syscalls import (
    EBADF,
    EFAULT,
    EINVAL,
    EMFILE,
    ENOENT,
    ENOMEM,
    EPERM,
    MMAP_MIN_ADDR,
    NAMES,
    TASK_SIZE,
    UID,
    Area,
    Handler,
    KernelStop,
    LinuxKernel,
    ProcessState,
    _perm_text,
    _uc_perms,
)

#: Where the emulated process believes its program lies (process.PROGRAM_DIR).
PROGRAM_DIR = "/stacktrace-lab"
#: Where glibc's loader looks for libraries on x86-64 Debian/Ubuntu/Fedora.
LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/usr/local/lib",
)
LD_SO_CACHE = "/etc/ld.so.cache"
MAX_FILE_BYTES = 64 << 20
MAX_FILES = 64
EACCES, ENODEV, ENOTDIR, EISDIR = 13, 19, 20, 21
AT_FDCWD = -100 & ((1 << 64) - 1)
AT_EMPTY_PATH = 0x1000
O_ACCMODE, O_CREAT, O_TRUNC, O_DIRECTORY = 3, 0x40, 0x200, 0x10000
#: At most this many names in one directory the program lists (more: the run stops).
MAX_DIR_ENTRIES = 4096
#: getdents64's d_type values (dirent.h).
DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12
W_OK = 2
MAP_FIXED, MAP_ANONYMOUS = 0x10, 0x20
#: A fixed device number for every file of the view (inodes count from 1).
DEVICE = 0x801

#: System calls that would change the file system: always EACCES.
MODIFYING = {
    76: "truncate", 82: "rename", 83: "mkdir", 84: "rmdir", 85: "creat", 86: "link",
    87: "unlink", 88: "symlink", 90: "chmod", 92: "chown", 94: "lchown", 133: "mknod",
    258: "mkdirat", 259: "mknodat", 260: "fchownat", 263: "unlinkat", 264: "renameat",
    265: "linkat", 266: "symlinkat", 268: "fchmodat", 316: "renameat2",
}  # fmt: skip
FILE_NAMES = {
    **MODIFYING,
    6: "lstat", 17: "pread64", 18: "pwrite64", 21: "access", 77: "ftruncate",
    78: "getdents", 79: "getcwd", 91: "fchmod", 93: "fchown", 217: "getdents64", 269: "faccessat",
    439: "faccessat2",
}  # fmt: skip


@dataclass(frozen=True)
class HostFile:
    """One file the program read: where it is on the host, and what it held."""

    host_path: str
    data: bytes
    sha256: str
    inode: int

    def metadata(self) -> dict[str, object]:
        return {"path": self.host_path, "size": len(self.data), "sha256": self.sha256}


@dataclass(frozen=True)
class HostDir:
    """One directory the program listed: its entries as getdents64 gives them."""

    host_path: str
    #: (name, d_type, inode), "." and ".." first, then by name (bytes order).
    entries: tuple[tuple[bytes, int, int], ...]
    #: sha256 of `listing(...)`: the names and types, what replay compares.
    sha256: str
    size: int
    inode: int

    def metadata(self) -> dict[str, object]:
        return {
            "path": self.host_path,
            "kind": "directory",
            "size": self.size,
            "sha256": self.sha256,
        }


def listing(host_path: str) -> list[tuple[bytes, int]]:
    """A directory's names and types, sorted (the order getdents64 gives them in
    the view, whatever the file system's): what the program sees and the trace
    hashes. Raises FileLimit past `MAX_DIR_ENTRIES`, OSError if unreadable."""
    found: list[tuple[bytes, int]] = []
    with os.scandir(host_path) as entries:
        for entry in entries:
            if len(found) >= MAX_DIR_ENTRIES:
                raise FileLimit(f"{host_path} has more than {MAX_DIR_ENTRIES} entries")
            found.append((os.fsencode(entry.name), _d_type(entry)))
    return [(b".", DT_DIR), (b"..", DT_DIR), *sorted(found)]


def _d_type(entry: os.DirEntry[str]) -> int:
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:
        return DT_UNKNOWN
    kinds = (
        (stat.S_ISLNK, DT_LNK), (stat.S_ISDIR, DT_DIR), (stat.S_ISREG, DT_REG),
        (stat.S_ISFIFO, DT_FIFO), (stat.S_ISCHR, DT_CHR), (stat.S_ISBLK, DT_BLK),
        (stat.S_ISSOCK, DT_SOCK),
    )  # fmt: skip
    return next((kind for test, kind in kinds if test(mode)), DT_UNKNOWN)


def listing_digest(names: list[tuple[bytes, int]]) -> tuple[int, str]:
    """(size, sha256) of a listing: each name, a NUL, its type as one byte."""
    data = b"".join(name + b"\0" + bytes([kind]) for name, kind in names)
    return len(data), hashlib.sha256(data).hexdigest()


class FileLimit(Exception):
    """The view's bounds were reached (too many files, a file too large)."""


@dataclass
class FileView:
    """The host's files as the program may read them; shared by every pass of a run."""

    program_dir: Path
    allowed: tuple[Path, ...] = ()
    #: Files read so far, by their real host path (one entry each).
    files: dict[str, HostFile] = field(default_factory=dict)
    #: Directories listed so far, by their real host path.
    dirs: dict[str, HostDir] = field(default_factory=dict)
    #: The inode number each host path shows, in the order first seen (from 1).
    inodes: dict[str, int] = field(default_factory=dict)

    def inode_of(self, host_path: str) -> int:
        return self.inodes.setdefault(host_path, len(self.inodes) + 1)

    def roots(self) -> list[Path]:
        found = [Path(os.path.realpath(d)) for d in (*LIBRARY_DIRS, LD_SO_CACHE)]
        return [*found, Path(os.path.realpath(self.program_dir)), *self.allowed]

    def host_path(self, path: str) -> str | None:
        """The real host path `path` names in the view, or None (not in the view)."""
        if not path.startswith("/"):
            path = f"{PROGRAM_DIR}/{path}"
        path = os.path.normpath(path)
        if path == PROGRAM_DIR or path.startswith(PROGRAM_DIR + "/"):
            path = str(self.program_dir) + path[len(PROGRAM_DIR) :]
        real = Path(os.path.realpath(path))
        if any(real == root or root in real.parents for root in self.roots()):
            return str(real)
        return None

    def lookup(self, path: str) -> HostFile | int:
        """The file at `path` (read once, bounded), or a negative errno."""
        real = self.host_path(path)
        if real is None:
            return -ENOENT
        known = self.files.get(real)
        if known is not None:
            return known
        try:
            info = os.stat(real)
        except OSError:
            return -ENOENT
        if stat.S_ISDIR(info.st_mode):
            return -EISDIR
        if not stat.S_ISREG(info.st_mode):
            return -ENOENT  # no devices, FIFOs or sockets: they could block or never end
        if info.st_size > MAX_FILE_BYTES:
            raise FileLimit(f"{real} is larger than {MAX_FILE_BYTES} bytes")
        if len(self.files) + len(self.dirs) >= MAX_FILES:
            raise FileLimit(f"the program read more than {MAX_FILES} files")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
            try:
                data = os.read(fd, MAX_FILE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError:
            return -ENOENT
        if len(data) > MAX_FILE_BYTES:
            raise FileLimit(f"{real} is larger than {MAX_FILE_BYTES} bytes")
        entry = HostFile(real, data, hashlib.sha256(data).hexdigest(), self.inode_of(real))
        self.files[real] = entry
        return entry

    def lookup_dir(self, path: str) -> HostDir | int:
        """The directory at `path`, listed once and bounded, or a negative errno."""
        real = self.host_path(path)
        if real is None:
            return -ENOENT
        known = self.dirs.get(real)
        if known is not None:
            return known
        if not os.path.isdir(real):
            return -ENOTDIR if os.path.exists(real) else -ENOENT
        if len(self.files) + len(self.dirs) >= MAX_FILES:
            raise FileLimit(f"the program read more than {MAX_FILES} files")
        try:
            names = listing(real)
        except OSError:
            return -EACCES

        def inode(name: bytes) -> int:
            if name == b".":
                return self.inode_of(real)
            if name == b"..":
                return self.inode_of(os.path.dirname(real))
            return self.inode_of(os.path.join(real, os.fsdecode(name)))

        entries = tuple((name, kind, inode(name)) for name, kind in names)
        size, digest = listing_digest(names)
        found = HostDir(real, entries, digest, size, self.inode_of(real))
        self.dirs[real] = found
        return found

    def is_dir(self, path: str) -> bool:
        real = self.host_path(path)
        return real is not None and os.path.isdir(real)

    def metadata(self) -> list[dict[str, object]]:
        read: list[HostFile | HostDir] = [*self.files.values(), *self.dirs.values()]
        return [f.metadata() for f in sorted(read, key=lambda f: f.host_path)]


def changed_files(recorded: list[dict[str, object]]) -> str | None:
    """The first recorded file that is missing or differs on this machine, as one
    phrase, or None when every one is as recorded."""
    for entry in recorded[:MAX_FILES]:
        if not isinstance(entry, dict):
            return "the trace's list of files read is malformed"
        path = str(entry.get("path"))
        if entry.get("kind") == "directory":
            try:
                size, digest = listing_digest(listing(path))
            except (OSError, FileLimit):
                return f"{path} is not a directory on this machine"
            if (size, digest) != (entry.get("size"), entry.get("sha256")):
                return (
                    f"{path} lists other files than the one recorded (sha256 {entry.get('sha256')})"
                )
            continue
        # The list comes from a trace file: only a bounded regular file is read
        # (a FIFO or /dev/zero named there must not hang or fill memory).
        try:
            info = os.stat(path)
        except OSError:
            return f"{path} is not on this machine"
        if not stat.S_ISREG(info.st_mode) or info.st_size != entry.get("size"):
            return f"{path} differs from the one recorded (size {entry.get('size')})"
        if info.st_size > MAX_FILE_BYTES:
            return f"{path} is larger than {MAX_FILE_BYTES} bytes"
        try:
            data = Path(path).read_bytes()
        except OSError:
            return f"{path} cannot be read"
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            return f"{path} differs from the one recorded (sha256 {entry.get('sha256')})"
    return None


@dataclass
class FileMap:
    """A file mapped into memory (a library's segment)."""

    start: int
    size: int
    path: str  # the host path
    offset: int
    prot: int


class FileKernel(LinuxKernel):
    """LinuxKernel with the read-only file view: open, read, stat and map files."""

    def __init__(self, process: ProcessState, view: FileView) -> None:
        super().__init__(process)
        self.view = view
        self.names = {**NAMES, **FILE_NAMES}
        #: The open files of the view, by descriptor (process.files: their host paths).
        self.open_files: dict[int, HostFile] = {}
        #: The open directories, by descriptor: the path the program named (what a
        #: relative path with that descriptor is resolved from) and the host's.
        #: process.offsets holds the index of the next entry getdents64 gives.
        self.open_dirs: dict[int, tuple[str, str]] = {}
        #: Every file mapping, in call order (where the libraries were loaded).
        self.file_maps: list[FileMap] = []
        self.handlers.update(
            {
                0: self.sys_read,
                2: self.sys_open,
                4: self.sys_stat,
                6: self.sys_stat,
                8: self.sys_lseek,
                9: self.sys_mmap,
                17: self.sys_pread64,
                18: _error(EBADF),
                21: self.sys_access,
                217: self.sys_getdents64,
                78: self.sys_getdents,
                77: _error(EINVAL),
                79: self.sys_getcwd,
                91: _error(EBADF),
                93: _error(EBADF),
                257: self.sys_openat,
                262: self.sys_newfstatat,
                269: self.sys_faccessat,
                439: self.sys_faccessat,
                **{nr: _error(EACCES) for nr in MODIFYING},
            }
        )

    def _lookup(self, uc: Uc, path: str) -> HostFile | int:
        try:
            return self.view.lookup(path)
        except FileLimit as exc:
            # A bound of the view ends the run, as the trace size limit does.
            self.stop = KernelStop("limit", f"the file view's limit: {exc}")
            uc.emu_stop()
            return -EACCES

    # --- opening --------------------------------------------------------------------

    def sys_open(self, uc: Uc, path_addr: int, flags: int, mode: int, *_: int) -> int:
        return self.sys_openat(uc, AT_FDCWD, path_addr, flags, mode)

    def _resolve(self, dirfd: int, path: str) -> str | int:
        """The path `path` names, given relative to `dirfd` (openat's rule): itself
        when absolute, else from the working directory (AT_FDCWD: the program's)
        or from the directory `dirfd` is open on. Or a negative errno."""
        if not path:
            return -ENOENT
        if path.startswith("/"):
            return path
        # A descriptor is an int: the register's upper half is not part of it.
        dirfd &= 0xFFFFFFFF
        if dirfd == AT_FDCWD & 0xFFFFFFFF:
            return f"{PROGRAM_DIR}/{path}"
        opened = self.open_dirs.get(dirfd)
        if opened is not None:
            return f"{opened[0].rstrip('/')}/{path}"
        known = dirfd in self.process.files or dirfd in (0, 1, 2)
        return -ENOTDIR if known else -EBADF

    def _new_fd(self, host_path: str) -> int:
        fd = 3
        while fd in self.process.files:
            fd += 1
        if fd >= MAX_OPEN_FILES:  # RLIMIT_NOFILE, as for /proc/self/maps
            return -EMFILE
        self.process.files[fd] = host_path
        self.process.offsets[fd] = 0
        return fd

    def sys_openat(self, uc: Uc, dirfd: int, path_addr: int, *rest: int) -> int:
        flags = rest[0] if rest else 0
        path = self._string(uc, path_addr)
        if path is None:
            return -EFAULT
        if flags & (O_ACCMODE | O_CREAT | O_TRUNC):
            return -EACCES  # the host is never written
        if path == "/proc/self/maps":
            return super().sys_openat(uc, dirfd, path_addr, *rest)
        named = self._resolve(dirfd, path)
        if isinstance(named, int):
            return named
        if self.view.is_dir(named):
            return self._open_dir(named)
        if flags & O_DIRECTORY:
            found = self._lookup(uc, named)
            return found if isinstance(found, int) else -ENOTDIR
        found = self._lookup(uc, named)
        if isinstance(found, int):
            return found
        fd = self._new_fd(found.host_path)
        if fd >= 0:
            self.open_files[fd] = found
        return fd

    def _open_dir(self, named: str) -> int:
        """A directory opened to be listed (opendir) or to open files from (openat).
        It is listed (and the listing recorded) only when the program lists it."""
        real = self.view.host_path(named)
        if real is None:
            return -ENOENT
        fd = self._new_fd(real)
        if fd >= 0:
            self.open_dirs[fd] = (named, real)
        return fd

    def sys_getdents64(self, uc: Uc, fd: int, buf: int, count: int, *_: int) -> int:
        """The directory's entries (linux_dirent64), as many whole ones as fit."""
        return self._getdents(uc, fd, buf, count, _dirent64)

    def sys_getdents(self, uc: Uc, fd: int, buf: int, count: int, *_: int) -> int:
        """The legacy call: the same entries as `struct linux_dirent` (the type
        in the record's last byte), the same order and positions."""
        return self._getdents(uc, fd, buf, count, _dirent)

    def _getdents(
        self,
        uc: Uc,
        fd: int,
        buf: int,
        count: int,
        record_of: Callable[[bytes, int, int, int], bytes],
    ) -> int:
        opened = self.open_dirs.get(fd)
        if opened is None:
            return -ENOTDIR if fd in self.open_files else -EBADF
        try:
            listed = self.view.lookup_dir(opened[0])
        except FileLimit as exc:
            self.stop = KernelStop("limit", f"the file view's limit: {exc}")
            uc.emu_stop()
            return -EACCES
        if isinstance(listed, int):
            return listed
        entries = listed.entries
        index = self.process.offsets[fd]
        out = bytearray()
        while index < len(entries):
            name, kind, inode = entries[index]
            record = record_of(name, kind, inode, index + 1)  # d_off: where the next one is
            if len(out) + len(record) > count:
                break
            out += record
            index += 1
        if not out and index < len(entries):
            return -EINVAL  # the buffer is too small for the next entry
        if out and not self.mapped(uc, buf, len(out)):
            return -EFAULT
        if out:
            self.write_memory(buf, bytes(out))
        self.process.offsets[fd] = index
        return len(out)

    def sys_read(self, uc: Uc, fd: int, buf: int, count: int, *_: int) -> int:
        if fd in self.open_dirs:
            return -EISDIR
        entry = self.open_files.get(fd)
        if entry is None:
            return super().sys_read(uc, fd, buf, count)
        return self.read_from(uc, fd, entry.data, buf, count)

    def sys_close(self, uc: Uc, fd: int, *_: int) -> int:
        self.open_files.pop(fd, None)
        self.open_dirs.pop(fd, None)
        return super().sys_close(uc, fd)

    def sys_lseek(self, uc: Uc, fd: int, offset: int, whence: int, *_: int) -> int:
        entry = self.open_files.get(fd)
        offset -= (1 << 64) if offset >> 63 else 0
        if fd in self.open_dirs:
            # rewinddir and seekdir: a position is an entry's index (getdents64's d_off).
            place = {0: 0, 1: self.process.offsets[fd]}.get(whence)
            if place is None or place + offset < 0:
                return -EINVAL
            self.process.offsets[fd] = place + offset
            return place + offset
        if entry is None:
            return -EBADF
        base = {0: 0, 1: self.process.offsets[fd], 2: len(entry.data)}.get(whence)
        if base is None or base + offset < 0:
            return -EINVAL
        self.process.offsets[fd] = base + offset
        return base + offset

    def sys_pread64(self, uc: Uc, fd: int, buf: int, count: int, offset: int, *_: int) -> int:
        entry = self.open_files.get(fd)
        if entry is None:
            return -EISDIR if fd in self.open_dirs else -EBADF
        chunk = entry.data[offset : offset + count]
        if chunk and not self.mapped(uc, buf, len(chunk)):
            return -EFAULT
        if chunk:
            self.write_memory(buf, chunk)
        return len(chunk)

    # --- asking about files ----------------------------------------------------------

    def _write_stat(self, statbuf: int, mode: int, size: int, inode: int) -> int:
        buf = bytearray(144)
        buf[0:8] = DEVICE.to_bytes(8, "little")
        buf[8:16] = inode.to_bytes(8, "little")
        buf[16:24] = (1).to_bytes(8, "little")  # st_nlink
        buf[24:28] = mode.to_bytes(4, "little")
        buf[28:32] = UID.to_bytes(4, "little")
        buf[32:36] = UID.to_bytes(4, "little")
        buf[48:56] = size.to_bytes(8, "little")
        buf[56:64] = PAGE.to_bytes(8, "little")  # st_blksize
        buf[64:72] = ((size + 511) // 512).to_bytes(8, "little")  # st_blocks
        self.write_memory(statbuf, bytes(buf))
        return 0

    def _stat(self, fd: int, statbuf: int) -> int:
        opened = self.open_dirs.get(fd)
        if opened is not None:
            return self._write_stat(statbuf, 0o040755, PAGE, self.view.inode_of(opened[1]))
        entry = self.open_files.get(fd)
        if entry is None:
            return super()._stat(fd, statbuf)
        return self._write_stat(statbuf, 0o100644, len(entry.data), entry.inode)

    def _stat_path(self, uc: Uc, path: str, statbuf: int) -> int:
        if self.view.is_dir(path):
            real = self.view.host_path(path)
            assert real is not None
            return self._write_stat(statbuf, 0o040755, PAGE, self.view.inode_of(real))
        found = self._lookup(uc, path)
        if isinstance(found, int):
            return found
        return self._write_stat(statbuf, 0o100644, len(found.data), found.inode)

    def sys_stat(self, uc: Uc, path_addr: int, statbuf: int, *_: int) -> int:
        path = self._string(uc, path_addr)
        return -EFAULT if path is None else self._stat_path(uc, path, statbuf)

    def sys_newfstatat(self, uc: Uc, fd: int, path_addr: int, statbuf: int, *rest: int) -> int:
        flags = rest[0] if rest else 0
        path = self._string(uc, path_addr)
        if path is None:
            return -EFAULT
        if not path and flags & AT_EMPTY_PATH:
            return self._stat(fd, statbuf)
        named = self._resolve(fd, path)
        return named if isinstance(named, int) else self._stat_path(uc, named, statbuf)

    def sys_access(self, uc: Uc, path_addr: int, mode: int, *_: int) -> int:
        return self.sys_faccessat(uc, AT_FDCWD, path_addr, mode)

    def sys_faccessat(self, uc: Uc, dirfd: int, path_addr: int, mode: int, *_: int) -> int:
        given = self._string(uc, path_addr)
        if given is None:
            return -EFAULT
        path = self._resolve(dirfd, given)
        if isinstance(path, int):
            return path
        if self.view.is_dir(path):
            return -EACCES if mode & W_OK else 0
        found = self._lookup(uc, path)
        if isinstance(found, int):
            return found
        return -EACCES if mode & W_OK else 0

    def sys_getcwd(self, uc: Uc, buf: int, size: int, *_: int) -> int:
        cwd = PROGRAM_DIR.encode() + b"\0"
        if size < len(cwd):
            return -34  # ERANGE
        if not self.mapped(uc, buf, len(cwd)):
            return -EFAULT
        self.write_memory(buf, cwd)
        return len(cwd)

    # --- mapping files ---------------------------------------------------------------

    def sys_mmap(
        self, uc: Uc, addr: int, length: int, prot: int, flags: int, fd: int, offset: int
    ) -> int:
        if flags & MAP_ANONYMOUS:
            before = len(self.process.mmaps)
            result = super().sys_mmap(uc, addr, length, prot, flags, fd, offset)
            # A library's .bss laid over its own mapping is part of the library,
            # not an anonymous mapping a stack could be found in.
            if flags & MAP_FIXED and len(self.process.mmaps) > before and self._in_file(addr):
                self.process.mmaps.pop()
            return result
        entry = self.open_files.get(fd)
        if entry is None:
            return -ENODEV if fd in self.open_dirs else -EBADF
        if length == 0 or offset % PAGE:
            return -EINVAL
        if length > TASK_SIZE:
            return -ENOMEM
        size = page_ceil(length)
        p = self.process
        # Placed and bounded as an anonymous mapping is (syscalls.py).
        if flags & MAP_FIXED:
            if addr % PAGE:
                return -EINVAL
            if addr < MMAP_MIN_ADDR:
                return -EPERM
            if addr + size > TASK_SIZE or not self._room_for(size):
                return -ENOMEM
            self._unmap(uc, addr, size)
            start = addr
        else:
            found = p.space.highest_below(p.mmap_cursor, size, MMAP_MIN_ADDR)
            if found is None or not self._room_for(size):
                return -ENOMEM
            start = found
            p.mmap_cursor = start
        # Copied from the file's bytes: a private mapping the program may change
        # (relocations) without the file changing; past the end of the file, zeros.
        try:
            uc.mem_map(start, size, _uc_perms(prot) if prot else UC_PROT_NONE)
        except UcError:
            return -ENOMEM  # a page unicorn holds that the process map does not
        data = entry.data[offset : offset + length]
        if data:
            uc.mem_write(start, data)
        self.code_changed(start, size)
        self.file_maps.append(FileMap(start, size, entry.host_path, offset, prot))
        p.space.add(Area(start, start + size, _perm_text(prot), entry.host_path, "code"))
        return start

    def _in_file(self, addr: int) -> bool:
        return any(m.start <= addr < m.start + m.size for m in self.file_maps)


def _dirent64(name: bytes, kind: int, inode: int, next_offset: int) -> bytes:
    """`struct linux_dirent64`: ino, off, reclen, type, the name and its NUL, 8-aligned."""
    size = (19 + len(name) + 1 + 7) // 8 * 8
    record = bytearray(size)
    record[0:8] = inode.to_bytes(8, "little")
    record[8:16] = next_offset.to_bytes(8, "little")
    record[16:18] = size.to_bytes(2, "little")
    record[18] = kind
    record[19 : 19 + len(name)] = name
    return bytes(record)


def _dirent(name: bytes, kind: int, inode: int, next_offset: int) -> bytes:
    """getdents' `struct linux_dirent`: ino, off, reclen, the name and its NUL, then
    the type in the record's last byte (Linux's filldir: reclen is the name's
    offset, 18, + its length + 2, aligned to 8)."""
    size = (18 + len(name) + 2 + 7) // 8 * 8
    record = bytearray(size)
    record[0:8] = inode.to_bytes(8, "little")
    record[8:16] = next_offset.to_bytes(8, "little")
    record[16:18] = size.to_bytes(2, "little")
    record[18 : 18 + len(name)] = name
    record[size - 1] = kind
    return bytes(record)


def _error(errno: int) -> Handler:
    def handler(uc: Uc, *_: int) -> int:
        return -errno

    return handler
