"""Compare native and emulated rows, whole columns at once; explain the first difference.

After `normalise()`, one `!=` over the two (rows, registers) arrays finds
every differing cell; the first differing row is the first divergence. Its
most likely cause comes from a small table, decided by the instruction that
produced the row (the one before it) and by which registers differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..arch import REGISTERS
from .emulated import EmulatedRun
from .instructions import Instruction, InstructionTable
from .native import NativeRun
from .normalise import RIP, normalise

#: The kinds of cause, named for what they say about the emulator: only
#: `emulator bug` blames it (the instruction's own, architected result differs).
CATEGORIES = {
    "emulator bug": "the instruction's architected result differs: a register it writes, "
    "or a flag it defines",
    "emulator gap": "the machine does not run this instruction (it stops or faults instead)",
    "timing": "a time-stamp counter or clock read differs between the runs: not a bug",
    "randomness": "a random source differs between the runs: not a bug",
    "cpu model": "the CPU model's answer (cpuid, xgetbv) differs: the emulated CPU is "
    "another model, not a wrong computation",
    "host": "the host's kernel answered differently from the recorder's machine "
    "(a system call's result or the bytes it filled, the vDSO): not the CPU",
    "not architected": "only bits the instruction leaves undefined differ",
    "outside the instruction": "a value the instruction does not write changed: a hook, "
    "the machine's replay, or an edited trace",
    "start": "the runs start from different states",
    "earlier difference": "follows from a difference found at an earlier step",
    "end": "the runs stop differently",
}

#: The known causes of a first divergence: id -> (its category, what it most likely means).
CAUSES: dict[str, tuple[str, str]] = {
    "initial-state": (
        "start",
        "the runs start from different registers (the start stub, the loader, or the "
        "recorded initial stack)",
    ),
    "cpuid": ("cpu model", "cpuid answered differently: not the recorder's CPU model"),
    "xgetbv": ("cpu model", "xgetbv answered differently: XCR0 is 3 (x87, SSE) in the model"),
    "timing": (
        "timing",
        "rdtsc/rdtscp or a clock system call: the time differs between the runs "
        "(not replayed from the native run)",
    ),
    "randomness": (
        "randomness",
        "rdrand/rdseed or getrandom: the random values differ between the runs "
        "(not replayed from the native run)",
    ),
    "syscall-result": (
        "host",
        "the system call's result or the memory it filled differs: the host's kernel "
        "is not the recorder's machine there",
    ),
    "syscall-registers": (
        "host",
        "syscall's own rcx (next instruction) and r11 (rflags): the machine's syscall "
        "hook does not set them as the CPU and kernel do",
    ),
    "rep-step": (
        "emulator gap",
        "a rep string instruction counted differently (unicorn's extra step with rcx == 0)",
    ),
    "unwritten-register": (
        "outside the instruction",
        "a register (or flag) the instruction does not write changed: the emulated "
        "state was altered outside the instruction (a hook, or an edited trace)",
    ),
    "undefined-flags": (
        "not architected",
        "only flags the instruction leaves undefined differ (a mask capstone does not list)",
    ),
    "flags": (
        "emulator bug",
        "a flag the instruction defines differs: the emulator computes rflags wrongly "
        "for this instruction",
    ),
    "unsupported-instruction": (
        "emulator gap",
        "the machine does not run this instruction (VEX/EVEX/XOP: AVX and later, or an "
        "x87 transcendental function: unicorn computes them wrongly, docs/pitfalls.md); "
        "build for x86-64-v2 or below",
    ),
    "stop": ("end", "the runs stop differently"),
    "memory-input": (
        "earlier difference",
        "the instruction read memory that already differed (the memory difference above): "
        "its result follows from that write, not from this instruction",
    ),
    "instruction": (
        "emulator bug",
        "a register the instruction writes differs: the emulator computes this "
        "instruction differently from the CPU",
    ),
}

#: System calls whose results are the time, or random bytes.
_CLOCK_CALLS = frozenset(("clock_gettime", "gettimeofday", "time", "clock_getres", "times"))
_RANDOM_CALLS = frozenset(("getrandom",))
#: Instructions that write flags besides the six arithmetic ones (capstone's
#: per-flag table covers those six only).
_WHOLE_FLAGS = ("popf", "std", "cld", "sti", "cli", "iret")
_FLAG_NAMES = {0: "CF", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF", 11: "OF"}


def flag_names(bits: int) -> str:
    """rflags bits as names: `CF,OF` (others by number: `bit 16`)."""
    names = [_FLAG_NAMES.get(b, f"bit {b}") for b in range(64) if bits >> b & 1]
    return ",".join(names)


@dataclass(frozen=True)
class Divergence:
    step: int
    rip: int
    symbol: str
    source: str | None
    #: the instruction at this row, and the one before it whose result differs
    instruction: str
    previous_instruction: str | None
    registers: dict[str, tuple[int, int]]  # name -> (native, emulated)
    cause: str

    @property
    def category(self) -> str:
        return CAUSES[self.cause][0]

    @property
    def first_register(self) -> str | None:
        """The first differing register (rflags: with its differing flags named)."""
        if not self.registers:
            return None
        name = next(iter(self.registers))
        if name == "rflags":
            native, emulated = self.registers[name]
            return f"rflags ({flag_names(native ^ emulated)})"
        return name

    def to_json(self) -> dict[str, object]:
        return {
            "step": self.step,
            "rip": self.rip,
            "symbol": self.symbol,
            "source": self.source,
            "instruction": self.instruction,
            "previous_instruction": self.previous_instruction,
            "registers": {k: {"native": n, "emulated": e} for k, (n, e) in self.registers.items()},
            "first_register": self.first_register,
            "cause": self.cause,
            "category": self.category,
            "cause_text": CAUSES[self.cause][1],
        }


@dataclass
class Comparison:
    native_steps: int
    emulated_steps: int
    compared_steps: int
    native_stop: str
    emulated_stop: str
    stdout_same: bool
    normalisations: dict[str, int]
    divergence: Divergence | None
    replay_mismatches: list[str] = field(default_factory=list)
    stderr_same: bool = True
    #: Where the output first differs: (stream, byte offset, CPU bytes, emulator bytes).
    output_difference: tuple[str, int, bytes, bytes] | None = None
    #: The first row whose memory writes differ: (row, address, CPU bytes, emulator
    #: bytes); address -1: the second native pass did not repeat the first from that row.
    memory_difference: tuple[int, int, bytes, bytes] | None = None
    #: A trace's run: the first row whose system call (number, arguments) is not
    #: the one the trace logged there: (row, what differs).
    syscall_difference: tuple[int, str] | None = None
    #: The instruction (and where) that wrote the first differing memory.
    memory_instruction: str | None = None

    @property
    def same(self) -> bool:
        """Every step's registers and memory writes, the end, stdout and stderr byte for byte."""
        return (
            self.divergence is None
            and self.memory_difference is None
            and self.syscall_difference is None
            and self.stdout_same
            and self.stderr_same
        )

    @property
    def first_difference(self) -> str | None:
        """Which part differs first: `registers`, `memory`, `syscall`, `end`, `stdout`
        or `stderr`."""
        call = self.syscall_difference
        memory = self.memory_difference
        if (
            call is not None
            and (self.divergence is None or call[0] <= self.divergence.step)
            and (memory is None or call[0] <= memory[0])
        ):
            return "syscall"
        if memory is not None and (self.divergence is None or memory[0] < self.divergence.step):
            return "memory"
        if self.divergence is not None:
            return "end" if not self.divergence.registers else "registers"
        if self.output_difference is not None:
            return self.output_difference[0]
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "same": self.same,
            "native_steps": self.native_steps,
            "emulated_steps": self.emulated_steps,
            "compared_steps": self.compared_steps,
            "native_stop": self.native_stop,
            "emulated_stop": self.emulated_stop,
            "stdout_same": self.stdout_same,
            "stderr_same": self.stderr_same,
            "first_difference": self.first_difference,
            "output_difference": None
            if self.output_difference is None
            else {
                "stream": self.output_difference[0],
                "offset": self.output_difference[1],
                "native": self.output_difference[2].hex(),
                "emulated": self.output_difference[3].hex(),
            },
            "memory_difference": None
            if self.memory_difference is None
            else {
                "step": self.memory_difference[0],
                "address": self.memory_difference[1],
                "native": self.memory_difference[2].hex(),
                "emulated": self.memory_difference[3].hex(),
                "first_byte": _first_byte(*self.memory_difference[1:]),
                "instruction": self.memory_instruction,
            },
            "syscall_difference": None
            if self.syscall_difference is None
            else {"step": self.syscall_difference[0], "what": self.syscall_difference[1]},
            "normalisations": self.normalisations,
            "divergence": self.divergence.to_json() if self.divergence else None,
            "replay_mismatches": self.replay_mismatches,
        }


def _first_byte(address: int, native: bytes, emulated: bytes) -> int | None:
    """The address of the first byte that differs (None: the pass did not repeat)."""
    if address < 0:
        return None
    at = next((i for i, (a, b) in enumerate(zip(native, emulated, strict=False)) if a != b), 0)
    return address + at


def compare(
    native: NativeRun,
    emulated: EmulatedRun,
    *,
    name_address: Callable[[int], str],
    source_line: Callable[[int], str | None],
    replayed: bool = True,
) -> Comparison:
    # The stepper's own decodes when it has them: each address decoded once per check.
    table = native.instructions or InstructionTable(native.code)
    normalised = normalise(native.registers, emulated.registers, table, native.r11_saved_at_start)
    n, e = normalised.native, normalised.emulated
    rows = len(n)
    emulated_rows = len(emulated.registers) - normalised.rows_touched["rep-extra-step"]
    differs = (n != e).any(axis=1)
    first: int | None = int(np.argmax(differs)) if differs.any() else None
    native_stop = native.stop.reason
    # The native run was cut short (--to, --max-steps): the emulation may go on.
    cut_short = native_stop in ("to", "max_steps")
    went_on = cut_short and emulated_rows > native.steps
    if first is None and native.steps != emulated_rows and not went_on:
        first = rows  # one run went on where the other stopped
    stop_same = cut_short or (
        native_stop == emulated.stop_reason
        and same_end_detail(native_stop, native.stop.detail, emulated.stop_detail)
    )
    if first is None and not stop_same:
        first = max(rows - 1, 0)
    divergence = None
    if first is not None:
        divergence = _explain(first, native, emulated, n, e, table, replayed)
        divergence = Divergence(
            step=divergence.step,
            rip=divergence.rip,
            symbol=name_address(divergence.rip),
            source=source_line(divergence.rip),
            instruction=divergence.instruction,
            previous_instruction=divergence.previous_instruction,
            registers=divergence.registers,
            cause=divergence.cause,
        )
    # Output is compared whole: a run cut short (--to, --max-steps) has
    # written part of it, and the emulation went one step further.
    stdout_same = native.stdout == emulated.stdout or cut_short
    stderr_same = native.stderr == emulated.stderr or cut_short
    output_difference = None
    for stream, same, mine, theirs in (
        ("stdout", stdout_same, native.stdout, emulated.stdout),
        ("stderr", stderr_same, native.stderr, emulated.stderr),
    ):
        if not same:
            at = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                min(len(mine), len(theirs)),
            )
            output_difference = (stream, at, mine[at : at + 16], theirs[at : at + 16])
            break
    return Comparison(
        native_steps=native.steps,
        emulated_steps=emulated_rows,
        compared_steps=min(rows, native.steps) if first is None else first,
        native_stop=f"{native.stop.reason}: {native.stop.detail}",
        emulated_stop=f"{emulated.stop_reason}: {emulated.stop_detail}",
        stdout_same=stdout_same,
        normalisations=normalised.rows_touched,
        divergence=divergence,
        replay_mismatches=emulated.replay_mismatches,
        stderr_same=stderr_same,
        output_difference=output_difference,
    )


#: A native fault's signal and the recorder's exception names, as one kind each.
_SIGNAL_KINDS = {"SIGSEGV": "memory", "SIGBUS": "memory", "SIGILL": "invalid", "SIGFPE": "divide"}
_EXCEPTION_KINDS = (
    ("divide error", "divide"),
    ("invalid opcode", "invalid"),
    ("invalid instruction", "invalid"),
    ("general protection", "memory"),
    ("page fault", "memory"),
    ("alignment check", "memory"),
    (" memory", "memory"),  # "write to unmapped memory: ..."
)


def fault_kind(detail: str, native: bool) -> str | None:
    """The kind of a fault (memory, invalid, divide) from a stop's detail; None: unknown."""
    if native:
        return _SIGNAL_KINDS.get(detail.split(":")[0].split()[0])
    return next((kind for text, kind in _EXCEPTION_KINDS if text in detail), None)


def same_end_detail(reason: str, native: str, emulated: str) -> bool:
    """Same reason; also the same exit status, or the same kind of fault."""
    if reason == "exit":
        return native.rsplit("(", 1)[-1] == emulated.rsplit("(", 1)[-1]  # "exit_group(3)"
    if reason == "fault":
        kinds = fault_kind(native, True), fault_kind(emulated, False)
        return None in kinds or kinds[0] == kinds[1]
    return True


def _explain(
    row: int,
    native: NativeRun,
    emulated: EmulatedRun,
    n: np.ndarray,
    e: np.ndarray,
    table: InstructionTable,
    replayed: bool,
) -> Divergence:
    in_both = row < len(n)
    rip = int(n[row, RIP] if in_both else (native.registers[row, RIP] if row < native.steps else 0))
    registers: dict[str, tuple[int, int]] = {}
    if in_both:
        for i in np.flatnonzero(n[row] != e[row]):
            registers[REGISTERS[i]] = (int(n[row, i]), int(e[row, i]))
    previous = table.at(int(n[row - 1, RIP])) if 0 < row <= len(n) else None
    writes = table.writes(int(n[row - 1, RIP])) if previous is not None else frozenset()
    call = None
    if previous is not None and previous.outside == "syscall":
        call = next((c.name for c in native.syscalls if c.step == row - 1), None)
    cause = _cause(row, registers, previous, writes, emulated, in_both, replayed, call)
    here = table.at(rip)
    return Divergence(
        step=row,
        rip=rip,
        symbol="",
        source=None,
        instruction=here.text,
        previous_instruction=previous.text if previous else None,
        registers=registers,
        cause=cause,
    )


def _cause(
    row: int,
    registers: dict[str, tuple[int, int]],
    previous: Instruction | None,
    previous_writes: frozenset[str],
    emulated: EmulatedRun,
    in_both: bool,
    replayed: bool,
    call: str | None = None,
) -> str:
    """The cause of a first difference at `row`, from the instruction before it
    (`previous`, which produced the row) and what differs. `call`: the name of
    the system call `previous` made, when it is a `syscall`."""
    if not in_both:
        if emulated.stop_reason == "unsupported" and "syscall" not in emulated.stop_detail:
            return "unsupported-instruction"
        if emulated.stop_reason == "fault" and "invalid instruction" in emulated.stop_detail:
            return "unsupported-instruction"
        if previous is not None and previous.rep_string:
            return "rep-step"
        return "stop"
    if row == 0:
        return "initial-state"
    if not registers:
        return "stop"
    assert previous is not None
    changed = set(registers)
    if previous.outside == "syscall":
        if changed <= {"rcx", "r11", "rip"} and "rax" not in changed:
            return "syscall-registers"
        if call in _CLOCK_CALLS:
            return "timing"
        if call in _RANDOM_CALLS:
            return "randomness"
        if not replayed or "rax" in changed:
            return "syscall-result"
        return "unwritten-register" if not changed <= previous_writes else "instruction"
    if previous.outside in ("cpuid", "xgetbv"):
        return previous.outside
    if previous.outside in ("rdtsc", "rdtscp"):
        return "timing"
    if previous.outside in ("rdrand", "rdseed"):
        return "randomness"
    if previous.rep_string and "rip" in changed:
        return "rep-step"
    if not changed <= previous_writes:
        return "unwritten-register"
    if "rflags" in changed:
        native, emulated_value = registers["rflags"]
        bits = native ^ emulated_value
        defined = previous.defined_flags
        if previous.text.startswith(_WHOLE_FLAGS):
            defined = ~previous.undefined_flags & ((1 << 64) - 1)
        if bits & ~(defined | previous.undefined_flags):
            return "unwritten-register"  # a flag it does not touch (TF, DF, IF ...)
        if changed == {"rflags"}:
            return "flags" if bits & defined else "undefined-flags"
    return "instruction"
