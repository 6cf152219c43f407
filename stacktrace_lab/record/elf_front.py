"""The ELF front end: an x86-64 Linux program -> one machine description.

A dynamically linked program runs its interpreter first (record/dynamic.py);
every program sees the host's files only through the read-only view
(record/files.py).

load the ELF -> build the Linux process -> (fast-forward to `--from`) ->
discovery pass: find the stacks -> the description the recorder runs again,
from the start, with those stacks as regions. Nothing after recording knows
that the trace came from an ELF, except for its `program` metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..arch import PAGE
from ..errors import BadInput
from ..layout import Region, page_ceil
from ..scenario import Expectations
from ..symbols import LabelTable
from ..trace.format import ProgramInfo, ScenarioInfo, SourceLine
from .discovery import ALLOCATORS, Evidence, name_stacks, run_discovery
from .dynamic import (
    LoadedObject,
    code_segments,
    load_interp,
    loaded_objects,
    merged_lines,
    merged_symbols,
)
from .elf import ElfImage, line_table, load_elf
from .files import FileKernel, FileView
from .machine import FAST_FORWARD_LIMIT, Machine, MachineSpec
from .process import linux_process
from .recorder import (
    Description,
    Progress,
    Recording,
    RecordOptions,
    phase,
    record_description,
)
from .syscalls import LinuxKernel, ProcessState
from .windows import Extent

DEFAULT_ELF_MAX_STEPS = 1_000_000


def _symbol(image: ElfImage, name: str, option: str) -> int:
    addr = image.find_symbol(name)
    if addr is None:
        raise BadInput(f"{image.path}: {option} {name}: no such symbol in the program")
    return addr


def _function_namer(image: ElfImage) -> Callable[[int], str | None]:
    """The function holding a code address of the program (or a library it loaded),
    None for any other address: for discovery's labels (`calloc(48) in main`)."""
    table = LabelTable(image.symbols)
    code = [(s.vaddr, s.vaddr + len(s.data)) for s in image.segments if "x" in s.perms]

    def function_of(address: int) -> str | None:
        if not any(start <= address < end for start, end in code):
            return None
        near = table.nearest(address)
        return near[0] if near is not None else None

    return function_of


def describe_elf(
    path: str | Path,
    args: list[str] | tuple[str, ...] = (),
    from_symbol: str | None = None,
    to_symbol: str | None = None,
    max_steps: int | None = None,
    stacks: list[Region] | None = None,
    expect: Expectations | None = None,
    name: str | None = None,
    progress: Progress | None = None,
    allow_read: list[str] | tuple[str, ...] = (),
) -> Description:
    """`stacks`: named stacks that replace discovery (a scenario's `[[stacks]]`).
    `allow_read`: host paths the program may read besides its libraries and directory."""
    image = load_elf(path)
    view = FileView(Path(image.path).resolve().parent, tuple(Path(p).resolve() for p in allow_read))
    interp = load_interp(image, view) if image.interp is not None else None

    def make_kernel(state: ProcessState) -> FileKernel:
        return FileKernel(state, view)

    process = linux_process(image, list(args), [], interp, make_kernel)
    start = (from_symbol, _symbol(image, from_symbol, "--from")) if from_symbol else None
    sentinel = _symbol(image, to_symbol, "--to") if to_symbol else None
    limit = max_steps or DEFAULT_ELF_MAX_STEPS
    spec = replace(process.spec, sentinel=sentinel, stop_at=to_symbol)

    # Discovery pass: the same process, run with a light hook.
    machine = Machine(spec)
    if interp is not None and start is None:
        # The libraries' addresses (malloc's, for discovery) are known once the
        # loader has mapped them: a first run to the program's entry finds them.
        image = _with_libraries(image, _loaded_by(spec, image, progress))
    main_stack = next(r for r in spec.regions if r.kind == "stack")
    before: Evidence | None = None
    if start is not None:
        if progress is not None:
            progress(0, "start-up")
        if interp is None and image.raw_symbols.keys() & set(ALLOCATORS):
            # The start-up watched for allocations (a stack calloc'd before --from
            # is then `calloc_48`, as in the whole recording, not a heap chunk).
            before = run_discovery(
                machine,
                image,
                main_stack,
                FAST_FORWARD_LIMIT,
                phase(progress, "start-up"),
                until=start[1],
            )
            early = machine.reached(start[1], before.steps, counted=False)
        else:
            early = machine.fast_forward(start[1], progress=phase(progress, "start-up"))
        if early is not None:
            raise BadInput(
                f"{image.path}: the program never reached --from {start[0]}: "
                f"{early.reason}: {early.detail}{_loader_said(machine)}"
            )
        if interp is not None:
            image = _with_libraries(image, _objects(machine))
    if progress is not None:
        progress(0, "discovery")
    evidence = run_discovery(
        machine, image, main_stack, limit, phase(progress, "discovery"), earlier=before
    )
    if progress is not None:
        progress(evidence.steps, "discovery")
        progress(0, "reading the line table")  # seconds for Rust's std, the first time
    found = (
        stacks
        if stacks is not None
        else name_stacks(evidence, image.data_symbols, _function_namer(image))
    )
    kernel = machine.kernel
    assert isinstance(kernel, LinuxKernel)
    later = _later_regions(kernel, {r.name for r in [*spec.regions, *found]})

    main_stack = _used_part(main_stack, evidence.lowest_main)
    executable = [(s.vaddr, s.data) for s in image.segments if "x" in s.perms]
    lines = _line_table(image.path, image.sha256, image.load_base)
    symbols = image.symbols
    linkage = "static"
    loaded: list[Region] = []
    if interp is not None:
        # Everything the run loaded (dlopen too): names, code and lines of each.
        objects = _objects(machine)
        libraries = [interp, *(o.image for o in objects)]
        loaded = [r for o in objects for r in o.regions()]
        symbols, _raw = merged_symbols([image, *libraries])
        executable += code_segments(libraries)
        lines = merged_lines(lines, libraries)
        linkage = "dynamically linked"
    every = [*spec.regions, *loaded]
    code = [r for r in every if r.kind == "code"]
    others = [r for r in every if r.kind not in ("code", "stack")]
    # Stacks before the heap and mappings they lie in: a region lookup finds them first.
    regions = [*code, *found, main_stack, *others, *later]
    info = ScenarioInfo(
        name=name or image.path.name,
        description=f"{image.path.name}: a {linkage} x86-64 Linux program",
        syntax="att",
        entry=from_symbol or _entry_name(image),
        source="",
        expect=expect or Expectations(),
    )
    return Description(
        spec=replace(spec, regions=regions),
        info=info,
        program=ProgramInfo("elf", str(image.path), image.sha256),
        symbols=symbols,
        code_segments=executable,
        max_steps=limit,
        path=str(image.path),
        code_base=code[0].base,
        lines=lines,
        trim_lines=True,
        start=start,
        options={
            "args": list(args),
            "from": from_symbol,
            "to": to_symbol,
            **({"allow_read": [str(p) for p in view.allowed]} if view.allowed else {}),
            # Every file the program read (its libraries): replay checks them.
            **({"files": view.metadata()} if view.files else {}),
        },
        extents=stack_extents(evidence, [*found, main_stack]),
    )


def _objects(machine: Machine) -> list[LoadedObject]:
    kernel = machine.kernel
    assert isinstance(kernel, FileKernel)
    return loaded_objects(kernel)


def _loaded_by(spec: MachineSpec, image: ElfImage, progress: Progress | None) -> list[LoadedObject]:
    """Run the loader up to the program's entry: the libraries it mapped."""
    machine = Machine(spec)
    if progress is not None:
        progress(0, "loading libraries")
    early = machine.fast_forward(image.entry, progress=phase(progress, "loading libraries"))
    if early is not None:
        raise BadInput(
            f"{image.path}: the dynamic loader did not start the program: "
            f"{early.reason}: {early.detail}{_loader_said(machine)}"
        )
    return _objects(machine)


def _loader_said(machine: Machine) -> str:
    """The loader's complaint (a missing library), from its standard error."""
    said = bytes(machine.kernel.stderr).decode("utf-8", "replace").strip().splitlines()
    return f" ({said[0]})" if said else ""


def _with_libraries(image: ElfImage, objects: list[LoadedObject]) -> ElfImage:
    """The program with its libraries' raw names too (malloc for discovery's hooks)."""
    _symbols, raw = merged_symbols([image, *(o.image for o in objects)])
    return replace(image, raw_symbols=raw)


def stack_extents(evidence: Evidence, stacks: list[Region]) -> dict[str, Extent]:
    """Where rsp went in each stack during the discovery pass (the recording runs
    the same steps): the lowest and highest rsp inside each stack. The process
    stack is the last of `stacks`: rsp was there whenever it was not `outside`.
    (An overflow's rsp under a base is left out: its window is not stored yet.)"""
    extents: dict[str, Extent] = {}
    *found, process = stacks
    if evidence.lowest_main >= 0:
        extents[process.name] = Extent(evidence.lowest_main, process.top)
    if not evidence.outside:
        return extents
    rsp = np.fromiter((r for _step, r in evidence.outside), dtype=np.uint64)
    for stack in found:
        mine = rsp[(rsp >= stack.base) & (rsp <= stack.top)]
        if len(mine):
            extents[stack.name] = Extent(int(mine.min()), int(mine.max()))
    return extents


#: Below the lowest rsp, what the `main` region keeps: the red zone (128 bytes)
#: a leaf function may write under rsp, and a page more.
MAIN_MARGIN = 128 + PAGE


def _used_part(stack: Region, lowest: int) -> Region:
    """The process stack as far down as rsp went, not all 8 MiB: indices into
    `main` then read as a few thousand bytes, and the plots show what was used."""
    if not stack.base <= lowest <= stack.top:
        return stack
    base = max(stack.base, (lowest - MAIN_MARGIN) // PAGE * PAGE)
    return Region(stack.name, stack.kind, base, stack.top - base, stack.perms)


@functools.lru_cache(maxsize=8)
def _line_table(path: Path, _sha256: str, load_base: int) -> tuple[SourceLine, ...]:
    """Reading DWARF takes seconds for Rust's std: once per binary in a process."""
    return line_table(path, load_base)


def _entry_name(image: ElfImage) -> str:
    names = sorted(n for n, a in image.symbols.items() if a == image.entry)
    return names[0] if names else f"{image.entry:#x}"


def _later_regions(kernel: LinuxKernel, taken: set[str]) -> list[Region]:
    """The heap and the anonymous mappings the discovery pass saw the program make."""
    process = kernel.process
    regions: list[Region] = []
    if process.brk > process.brk_start:
        size = page_ceil(process.brk) - process.brk_start
        regions.append(Region("heap", "heap", process.brk_start, size, "rw-"))
    for i, (addr, length) in enumerate(process.mmaps, start=1):
        name = f"mmap_{i}"
        if name not in taken:
            regions.append(Region(name, "mapped", addr, page_ceil(length), "rw-"))
    return regions


def record_elf(
    path: str | Path,
    output: str | Path,
    options: RecordOptions | None = None,
    args: list[str] | tuple[str, ...] = (),
    from_symbol: str | None = None,
    to_symbol: str | None = None,
    progress: Progress | None = None,
    name: str | None = None,
    allow_read: list[str] | tuple[str, ...] = (),
) -> Recording:
    """Record an x86-64 Linux program: `record()`'s counterpart for an ELF file.
    `progress` is called with each phase's steps (recorder.Progress)."""
    options = options or RecordOptions()
    description = describe_elf(
        path,
        args,
        from_symbol,
        to_symbol,
        options.max_steps,
        name=name,
        progress=progress,
        allow_read=allow_read,
    )
    return record_description(description, output, options, progress)
