"""`silicon_check()`: run a target natively and emulated, and compare every step.

target -> (a scenario: write its machine as a static ELF) -> single-step it
natively, logging the outside world -> emulate it with that log replayed ->
normalise -> compare -> the first divergence, explained.

A trace file as the target: its program (the scenario file or ELF it names,
unchanged since: sha256) is run natively, and compared with the rows, stop
and output *in the file*, not with a second emulated run: an edited or
corrupted trace, or a recorder bug, fails the check.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import hashlib
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..arch import REGISTERS
from ..errors import BadInput
from ..record.linux.elf import PIE_BASE, ElfImage, line_table, load_elf
from ..record.linux.process import STACK_TOP, Process, linux_process
from ..record.machine.machine import MachineSpec, Mapping
from ..record.machine.syscalls import LinuxKernel, ProcessState
from ..scenario import builtin_names, load_scenario
from ..symbols import LabelTable
from . import sandbox
from .compare import Comparison, compare
from .emulated import EmulatedRun, LibraryNames, ThreadsNotCompared, emulate
from .instructions import InstructionTable
from .native import NativeError, NativeRun, RecordedStart, SyscallRecord, run_native
from .normalise import RIP
from .ptrace import unavailable_reason
from .sandbox import THREAD_DETAIL
from .scenario_elf import write_machine_elf

if TYPE_CHECKING:
    from ..trace import Trace

ELF_MAGIC = b"\x7fELF"
DEFAULT_ELF_MAX_STEPS = 1_000_000
_MASK64 = (1 << 64) - 1
#: Farther than this past the nearest symbol, an address is named by itself.
_FAR = 1 << 20


@dataclass
class Target:
    """What to run natively and how to emulate it; built from a scenario or an ELF."""

    name: str
    executable: Path
    entry: int  # where rows begin (the scenario's entry label, the ELF's entry)
    sentinel: int | None  # the return address that means `returned`
    max_steps: int
    symbols: dict[str, int]
    #: address -> "file:line" of the source line that starts there
    lines: dict[int, str]
    #: (native run, max steps, --from address) -> the emulated run, replaying the
    #: native one when given, fast-forwarded to the address when given
    emulate: Callable[[NativeRun | None, int, int | None], EmulatedRun]
    #: An ELF's linked entry: the native side moves --from/--to with a static-pie.
    linked_entry: int | None = None
    #: Reads the source lines when first asked (DWARF: seconds for Rust's std),
    #: given how far the program was moved; an empty "file:line" is "no line".
    load_lines: Callable[[int], dict[int, str]] | None = None
    bias: int = 0
    #: The program's arguments after argv[0] (an ELF scenario's `args`).
    args: tuple[str, ...] = ()
    #: An ELF scenario's own `from` and `to`, used when the command line gives none.
    default_from: str | None = None
    default_to: str | None = None
    #: The recorder's machine is a Linux process (an ELF), not a scenario's bare one.
    linux: bool = True
    #: An ELF's program and interpreter: its files are seen through the recorder's view.
    file_view: tuple[ElfImage, ElfImage | None] | None = None
    #: Dynamically linked: the loader runs first, and maps the libraries.
    dynamic: bool = False
    #: The libraries' names (the run that loaded them, or the trace's), read when an
    #: address outside the program and its interpreter is first named.
    library_names: Callable[[], LibraryNames] | None = None
    _labels: LabelTable = field(init=False, repr=False)
    _line_addrs: list[int] = field(init=False, repr=False)
    _library_lines: Callable[[int], str | None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._labels = LabelTable(self.symbols)
        self._line_addrs = sorted(self.lines)

    def relocated(self, bias: int) -> Target:
        if not bias:
            return self
        return dataclasses.replace(
            self,
            bias=self.bias + bias,
            entry=self.entry + bias,
            symbols={name: addr + bias for name, addr in self.symbols.items()},
            lines={addr + bias: line for addr, line in self.lines.items()},
        )

    def name_address(self, addr: int) -> str:
        found = self._labels.nearest(addr)
        if (found is None or found[1] >= _FAR) and self._read_library_names():
            found = self._labels.nearest(addr)
        if found is None:
            return f"{addr:#x}"
        label, offset = found
        if offset >= _FAR:  # in code with no symbols here: the address
            return f"{addr:#x}"
        return f"{label}+{offset}" if offset else label

    def _read_library_names(self) -> bool:
        """The libraries' symbols added to the program's (its own names win), and
        their lines beside its own, once. False: there were none to add."""
        if self.library_names is None:
            return False
        symbols, self._library_lines = self.library_names()
        self.library_names = None
        self._labels = LabelTable({**symbols, **self.symbols})
        return True

    def source_line(self, addr: int) -> str | None:
        if self.load_lines is not None:
            self.lines, self.load_lines = self.load_lines(self.bias), None
            self._line_addrs = sorted(self.lines)
        found = self._labels.nearest(addr)
        if found is None or found[1] >= _FAR:
            self._read_library_names()
        if self._library_lines is not None:
            line = self._library_lines(addr)  # a library's code: its own line table
            if line is not None:
                return line
        i = bisect.bisect_right(self._line_addrs, addr) - 1
        return (self.lines[self._line_addrs[i]] or None) if i >= 0 else None

    def address_of(self, symbol: str) -> int:
        if symbol not in self.symbols:
            raise BadInput(f"{self.name}: no symbol named '{symbol}'")
        return self.symbols[symbol]


def scenario_target(name_or_path: str, workdir: Path) -> Target:
    # Here, not at import: checking an ELF needs none of the assembler's pipeline.
    from ..record.recorder import build_program, machine_spec

    scenario = load_scenario(name_or_path)
    program, regions = build_program(scenario)
    spec = machine_spec(program, regions, scenario.entry)
    source = Path(scenario.path).name
    return Target(
        name=scenario.name,
        executable=write_machine_elf(workdir / f"{scenario.name}.elf", spec),
        entry=spec.entry,
        sentinel=spec.sentinel,
        max_steps=scenario.max_steps,
        symbols=program.symbols,
        lines={addr: f"{source}:{line}" for addr, line in program.lines.items()},
        emulate=lambda native, max_steps, start: emulate(spec, native, max_steps, start),
        linux=False,
    )


def elf_target(path: Path, args: tuple[str, ...] = ()) -> Target:
    """A static ELF: natively as it is; emulated as the recorder's Linux process,
    started from the native run's own initial stack and load address."""
    image = load_elf(path)
    interp = _interp_of(image)

    def emulate_elf(native: NativeRun | None, max_steps: int, start: int | None) -> EmulatedRun:
        if native is None:  # the recorder's process exactly, nothing replayed
            return emulate(recorder_process(image, interp).spec, None, max_steps, start, interp)
        return emulate(native_process(path, native), native, max_steps, start, interp)

    return Target(
        name=path.name,
        executable=path,
        # A dynamically linked program's first instruction is its loader's.
        entry=image.entry if interp is None else interp.entry,
        sentinel=None,
        max_steps=DEFAULT_ELF_MAX_STEPS,
        symbols={
            **({} if interp is None else {**interp.raw_symbols, **interp.symbols}),
            **image.raw_symbols,
            **image.symbols,
        },
        lines={},
        emulate=emulate_elf,
        linked_entry=image.entry,
        file_view=(image, interp),
        dynamic=interp is not None,
        load_lines=lambda bias: {
            row.addr: f"{row.file}:{row.line}" if row.line else ""
            for row in line_table(path, image.load_base + bias)
        },
        args=args,
    )


def elf_scenario_target(path: Path) -> Target:
    """A scenario file whose `[program]` is `elf = "prog"` (with `args`, `from`, `to`)."""
    program = tomllib.loads(path.read_text(encoding="utf-8"))["program"]
    args = program.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BadInput(f"{path}: field 'program.args': must be a list of strings")
    target = elf_target(path.parent / str(program["elf"]), tuple(args))
    return dataclasses.replace(
        target, default_from=program.get("from"), default_to=program.get("to")
    )


def recorder_process(image: ElfImage, interp: ElfImage | None) -> Process:
    """The process the recorder runs for `image` (record/linux/elf_front.py): its file
    view, and its interpreter when it has one."""
    return linux_process(image, [], [], interp, file_kernel(image))


def file_kernel(image: ElfImage) -> Callable[[ProcessState], LinuxKernel]:
    """The recorder's kernel for `image`: Linux with its read-only file view."""
    from ..record.linux.files import FileKernel, FileView

    view = FileView(Path(image.path).resolve().parent, ())
    return lambda state: FileKernel(state, view)


def native_process(path: Path, native: NativeRun) -> MachineSpec:
    """The recorder's process of `path`, moved to where the kernel put the native one:
    the static-pie's load address, the interpreter's (AT_BASE), the initial
    stack (argv, envp, auxv as the kernel wrote them), the initial registers,
    the heap's start."""
    image = load_elf(path, pie_base=PIE_BASE + native.load_bias)
    interp = _interp_of(image)
    if interp is not None and native.interp_base and native.interp_base != interp.load_base:
        interp = load_elf(interp.path, pie_base=native.interp_base)
    process = recorder_process(image, interp)
    spec = process.spec
    rsp = native.initial_registers["rsp"]
    stack = next(m for m in spec.mappings if m.data and m.start <= STACK_TOP - 1 < m.start + m.size)
    mappings = [
        Mapping(m.start, m.size, m.perms, native.initial_stack, rsp) if m is stack else m
        for m in spec.mappings
    ]
    # The kernel's heap starts where it says on the first brk, not always
    # after the segments (a static-pie's is at 0x555555555000 on Linux 6).
    first_brk = next((s.result for s in native.syscalls if s.name == "brk"), None)
    state = process.state
    if first_brk is not None and first_brk != state.brk_start:
        state = dataclasses.replace(state, brk_start=first_brk, brk=first_brk)
    registers = {
        name: native.initial_registers[name] for name in native.initial_registers if name != "rip"
    }
    registers.pop("fs_base", None)
    make_kernel = file_kernel(image)
    return dataclasses.replace(
        spec,
        mappings=mappings,
        registers=registers,
        kernel=lambda: make_kernel(copy.deepcopy(state)),
    )


def resolve_target(target: str, workdir: Path) -> Target:
    path = Path(target)
    if path.is_file() and path.read_bytes()[:4] == ELF_MAGIC:
        return elf_target(path)
    if path.suffix == ".toml":
        from ..record.linux.elf_scenario import is_elf_scenario

        if is_elf_scenario(path):
            return elf_scenario_target(path)
    return scenario_target(target, workdir)


@dataclass
class SiliconResult:
    target: Target
    native: NativeRun
    emulated: EmulatedRun
    comparison: Comparison


def _window(rows: np.ndarray, start: int, end: int | None) -> tuple[int, int]:
    """Row range [first, last) from the first row at `start` to the first later one at `end`."""
    at_start = np.flatnonzero(rows[:, RIP] == start)
    first = int(at_start[0]) if len(at_start) else len(rows)
    last = len(rows)
    if end is not None:
        at_end = np.flatnonzero(rows[first + 1 :, RIP] == end)
        if len(at_end):
            last = first + 1 + int(at_end[0])
    return first, last


PARQUET_MAGIC = b"PAR1"


def is_trace_file(target: str) -> bool:
    path = Path(target)
    return path.is_file() and path.read_bytes()[:4] == PARQUET_MAGIC


@dataclass
class RecordedTrace:
    """A trace file as the check reads it: what to run, and the recording to compare with."""

    program: str  # the scenario or ELF it recorded
    from_symbol: str | None
    run: EmulatedRun  # its rows, stop, output and memory writes
    #: row -> its system call, with the bytes the recorder's kernel wrote at that row
    syscalls: dict[int, SyscallRecord]
    args: tuple[str, ...] = ()


def trace_rows(path: str) -> RecordedTrace:
    """The trace at `path`, checked to be of the program that is there now."""
    from ..trace import load_trace

    trace = load_trace(path)
    meta = trace.metadata
    _refuse_threads(path, trace)
    program = meta.program
    if program is None:
        raise BadInput(f"{path}: the trace does not say which program it recorded")
    source = Path(program.path)
    if source.is_file():
        if program.sha256 and hashlib.sha256(source.read_bytes()).hexdigest() != program.sha256:
            raise BadInput(
                f"{path}: recorded from {program.path}, which has changed since "
                "(its sha256 differs): record it again"
            )
    elif not (program.kind == "scenario" and program.path in builtin_names()):
        raise BadInput(f"{path}: the program it recorded, {program.path}, is not there")
    registers = np.stack(
        [np.asarray(trace.column(name), dtype=np.uint64) for name in REGISTERS], axis=1
    )
    # A dynamically linked program's libraries (every file it read) as recorded.
    from ..record.linux.files import changed_files

    files = meta.options.get("files", [])
    changed = changed_files(files if isinstance(files, list) else [])
    if changed is not None:
        raise BadInput(f"{path}: cannot check it on this machine: {changed}")
    writes = _recorded_writes(trace)

    def recorded_names() -> LibraryNames:
        """The trace's own names: every object it loaded, as `check` and `show` name them."""

        def line_of(addr: int) -> str | None:
            found = meta.source_line(addr)
            return f"{found[0]}:{found[1]}" if found is not None else None

        return dict(meta.symbols), line_of

    run = EmulatedRun(
        registers=np.ascontiguousarray(registers),
        stop_reason=meta.stop.reason,
        stop_step=meta.stop.step,
        stop_detail=meta.stop.detail,
        stdout=meta.stdout.encode(),
        stderr=meta.stderr.encode(),
        writes=_write_events(writes),
        library_names=recorded_names,
    )
    calls = {
        call.step: SyscallRecord(
            call.step,
            call.nr,
            call.args,
            (call.result if call.result is not None else 0) & _MASK64,
            tuple((addr, data) for addr, data in writes.get(call.step, [])),
        )
        for call in trace.syscalls()
    }
    args = tuple(str(a) for a in meta.options.get("args", []) or [])
    start = meta.start.symbol if meta.start else None
    return RecordedTrace(program.path, start, run, calls, args)


def _refuse_threads(path: str, trace: Trace) -> None:
    """A trace of more than one thread (a `thread` column, or metadata saying so):
    one line, until the comparison knows threads."""
    several = len(trace.metadata.threads) > 1
    if not several and "thread" in trace.column_names:
        with contextlib.suppress(Exception):  # read defensively: any other shape is one thread
            column = np.asarray(trace.table(["thread"]).column("thread").to_numpy())
            several = bool(len(column) and (column != column[0]).any())
    if several:
        raise BadInput(f"{path}: threads are not compared yet (the trace has more than one)")


def _recorded_writes(trace: Trace) -> dict[int, list[tuple[int, bytes]]]:
    """row -> [(address, bytes)] the trace's `writes` column holds (program and kernel)."""
    found: dict[int, list[tuple[int, bytes]]] = {}
    for group in trace.iter_row_groups(["step", "writes"]):
        steps = group.column("step").to_pylist()
        for step, accesses in zip(steps, group.column("writes").to_pylist(), strict=True):
            if accesses:
                found[step] = [(a["addr"], bytes(a["data"])[: a["size"]]) for a in accesses]
    return found


def _write_events(writes: dict[int, list[tuple[int, bytes]]]) -> np.ndarray:
    """The (step, address, size, value) rows EmulatedRun.writes holds, 8 bytes at most each."""
    events = [
        (step, address + offset, len(piece), int.from_bytes(piece, "little", signed=True))
        for step, accesses in writes.items()
        for address, data in accesses
        for offset in range(0, len(data), 8)
        for piece in (data[offset : offset + 8],)
    ]
    if not events:
        return np.zeros((0, 4), dtype=np.int64)
    return np.array(
        [
            (step, address - (1 << 64) if address >> 63 else address, size, value)
            for step, address, size, value in events
        ],
        dtype=np.int64,
    )


def _interp_of(image: ElfImage) -> ElfImage | None:
    """A dynamically linked program's interpreter, placed as the recorder places it."""
    if image.interp is None:
        return None
    from ..record.linux.dynamic import load_interp
    from ..record.linux.files import FileView

    return load_interp(image, FileView(Path(image.path).resolve().parent, ()))


def recorded_start(target: Target) -> RecordedStart | None:
    """The recorder's first stack and registers for an ELF target (a trace's
    native run starts from them, not from the kernel's own)."""
    if not target.linux:
        return None  # a scenario's machine ELF starts as the recorder's machine does
    image = load_elf(target.executable)
    process = linux_process(image, list(target.args), [], _interp_of(image))
    # (the file view is the run's; only the first stack and registers are read here)
    spec = process.spec
    rsp = spec.registers["rsp"]
    stack = next(m for m in spec.mappings if m.data and m.data_at == rsp)
    return RecordedStart(dict(spec.registers), rsp, stack.data)


def silicon_check(
    target_name: str,
    *,
    from_symbol: str | None = None,
    to_symbol: str | None = None,
    replay: bool = True,
    max_steps: int | None = None,
) -> SiliconResult:
    """Check `target_name` (a scenario name or .toml, a static ELF, or a trace
    file) against this CPU."""
    with contextlib.ExitStack() as stack:
        return _silicon_check(stack, target_name, from_symbol, to_symbol, replay, max_steps)


def _silicon_check(
    stack: contextlib.ExitStack[bool | None],
    target_name: str,
    from_symbol: str | None,
    to_symbol: str | None,
    replay: bool,
    max_steps: int | None,
) -> SiliconResult:
    reason = unavailable_reason()
    if reason is not None:
        raise BadInput(f"cannot run natively: {reason}")
    recorded: EmulatedRun | None = None
    trace: RecordedTrace | None = None
    if is_trace_file(target_name):
        trace = trace_rows(target_name)
        target_name, from_symbol, recorded = trace.program, trace.from_symbol, trace.run
        if recorded.stop_reason == "max_steps":  # cut there natively too
            max_steps = max_steps or recorded.steps
    # The scenario ELF lives there until the second (memory) pass is done.
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="stacktrace-lab-silicon-"))
    target = resolve_target(target_name, Path(workdir))
    if trace is not None and trace.args:
        target = dataclasses.replace(target, args=trace.args)
    # An ELF starts from the recorder's first stack and registers (argv, its empty
    # environment, its auxv), natively too: the path the recording takes.
    start_state = recorded_start(target)
    recorded_calls = trace.syscalls if trace is not None else None
    from_symbol = from_symbol or target.default_from
    to_symbol = to_symbol or target.default_to
    start = target.address_of(from_symbol) if from_symbol else target.entry
    end = target.address_of(to_symbol) if to_symbol else None
    steps = max_steps or target.max_steps
    linked_start, linked_end, program = start, end, target

    def run_natively(fast_forward: bool) -> NativeRun:
        try:
            return run_native(
                program.executable,
                [str(Path(program.executable).resolve()), *program.args],
                start=linked_start,
                end=linked_end,
                sentinel=program.sentinel,
                max_steps=steps,
                linked_entry=program.linked_entry,
                linux=program.linux,
                fast_forward=fast_forward,
                recorded_start=start_state,
                recorded_syscalls=recorded_calls,
                file_view=program.file_view,
            )
        except NativeError as exc:
            raise BadInput(str(exc)) from exc

    native = run_natively(from_symbol is not None)
    if native.stop.reason in ("unsupported", "not_started") and THREAD_DETAIL in native.stop.detail:
        raise BadInput(f"{target.name}: threads are not compared yet (it starts one: clone)")
    if from_symbol and native.steps == 0:
        raise BadInput(
            f"{target.name}: the program never reached --from {from_symbol}: "
            f"{native.stop.reason}: {native.stop.detail}"
        )
    target = target.relocated(native.load_bias)
    start += native.load_bias
    end = None if end is None else end + native.load_bias
    # As far as the native run went, and one step more to see whether the
    # emulation would have gone on where the CPU stopped.
    if recorded is not None:
        # The file's own rows, stop and output (decoded as the recorder keeps them).
        emulated = recorded
        native.stdout = native.stdout.decode("utf-8", "backslashreplace").encode()
        native.stderr = native.stderr.decode("utf-8", "backslashreplace").encode()
    else:
        # With --from, the emulation runs there uncounted (as `record --from`);
        # then as far as the native run went, and one step more to see whether
        # the emulation would have gone on.
        before = 0 if from_symbol else max(native.skipped, 0)
        try:
            emulated = target.emulate(
                native if replay else None,
                before + native.steps + 1,
                start if from_symbol else None,
            )
        except ThreadsNotCompared as exc:
            raise BadInput(f"{target.name}: {exc}") from None
        if replay and native.skipped < 0 and emulated.unreplayed_before_start:
            # rdrand/rdseed ran during the native full-speed start-up, where they
            # cannot be trapped: single-step the start-up instead, so that they
            # get the CPU model's values there too (logged), and emulate again.
            native = run_natively(False)
            emulated = target.emulate(native, native.steps + 1, start)
    # A library's code is named by the libraries the run loaded (a trace: its own names).
    target.library_names = emulated.library_names
    first, last = _window(emulated.registers, start, end)
    if (first, last) != (0, emulated.steps):
        reached_end = last < emulated.steps
        emulated.registers = emulated.registers[first:last]
        if end is not None and reached_end:
            emulated.stop_reason, emulated.stop_detail = "to", f"reached {end:#x}"
    comparison = compare(
        native,
        emulated,
        name_address=target.name_address,
        source_line=target.source_line,
        replayed=replay,
    )
    comparison.syscall_difference = native.syscall_difference
    comparison.memory_difference = _compare_memory(
        target, native, emulated, first, start, end, comparison, start_state, recorded_calls
    )
    divergence = comparison.divergence
    memory = comparison.memory_difference
    if (
        divergence is not None
        and memory is not None
        and memory[0] < divergence.step
        and divergence.cause in ("instruction", "flags")
    ):
        # Registers that differ after a memory write already differed: that write
        # is the difference to explain, not the instruction that read it back.
        comparison.divergence = dataclasses.replace(divergence, cause="memory-input")
    if comparison.memory_difference is not None:
        row = comparison.memory_difference[0]
        if 0 <= row < native.steps:  # the row whose instruction wrote there
            rip = int(native.registers[row, RIP])
            table = native.instructions or InstructionTable(native.code)
            text = table.at(rip).text
            call = next((c.name for c in native.syscalls if c.step == row), None)
            text = f"{text} ({call}: the bytes the kernel wrote)" if call else text
            comparison.memory_instruction = f"{text} at {target.name_address(rip)} ({rip:#x})"
    return SiliconResult(target, native, emulated, comparison)


def _compare_memory(
    target: Target,
    native: NativeRun,
    emulated: EmulatedRun,
    first: int,
    start: int,
    end: int | None,
    comparison: Comparison,
    start_state: RecordedStart | None = None,
    recorded_calls: dict[int, SyscallRecord] | None = None,
) -> tuple[int, int, bytes, bytes] | None:
    """Every step's memory writes: the bytes the native run read after each row
    where that row's instruction wrote (`NativeRun.memory`: its memory operands
    and pushes; a system call's filled buffers) against what the emulator wrote
    at that row. Where the emulator wrote outside what the native run read (an
    instruction whose stores the decoder does not place, or a wrong address),
    a second native pass (the first pass's answers replayed, so the same steps)
    reads there after that row; a second pass that did not repeat the first is
    a difference too (row, -1, ...), not a pass. The first row whose bytes
    differ: (row, address, CPU bytes, emulator bytes)."""
    rows = native.steps if comparison.divergence is None else comparison.divergence.step
    writes = emulated.writes
    writes = writes[(writes[:, 0] >= first) & (writes[:, 0] < first + rows)]
    # What a system call's answer put in memory is an input the check itself
    # wrote, not compared; except in a trace's run for the calls the native
    # kernel ran (rt_sigaction's old action ...): the recording's bytes there
    # are the recorder's kernel's, and a difference is the host's (a syscall row).
    kernel_rows = {
        s.step
        for s in native.syscalls
        if recorded_calls is None or s.nr not in sandbox.SHAPES_THE_PROCESS
    }
    expected: dict[int, dict[int, int]] = {}
    for step, address, size, value in writes.tolist():
        row = step - first
        if row in kernel_rows:
            continue
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        cells = expected.setdefault(row, {})
        for offset, byte in enumerate(data):
            cells[(address + offset) & ((1 << 64) - 1)] = byte
    omitted = _omitted_store(native, expected, rows, kernel_rows)
    if not expected:
        return omitted
    wanted = {row: _ranges(cells) for row, cells in expected.items()}
    # Read natively after each row: what its instruction stored, and what a call the
    # kernel ran wrote into its output buffer (rt_sigaction's old action ...).
    filled = {c.step: c.buffers for c in native.syscalls if c.step >= 0 and c.buffers}
    found: dict[int, list[bytes | None]] = {
        row: [
            _bytes_at([*native.memory.get(row, ()), *filled.get(row, ())], address, size)
            for address, size in ranges
        ]
        for row, ranges in wanted.items()
    }
    read_after = {
        row: [r for r, got in zip(ranges, found[row], strict=True) if got is None]
        for row, ranges in wanted.items()
    }
    read_after = {row: ranges for row, ranges in read_after.items() if ranges}
    if read_after:
        second = run_native(
            target.executable,
            [str(Path(target.executable).resolve()), *target.args],
            start=start - native.load_bias,
            end=None if end is None else end - native.load_bias,
            sentinel=target.sentinel,
            max_steps=native.steps + max(native.skipped, 0) + 1,  # the start-up too
            fast_forward=native.skipped < 0,
            linked_entry=target.linked_entry,
            linux=target.linux,
            replay=native,
            read_after=read_after,
            recorded_start=start_state,
            recorded_syscalls=recorded_calls,
            file_view=target.file_view,
        )
        same_rows = min(second.steps, rows)
        differs = (second.registers[:same_rows] != native.registers[:same_rows]).any(axis=1)
        if differs.any() or second.steps < rows:
            row = int(differs.argmax()) if differs.any() else second.steps
            return (row, -1, b"", b"")
        for row, ranges in read_after.items():
            read = dict(zip(ranges, second.memory.get(row, []), strict=False))
            found[row] = [
                got if got is not None else read.get(r, (0, b""))[1]
                for r, got in zip(wanted[row], found[row], strict=True)
            ]
    for row in sorted(expected):
        if omitted is not None and omitted[0] < row:
            break
        cells = expected[row]
        for (address, size), got in zip(wanted[row], found[row], strict=True):
            want = bytes(cells[address + i] for i in range(size))
            if got != want:
                return (row, address, got or b"", want)
    return omitted


def _omitted_store(
    native: NativeRun, expected: dict[int, dict[int, int]], rows: int, kernel_rows: set[int]
) -> tuple[int, int, bytes, bytes] | None:
    """The first row where the CPU certainly stored (a move to memory, a push, a
    call: `NativeRun.stored`) bytes the emulator did not write at that row:
    (row, address, CPU bytes, b"")."""
    for row in sorted(native.stored):
        if row >= rows or row in kernel_rows:
            continue
        cells = expected.get(row, {})
        for address, size in native.stored[row]:
            missing = [i for i in range(size) if (address + i) & _MASK64 not in cells]
            if missing:
                at = address + missing[0]
                got = _bytes_at(native.memory.get(row, ()), at, size - missing[0]) or b""
                return (row, at, got, b"")
    return None


def _bytes_at(reads: Sequence[tuple[int, bytes]], address: int, size: int) -> bytes | None:
    """The `size` bytes at `address` if one of `reads` holds them all, else None."""
    for at, data in reads:
        if at <= address and address + size <= at + len(data):
            return data[address - at : address - at + size]
    return None


def _ranges(cells: dict[int, int]) -> list[tuple[int, int]]:
    """Contiguous (address, size) runs of the written addresses."""
    ranges: list[tuple[int, int]] = []
    for address in sorted(cells):
        if ranges and ranges[-1][0] + ranges[-1][1] == address:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + 1)
        else:
            ranges.append((address, 1))
    return ranges
