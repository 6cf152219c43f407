"""A Linux process as the kernel builds it from an ELF (the ELF front end's machine).

Fixed addresses, as with ASLR off (docs/machine.md, "Real programs"):

| what | where |
|---|---|
| a static executable | at its own addresses (0x400000 for gcc) |
| a static-pie | at `PIE_BASE` = 0x555555554000 |
| the heap (brk) | from the page after the highest segment |
| a dynamic program's interpreter | ending at `MMAP_TOP` (record/linux/dynamic.py) |
| anonymous and file mmap | downwards from `MMAP_TOP` = 0x7ffff7fff000, or the interpreter |
| the stack | 8 MiB under `STACK_TOP` = 0x7ffffffff000 |

The stack starts as the kernel leaves it: argc, argv, envp, the auxiliary
vector (AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_ENTRY, AT_RANDOM with
fixed bytes, AT_EXECFN, AT_PLATFORM...; no vDSO), then the strings. rsp
points at argc, rflags = 0x202, every other register is zero.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from ...arch import PAGE
from ...errors import BadInput
from ...layout import Region, RegionKind, page_ceil
from ..machine import initial_state
from ..machine.cpu import CPUID
from ..machine.machine import MachineSpec, Mapping
from ..machine.syscalls import MMAP_MIN_ADDR, Area, LinuxKernel, ProcessState, fixed_random
from .elf import ElfImage
from .naming import PROCESS_STACK

#: Where the process believes its program is (argv[0], /proc/self/exe,
#: AT_EXECFN): a fixed directory, so the trace does not depend on the host's.
PROGRAM_DIR = "/stacktrace-lab"
STACK_TOP = 0x7FFFFFFFF000
STACK_SIZE = 8 << 20
MMAP_TOP = 0x7FFFF7FFF000

AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ, AT_BASE, AT_FLAGS, AT_ENTRY = (
    0,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
)
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN, AT_MINSIGSTKSZ = 23, 25, 26, 31, 51
#: What the CPU model's cpuid leaf 1 edx announces, as Linux passes it (no HTT:
#: one logical CPU). AT_HWCAP2 is 0: leaf 7 announces no FSGSBASE.
HWCAP = CPUID[(1, None)][3]
MINSIGSTKSZ = 2048


@dataclass(frozen=True)
class Process:
    spec: MachineSpec
    state: ProcessState


def _segment_mappings(image: ElfImage) -> list[Mapping]:
    """Segments on pages; a page two segments share gets both's permissions.

    A sweep over the segments' page-aligned ends, not a dict entry per page:
    a `p_memsz` of gigabytes or a thousand segments cost what their count does.
    """
    events: list[tuple[int, int, str]] = []  # (address, +1 or -1, permissions)
    for seg in image.segments:
        perms = seg.perms.replace("-", "") + "m"  # m: mapped, whatever the permissions
        events.append((seg.vaddr // PAGE * PAGE, 1, perms))
        events.append((page_ceil(seg.vaddr + seg.memsz), -1, perms))
    events.sort()
    active = {"r": 0, "w": 0, "x": 0, "m": 0}
    mappings: list[Mapping] = []
    for i, (addr, delta, perms) in enumerate(events):
        for ch in perms:
            active[ch] += delta
        end = events[i + 1][0] if i + 1 < len(events) else addr
        if end <= addr or not active["m"]:
            continue
        text = "".join(ch if active[ch] else "-" for ch in "rwx")
        last = mappings[-1] if mappings else None
        if last is not None and last.start + last.size == addr and last.perms == text:
            mappings[-1] = Mapping(last.start, last.size + end - addr, text)
        else:
            mappings.append(Mapping(addr, end - addr, text))
    # The bytes: each segment's file part, written once every page is mapped.
    for seg in image.segments:
        if seg.data:
            mappings.append(Mapping(0, 0, seg.perms, seg.data[: seg.memsz], seg.vaddr))
    return mappings


def _segment_regions(image: ElfImage, prefix: str = "", whole_pages: bool = False) -> list[Region]:
    """`prefix`: a loaded library's name before each of its regions' names.
    `whole_pages`: a writable segment's region runs to the end of its last page
    (the loader's own early allocator hands out the rest of that page)."""
    names = {"r-x": "text", "r--": "rodata", "rw-": "data", "rwx": "text"}
    regions: list[Region] = []
    used: dict[str, int] = {}
    for seg in sorted(image.segments, key=lambda s: ("x" not in s.perms, s.vaddr)):
        name = names.get(seg.perms, "segment")
        used[name] = used.get(name, 0) + 1
        if used[name] > 1:
            name = f"{name}_{used[name]}"
        kind: RegionKind = "code" if "x" in seg.perms else "data"
        size = seg.memsz
        if whole_pages and "w" in seg.perms:
            size = page_ceil(seg.vaddr + seg.memsz) - seg.vaddr
        regions.append(Region(prefix + name, kind, seg.vaddr, size, seg.perms))
    return regions


def _initial_stack(
    image: ElfImage,
    argv: list[str],
    env: list[str],
    stack_top: int = STACK_TOP,
    interp_base: int = 0,
) -> tuple[int, bytes]:
    """(rsp, the bytes from rsp up to `stack_top`) as Linux lays them out."""
    strings = bytearray()
    top = stack_top - 8  # the last 8 bytes stay zero

    def put(data: bytes) -> int:
        """Place data below what was placed before; returns its address."""
        nonlocal strings
        strings = bytearray(data) + strings
        return top - len(strings)

    execfn = put(program_path(image).encode() + b"\0")
    env_ptrs = [put(e.encode() + b"\0") for e in reversed(env)][::-1]
    arg_ptrs = [put(a.encode() + b"\0") for a in reversed(argv)][::-1]
    platform = put(b"x86_64\0")
    random = put(fixed_random(16))
    auxv = [
        (AT_PHDR, image.phdr),
        (AT_PHENT, image.phent),
        (AT_PHNUM, image.phnum),
        (AT_PAGESZ, PAGE),
        (AT_BASE, interp_base),  # where the program interpreter is, 0 without one
        (AT_FLAGS, 0),
        (AT_ENTRY, image.entry),
        (AT_UID, 1000),
        (AT_EUID, 1000),
        (AT_GID, 1000),
        (AT_EGID, 1000),
        (AT_SECURE, 0),
        (AT_RANDOM, random),
        (AT_HWCAP, HWCAP),
        (AT_HWCAP2, 0),
        (AT_CLKTCK, 100),
        (AT_PLATFORM, platform),
        (AT_EXECFN, execfn),
        (AT_MINSIGSTKSZ, MINSIGSTKSZ),
        (AT_NULL, 0),
    ]
    words = [len(argv), *arg_ptrs, 0, *env_ptrs, 0]
    for key, value in auxv:
        words += [key, value]
    strings_start = top - len(strings)
    rsp = (strings_start - 8 * len(words)) // 16 * 16
    vector = b"".join(w.to_bytes(8, "little") for w in words)
    gap = strings_start - (rsp + len(vector))
    return rsp, vector + bytes(gap) + bytes(strings) + bytes(8)


def _stack_top(image: ElfImage) -> int:
    """Where the stack ends: STACK_TOP, or below the segments that lie in its 8 MiB.

    A program may put a segment where the stack would be (Linux, with its stack
    at the top and growing down on demand, still runs such a file); here the
    whole stack is mapped at once, so it moves down below them.
    """
    top = STACK_TOP
    while True:
        clash = [
            s.vaddr // PAGE * PAGE
            for s in image.segments
            if s.vaddr < top and s.vaddr + s.memsz > top - STACK_SIZE
        ]
        if not clash:
            return top
        top = min(clash)
        if top - STACK_SIZE < MMAP_MIN_ADDR:
            raise BadInput(f"{image.path}: its segments leave no room for the process stack")


def _interp_areas(interp: ElfImage) -> list[Area]:
    """The interpreter's mappings, named by its path as /proc/self/maps shows them."""
    return [
        Area(
            s.vaddr // PAGE * PAGE,
            page_ceil(s.vaddr + s.memsz),
            s.perms + "p",
            str(interp.path),
            "code" if "x" in s.perms else "data",
        )
        for s in interp.segments
    ]


def program_path(image: ElfImage) -> str:
    return f"{PROGRAM_DIR}/{image.path.name}"


def linux_process(
    image: ElfImage,
    args: list[str],
    env: list[str],
    interp: ElfImage | None = None,
    make_kernel: Callable[[ProcessState], LinuxKernel] = LinuxKernel,
) -> Process:
    """The process of `image` run with arguments `args` (argv[0] is its fixed path).

    `interp`: a dynamically linked program's interpreter, already placed at its
    base (record/linux/dynamic.py): mapped too, and run first, as the kernel does.
    `make_kernel`: the system calls' kernel for a copy of the process state."""
    argv = [program_path(image), *args]
    interp_base = interp.load_base if interp is not None else 0
    stack_top = _stack_top(image)
    rsp, stack_bytes = _initial_stack(image, argv, env, stack_top, interp_base)
    stack_base = stack_top - STACK_SIZE
    brk_start = page_ceil(image.end)
    state = ProcessState(
        path=program_path(image),
        areas=[
            *(
                Area(
                    s.vaddr // PAGE * PAGE,
                    page_ceil(s.vaddr + s.memsz),
                    s.perms + "p",
                    program_path(image),
                    "code" if "x" in s.perms else "data",
                )
                for s in image.segments
            ),
            *(_interp_areas(interp) if interp is not None else []),
            Area(stack_base, stack_top, "rw-p", "[stack]", "stack"),
        ],
        brk_start=brk_start,
        # Under the interpreter when there is one (record/linux/dynamic.py).
        mmap_top=min(MMAP_TOP if interp is None else interp_base, stack_base),
    )
    mappings = [
        *_segment_mappings(image),
        Mapping(stack_base, STACK_SIZE, "rw-", stack_bytes, rsp),
    ]
    regions = [*_segment_regions(image)]
    if interp is not None:
        mappings = [*mappings, *_segment_mappings(interp)]
        regions += _segment_regions(interp, f"{interp.path.name} ", whole_pages=True)
    stack = Region(PROCESS_STACK, "stack", stack_base, STACK_SIZE, "rw-")
    spec = MachineSpec(
        mappings=mappings,
        regions=[*regions, stack],
        entry=image.entry if interp is None else interp.entry,
        registers={"rsp": rsp, "rflags": initial_state.RFLAGS},
        sentinel=None,
        kernel=lambda: make_kernel(copy.deepcopy(state)),
    )
    return Process(spec, state)
