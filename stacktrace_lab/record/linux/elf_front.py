"""The ELF front end: an x86-64 Linux program -> one machine description.

A dynamically linked program runs its interpreter first (record/linux/dynamic.py);
every program sees the host's files only through the read-only view
(record/linux/files.py).

load the ELF -> build the Linux process -> (fast-forward to `--from`) ->
discovery pass: find the stacks -> the description the recorder runs again,
from the start, with those stacks as regions. Nothing after recording knows
that the trace came from an ELF, except for its `program` metadata.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ...arch import PAGE
from ...errors import BadInput
from ...layout import Region, page_ceil
from ...scenario import Expectations
from ...symbols import LabelTable
from ...trace.format import ProgramInfo, ScenarioInfo
from ..core.windows import Extent
from ..machine.machine import FAST_FORWARD_LIMIT, Checkpoint, Machine, MachineSpec
from ..machine.syscalls import LinuxKernel, ProcessState
from ..machine.threads import DEFAULT_SLICE, Threads
from ..recorder import (
    Description,
    Progress,
    Recording,
    RecordOptions,
    phase,
    record_description,
)
from .discovery import ALLOCATORS, Evidence, name_stacks, run_discovery
from .dwarf_lines import ObjectLines, line_index
from .dynamic import (
    LoadedObject,
    code_segments,
    line_indexes,
    load_interp,
    loaded_objects,
    merged_symbols,
)
from .elf import ElfImage, load_elf
from .files import FileKernel, FileView
from .naming import thread_stack_label, thread_stack_name
from .process import linux_process

DEFAULT_ELF_MAX_STEPS = 1_000_000


def _symbol(image: ElfImage, name: str, option: str) -> int:
    addr = image.find_symbol(name)
    if addr is None:
        raise BadInput(f"{image.path}: {option} {name}: no such symbol in the program")
    return addr


def _code_symbols(image: ElfImage) -> Callable[[int], tuple[str, int] | None]:
    """(function, offset in it) of a code address of the program (or a library it
    loaded), None for any other address: for discovery's labels (`calloc(48) in
    main`, `stack of worker`)."""
    table = LabelTable(image.symbols)
    code = [(s.vaddr, s.vaddr + len(s.data)) for s in image.segments if "x" in s.perms]

    def symbol_of(address: int) -> tuple[str, int] | None:
        if not any(start <= address < end for start, end in code):
            return None
        return table.nearest(address)

    return symbol_of


def _function_namer(image: ElfImage) -> Callable[[int], str | None]:
    """The function holding a code address of the program (or a library it loaded)."""
    symbol_of = _code_symbols(image)

    def function_of(address: int) -> str | None:
        near = symbol_of(address)
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
    thread_slice: int = DEFAULT_SLICE,
) -> Description:
    """`stacks`: named stacks that replace discovery (a scenario's `[[stacks]]`).
    `allow_read`: host paths the program may read besides its libraries and directory.
    `thread_slice`: instructions a thread runs before the next one (record/machine/threads.py);
    the discovery pass and the recording run the same schedule."""
    image = load_elf(path)
    view = FileView(Path(image.path).resolve().parent, tuple(Path(p).resolve() for p in allow_read))
    interp = load_interp(image, view) if image.interp is not None else None

    def make_kernel(state: ProcessState) -> FileKernel:
        return FileKernel(state, view)

    process = linux_process(image, list(args), [], interp, make_kernel)
    start = (from_symbol, _symbol(image, from_symbol, "--from")) if from_symbol else None
    sentinel = _symbol(image, to_symbol, "--to") if to_symbol else None
    limit = max_steps or DEFAULT_ELF_MAX_STEPS
    spec = replace(process.spec, sentinel=sentinel, stop_at=to_symbol, thread_slice=thread_slice)

    # Discovery pass: the same process, run with a light hook.
    machine = Machine(spec)
    if interp is not None and start is None:
        # The libraries' addresses (malloc's, for discovery) are known once the
        # loader has mapped them: a first run to the program's entry finds them.
        image = _with_libraries(image, _loaded_by(spec, image, progress))
    main_stack = next(r for r in spec.regions if r.kind == "stack")
    before: Evidence | None = None
    prepared: Machine | None = None
    #: The libraries this machine's run mapped, read once (after the start-up, and
    #: again after discovery for those it loaded later).
    known: dict[tuple[str, int], LoadedObject | None] = {}
    if start is not None:
        if progress is not None:
            progress(0, "start-up")
        loading = 0  # the loader's instructions, run before the watch is armed
        if interp is not None:
            # The allocator is in a library the loader maps: run the loader to the
            # program's entry (nothing of the program runs before it), then watch.
            early = machine.fast_forward(image.entry, progress=phase(progress, "start-up"))
            if early is not None:
                raise BadInput(
                    f"{image.path}: the dynamic loader did not start the program: "
                    f"{early.reason}: {early.detail}{_loader_said(machine)}"
                )
            loading = machine.fast_forwarded
            # The recording goes on from here too: from a copy, not a second loader run.
            prepared = machine.fork()
            image = _with_libraries(image, _objects(machine, known))
        if image.raw_symbols.keys() & set(ALLOCATORS):
            # The start-up watched for allocations (a stack calloc'd before --from
            # is then `calloc_48`, as in the whole recording, not a heap chunk).
            before = run_discovery(
                machine,
                image,
                main_stack,
                FAST_FORWARD_LIMIT - loading,
                phase(progress, "start-up"),
                until=start[1],
            )
            early = machine.reached(start[1], loading + before.steps, counted=False)
        else:
            early = machine.fast_forward(start[1], progress=phase(progress, "start-up"))
        if early is not None:
            raise BadInput(
                f"{image.path}: the program never reached --from {start[0]}: "
                f"{early.reason}: {early.detail}{_loader_said(machine)}"
            )
        if interp is not None:
            image = _with_libraries(image, _objects(machine, known))
    if progress is not None:
        progress(0, "discovery")
    # A whole-program recording starts where discovery does: the machine goes back
    # there after the pass and records on the code unicorn translated for it.
    checkpoint = machine.checkpoint() if start is None else None
    evidence = run_discovery(
        machine, image, main_stack, limit, phase(progress, "discovery"), earlier=before
    )
    if progress is not None:
        progress(evidence.steps, "discovery")
    found = (
        stacks
        if stacks is not None
        else name_stacks(evidence, image.data_symbols, _function_namer(image), _code_symbols(image))
    )
    kernel = machine.kernel
    assert isinstance(kernel, LinuxKernel)
    if stacks is None and kernel.threads is not None:
        found = thread_stacks(found, kernel.threads)
    later = _later_regions(kernel, {r.name for r in [*spec.regions, *found]})

    main_stack = _used_part(main_stack, evidence.lowest_main)
    executable = [(s.vaddr, s.data) for s in image.segments if "x" in s.perms]
    # The program's line table, read for the compile units that run (as they run).
    own_lines = line_index(image.path, image.sha256, image.load_base)
    lines = ObjectLines(own_lines, [])
    symbols = image.symbols
    linkage = "static"
    loaded: list[Region] = []
    if interp is not None:
        # Everything the run loaded (dlopen too): names, code and lines of each.
        objects = _objects(machine, known)
        libraries = [interp, *(o.image for o in objects)]
        loaded = [r for o in objects for r in o.regions()]
        symbols, _raw = merged_symbols([image, *libraries])
        executable += code_segments(libraries)
        lines = ObjectLines(own_lines, line_indexes(libraries))
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
            **({"files": view.metadata()} if view.files or view.dirs else {}),
        },
        extents=stack_extents(evidence, [*found, main_stack]),
        prepared=prepared,
        rewound=_rewound(machine, checkpoint),
    )


def _rewound(machine: Machine, checkpoint: Checkpoint | None) -> Machine | None:
    """The discovery pass's machine back at the start of the pass (None without a
    checkpoint: the recording makes a machine of its own).

    Not after a pass that started threads: their slices end on unicorn's
    instruction count, and code translated while one thread ran has no count in
    it, so on the reused translations a thread that never blocks kept the CPU
    for ever (a busy main never let its new thread run)."""
    threads = machine.kernel.threads
    if checkpoint is None or (threads is not None and len(threads.all) > 1):
        return None
    machine.rewind(checkpoint)
    return machine


def thread_stacks(found: list[Region], threads: Threads) -> list[Region]:
    """The stack each thread started on is named for it (`thread_2_stack`, labelled
    `thread 2 stack`): the found stack that holds the thread's first rsp (the clone's
    stack)."""
    names = {t.number: t.stack_top for t in threads.all[1:] if t.stack_top}
    renamed = []
    for region in found:
        number = next((n for n, top in names.items() if region.base < top <= region.top), None)
        if number is not None:
            region = replace(
                region,
                name=thread_stack_name(number),
                label=thread_stack_label(number, region.label),
            )
            del names[number]
        renamed.append(region)
    return renamed


def _objects(
    machine: Machine, known: dict[tuple[str, int], LoadedObject | None] | None = None
) -> list[LoadedObject]:
    kernel = machine.kernel
    assert isinstance(kernel, FileKernel)
    return loaded_objects(kernel, known)


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
    the same steps): the lowest and highest rsp of each stack. The process
    stack is the last of `stacks`: rsp was there whenever it was not `outside`.

    rsp below a found stack's base, reached from inside that stack without
    leaving for another (consecutive steps outside the process stack), is that
    stack's overflow: its lowest rsp is then under the base, and the recorder
    stores the bytes there too (`<stack>__below`, record/core/windows.py)."""
    extents: dict[str, Extent] = {}
    *found, process = stacks
    if evidence.lowest_main >= 0:
        extents[process.name] = Extent(evidence.lowest_main, process.top)
    if not evidence.outside or not found:
        return extents
    ordered = sorted(found, key=lambda s: s.base)
    bases = [s.base for s in ordered]
    lowest: dict[str, int] = {}
    highest: dict[str, int] = {}
    current: Region | None = None  # the stack rsp was last inside, while it stays outside main
    previous_step = -2
    for step, rsp in evidence.outside:
        if step != previous_step + 1:
            current = None  # rsp was back on the process stack in between
        previous_step = step
        i = bisect.bisect_right(bases, rsp) - 1
        inside = ordered[i] if i >= 0 and rsp <= ordered[i].top else None
        if inside is not None:
            current = inside
        elif current is None or rsp >= current.base:
            continue
        owner = current
        lowest[owner.name] = min(lowest.get(owner.name, rsp), rsp)
        highest[owner.name] = max(highest.get(owner.name, rsp), rsp)
    for stack in found:
        if stack.name in lowest:
            extents[stack.name] = Extent(lowest[stack.name], highest[stack.name])
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
        thread_slice=options.thread_slice,
    )
    return record_description(description, output, options, progress)
