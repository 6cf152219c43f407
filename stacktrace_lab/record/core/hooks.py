"""The per-step hooks, in two implementations that write the same rows.

- In C (`_core.c`, built at install time by setup.py): unicorn calls C at
  every instruction and memory access; Python only per chunk of rows, for an
  address run for the first time, after a fixed-value instruction, at a
  privileged or unsupported one, and at an alignment-checked one whose
  operand is misaligned (the C core computes the address itself). Used
  whenever the extension was built.
- In Python (below): ctypes callbacks registered straight with unicorn. The
  fallback where no C compiler was found at install, or when
  `STACKTRACE_LAB_PURE_PYTHON=1` asks for it; the reference the C core is
  checked against (tests/test_native_core.py: byte-identical traces).

Every step, in every mode (fast-forward to `--from`, the discovery pass,
recording), does the same two things beside its own work:
- a fixed-value instruction (rdtsc ...) ran just before: the CPU model
  answers now, before this row's registers are read (record/machine/cpu.py);
- the instruction about to run is looked up in the per-address decisions
  (record/machine/user_mode.py): a privileged one stops the run with #GP before it
  executes, an unsupported one (record/machine/emulator_gaps.py) stops it with
  reason `unsupported`, an alignment-checked one stops it with #GP when its
  memory operand is misaligned this time, a fixed-value one is answered at
  the next step.
A write into a page holding decided code forgets that page's decisions.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from collections.abc import Callable
from typing import Any

import unicorn.x86_const as x86
from unicorn import (
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ_AFTER,
    UC_HOOK_MEM_WRITE,
    UC_MEM_WRITE,
)
from unicorn.unicorn_py3.arch.types import uc_hook_h
from unicorn.unicorn_py3.unicorn import (
    HOOK_CODE_CFUNC,
    HOOK_MEM_ACCESS_CFUNC,
    Uc,
    UcError,
    uclib,
)

from ...arch import PAGE, REGISTERS, WORD
from ..machine.cpu import CpuModel
from ..machine.user_mode import ALIGN_CHECK, FIXED_VALUE, NORMAL, PRIVILEGED, UNSUPPORTED, Decisions
from .native_capstone import native_capstone

UC_IDS = tuple(getattr(x86, f"UC_X86_REG_{name.upper()}") for name in REGISTERS)
ROW_BYTES = WORD * len(REGISTERS)
MEM_WRITE = UC_MEM_WRITE
PURE_PYTHON_ENV = "STACKTRACE_LAB_PURE_PYTHON"
_PAGE_BITS = PAGE.bit_length() - 1
_RCX = REGISTERS.index("rcx")
_RSP = REGISTERS.index("rsp")
#: How the C core says why it stopped the run.
NATIVE_MAX_STEPS, NATIVE_SPIN = 1, 2
#: `StepRules.tick` every 2**20 steps (as `_core.c` calls it).
TICK_MASK = (1 << 20) - 1

# The binding declares argtypes on uclib's functions, and converting arguments
# through them costs more than the call. The same library loaded again without
# prototypes takes the prepared ctypes objects as they are.
_raw = ctypes.CDLL(uclib._name)
_reg_read_batch = _raw.uc_reg_read_batch
_emu_stop = _raw.uc_emu_stop

#: (step, access, address, size, value) as the memory hook saw it.
MemEvent = tuple[int, int, int, int, int]
#: What a chunk hands over: (first step, register rows, memory events).
ChunkHandler = Callable[[int, bytes, "list[MemEvent] | bytes"], bool]


def native_module() -> Any:
    """The C extension (`_core`), or None where it was not built or is turned off."""
    if os.environ.get(PURE_PYTHON_ENV) == "1":
        return None
    try:
        from . import _core  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _core


def native_core() -> Any:
    """The C core's type, or None where it was not built or is turned off."""
    module = native_module()
    return None if module is None else module.Core


def add_raw_hook(uch: Any, hook_type: int, callback: Any) -> Any:
    """Register a ctypes callback straight with unicorn's C library (see machine.py)."""
    handle = uc_hook_h()
    status = uclib.uc_hook_add(
        uch, ctypes.byref(handle), hook_type, callback, None, ctypes.c_uint64(1), ctypes.c_uint64(0)
    )
    if status != 0:
        raise UcError(status)
    return handle


class StepRules:
    """The CPU model's pending answer and the user-mode decisions, for one machine.

    The C core calls these methods by name (`decide`, `answer`, `privileged`,
    `unsupported`, `aligned_operand`, `align_check`, `forgot`, and the run's own `chunk`,
    `outside`, `entered`, `returned`); the Python hooks call `decided` and
    `answer_pending`. `stop(reason, detail)` ends the run before the
    instruction executes.
    """

    def __init__(
        self, uc: Uc, decisions: Decisions, cpu: CpuModel, stop: Callable[[str, str], None]
    ) -> None:
        self.uc = uc
        self.decisions = decisions
        self.cpu = cpu
        self.stop = stop
        #: After a fixed-value instruction: where the next one starts, and the instruction.
        self.pending_at = -1
        self.pending_insn = 0
        #: The run's handlers the C core calls (set per run, cleared after it).
        self.chunk: ChunkHandler | None = None
        self.outside: Callable[[int], None] | None = None
        self.entered: Callable[[int, int], None] | None = None
        self.returned: Callable[[int], None] | None = None
        #: Steps so far, every 2**20 steps of a fast-forward or discovery (a progress bar).
        self.tick: Callable[[int], None] | None = None

    # --- shared by both implementations -------------------------------------------

    def decide(self, address: int) -> int:
        return self.decisions.decide(address)

    def answer(self, address: int) -> None:
        self.cpu.answer(self.uc, self.decisions.fixed[address])

    def privileged(self, address: int) -> None:
        self.stop("fault", self.decisions.privileged[address])

    def unsupported(self, address: int) -> None:
        self.stop("unsupported", self.decisions.unsupported[address])

    def align_check(self, address: int) -> None:
        """Before each execution of an instruction whose memory operand must be
        16-byte aligned: the CPU's #GP when it is not, this time."""
        gap = self.decisions.aligned[address]
        detail = gap.fault(gap.address(self._register))
        if detail is not None:
            self.stop("fault", f"{detail} (rip {address:#x})")

    def aligned_operand(self, address: int) -> tuple[int, int, int, int, int, int]:
        """For the C core, once when the instruction at `address` is decided
        ALIGN_CHECK: its memory operand as (constant, base, index, scale,
        segment base, address bits), registers as unicorn ids (0: none). The
        core computes the address at each execution without calling Python,
        and calls `align_check` only when it is misaligned (the message is made here)."""
        gap = self.decisions.aligned[address]

        def uc_id(name: str | None) -> int:
            return 0 if name is None else int(getattr(x86, f"UC_X86_REG_{name.upper()}"))

        segment = None if gap.segment is None else f"{gap.segment}_base"
        return (
            gap.constant,
            uc_id(gap.base),
            uc_id(gap.index),
            gap.scale,
            uc_id(segment),
            gap.address_bits,
        )

    def _register(self, name: str) -> int:
        return int(self.uc.reg_read(getattr(x86, f"UC_X86_REG_{name.upper()}")))

    def forgot(self, address: int, size: int) -> None:
        self.decisions.forget(address, size)

    # --- the Python hooks' side ---------------------------------------------------

    def decided(self, address: int, kind: int, size: int) -> None:
        """After the step's own work, at an instruction that is not NORMAL."""
        if kind == PRIVILEGED:
            self.privileged(address)
        elif kind == ALIGN_CHECK:
            self.align_check(address)
        elif kind == UNSUPPORTED:
            self.unsupported(address)
        elif kind == FIXED_VALUE:
            self.pending_at = address + size
            self.pending_insn = address

    def answer_pending(self, address: int) -> None:
        at, self.pending_at = self.pending_at, -1
        if at == address:
            self.answer(self.pending_insn)

    def written(self, address: int, size: int) -> None:
        """The program or the kernel wrote here: code in a watched page is decided again."""
        watched = self.decisions.watched
        for page in {address // PAGE, (address + max(size, 1) - 1) // PAGE}:
            if page in watched:
                self.decisions.forget(page * PAGE, PAGE)


class NativeHooks:
    """The C core of one machine (`_core.Core`), and what `run` asks of it."""

    def __init__(self, core_type: Any, uc: Uc, rules: StepRules) -> None:
        def address(function: Any) -> int:
            return int(ctypes.cast(function, ctypes.c_void_p).value or 0)

        functions = (
            address(_raw.uc_reg_read_batch),
            address(_raw.uc_emu_stop),
            address(_raw.uc_mem_read),
            address(_raw.uc_hook_add),
            address(_raw.uc_hook_del),
        )
        uch = ctypes.cast(uc._uch, ctypes.c_void_p).value or 0
        constants = (UC_HOOK_CODE, UC_HOOK_MEM_WRITE, UC_HOOK_MEM_READ_AFTER, MEM_WRITE)
        # The core holds the rules weakly: a Machine -> core -> rules -> Machine
        # cycle would never be freed (the core is not garbage collected).
        # `uc` too (held weakly): the core's hooks stay registered until the core goes.
        self.core = core_type(
            weakref.proxy(rules), uch, functions, UC_IDS, _RCX, _RSP, constants, uc
        )
        # New addresses decided NORMAL in C, without a call into Python per address.
        capstone_core = native_capstone(native_module())
        if capstone_core is not None:
            self.core.use_capstone(capstone_core)


class PythonRecording:
    """The recording hooks in Python: registers per step, memory events, spin, rep."""

    def __init__(
        self, uc: Uc, rules: StepRules, max_steps: int, chunk_rows: int, on_chunk: ChunkHandler
    ) -> None:
        uch = uc._uch
        n_regs, reg_ids, values, pointers = register_buffers()
        read_batch = _reg_read_batch
        emu_stop = _emu_stop
        kinds = rules.decisions.kinds
        decide = rules.decisions.decide
        decided = rules.decided
        watched = rules.decisions.watched
        registers = bytearray()
        events: list[MemEvent] = []
        append_event = events.append
        step = 0
        chunk_start = 0
        previous_rip = -1
        previous_row = b""
        next_check = min(chunk_rows, max_steps)
        self.stop_kind = 0
        self.error: BaseException | None = None

        def flush() -> bool:
            nonlocal registers, events, append_event, chunk_start, previous_row
            go_on = True
            if registers:
                previous_row = bytes(registers[-ROW_BYTES:])
                go_on = on_chunk(chunk_start, by_register(registers), events)
            chunk_start = step
            registers = bytearray()
            events = []
            append_event = events.append
            return go_on

        def at_check() -> bool:
            """Every `chunk_rows` steps: hand the chunk over; at `max_steps`: stop."""
            nonlocal next_check
            try:
                if step >= max_steps:
                    self.stop_kind = NATIVE_MAX_STEPS
                    emu_stop(uch)
                    return False
                if not flush():  # on_chunk asked to stop (a limit)
                    emu_stop(uch)
                    return False
                next_check = min(step + chunk_rows, max_steps)
            except BaseException as exc:  # a ctypes callback must not raise
                self.error = exc
                emu_stop(uch)
                return False
            return True

        def is_spin() -> bool:
            """Same rip, same registers and nothing written: a jump to itself."""
            last = bytes(registers[-ROW_BYTES:]) if registers else previous_row
            if bytes(values) != last:
                return False
            for event in reversed(events):
                if event[0] != step - 1:
                    break
                if event[1] == MEM_WRITE:
                    return False
            return True

        # The per-step path: one batch register read, one append, one compare,
        # one lookup of the instruction's decision.
        def on_code(_handle: Any, address: int, size: int, _user: Any) -> None:
            nonlocal step, previous_rip
            if rules.pending_at >= 0:
                rules.answer_pending(address)
            if step == next_check and not at_check():
                return
            read_batch(uch, reg_ids, pointers, n_regs)
            if address == previous_rip and is_spin():
                self.stop_kind = NATIVE_SPIN
                emu_stop(uch)
                return
            if address == previous_rip and values[_RCX] == 0 and is_rep_string(uc, address):
                # unicorn enters a `rep` string instruction once more after its
                # last iteration, to find rcx == 0 and do nothing. The CPU
                # retires the last iteration without that step (single-stepped,
                # it traps once per iteration): `rep stosb` with rcx = 3 is 3
                # steps, not 4. Not a row. (A rep reached with rcx == 0 from
                # elsewhere does run once on the CPU, and is one.)
                return
            registers.extend(values)
            previous_rip = address
            step += 1
            kind = kinds.get(address) or decide(address) & 0xFF
            if kind != NORMAL:
                decided(address, kind, size)

        def on_memory(
            _handle: Any, access: int, address: int, size: int, value: int, _user: Any
        ) -> None:
            append_event((step - 1, access, address, size, value))
            if access == MEM_WRITE and (
                address >> _PAGE_BITS in watched or (address + size - 1) >> _PAGE_BITS in watched
            ):
                rules.written(address, size)

        def drop_writes(last_step: int) -> None:
            while events and events[-1][0] == last_step and events[-1][1] == MEM_WRITE:
                events.pop()

        def set_previous_rip(rip: int) -> None:
            nonlocal previous_rip
            previous_rip = rip

        self.step: Callable[[], int] = lambda: step
        self.previous_rip: Callable[[], int] = lambda: previous_rip
        #: Another thread's CPU was put in: the `rep` rule compares with its last rip.
        self.set_previous_rip: Callable[[int], None] = set_previous_rip
        self.add_event: Callable[[MemEvent], None] = lambda event: append_event(event)
        self.drop_writes: Callable[[int], None] = drop_writes
        self.flush: Callable[[], bool] = flush
        self._uch = uch
        self._code_hook = HOOK_CODE_CFUNC(on_code)
        self._memory_hook = HOOK_MEM_ACCESS_CFUNC(on_memory)
        self._handles: list[Any] = []

    def attach(self) -> None:
        self._handles = [
            add_raw_hook(self._uch, UC_HOOK_CODE, self._code_hook),
            add_raw_hook(self._uch, UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ_AFTER, self._memory_hook),
        ]

    def detach(self) -> None:
        for handle in self._handles:
            uclib.uc_hook_del(self._uch, handle)
        self._handles = []

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def stopped(self) -> bool:
        """The hooks stopped the run (max steps, a spin, an error)."""
        return self.stop_kind != 0 or self.error is not None


class NativeRecording:
    """`PythonRecording`'s interface over the C core."""

    def __init__(
        self,
        native: NativeHooks,
        rules: StepRules,
        max_steps: int,
        chunk_rows: int,
        on_chunk: ChunkHandler,
    ) -> None:
        self.core = native.core
        self.rules = rules
        self.max_steps = max_steps
        self.chunk_rows = chunk_rows
        self.on_chunk = on_chunk

    @property
    def stop_kind(self) -> int:
        return int(self.core.stop) if self.core.stop in (NATIVE_MAX_STEPS, NATIVE_SPIN) else 0

    def step(self) -> int:
        return int(self.core.step)

    def previous_rip(self) -> int:
        return int(self.core.previous_rip)

    def add_event(self, event: MemEvent) -> None:
        self.core.add_event(*event)

    def drop_writes(self, last_step: int) -> None:
        self.core.drop_writes(last_step)

    def flush(self) -> bool:
        first, registers, events = self.core.take_chunk()
        return self.on_chunk(first, registers, events) if registers else True

    def attach(self) -> None:
        self.rules.chunk = self.on_chunk
        self.core.attach_record(self.max_steps, self.chunk_rows)

    def detach(self) -> None:
        self.core.detach()
        self.rules.chunk = None

    def raise_error(self) -> None:
        self.core.raise_error()

    def stopped(self) -> bool:
        return int(self.core.stop) != 0

    def set_previous_rip(self, rip: int) -> None:
        self.core.previous_rip = rip


def python_counter(uc: Uc, rules: StepRules) -> tuple[Callable[[], int], list[Any], list[int]]:
    """Fast-forward hooks in Python: count steps as `run` does, keep the step rules.
    Returns (the count so far, the hooks to register: code, memory write, and
    [the last counted rip], which a thread switch sets)."""
    counter = [0]
    previous = [-1]
    kinds = rules.decisions.kinds
    decide = rules.decisions.decide
    watched = rules.decisions.watched

    def count(_handle: Any, address: int, size: int, _user: Any) -> None:
        if rules.pending_at >= 0:
            rules.answer_pending(address)
        # Not unicorn's extra entry into a finished `rep` (see `PythonRecording`).
        if address == previous[0] and _is_rep_reentry(uc, address):
            return
        previous[0] = address
        counter[0] += 1
        if not counter[0] & TICK_MASK and rules.tick is not None:
            rules.tick(counter[0])
        kind = kinds.get(address) or decide(address) & 0xFF
        if kind != NORMAL:
            rules.decided(address, kind, size)

    def on_write(
        _handle: Any, _access: int, address: int, size: int, _value: int, _user: Any
    ) -> None:
        if address >> _PAGE_BITS in watched or (address + size - 1) >> _PAGE_BITS in watched:
            rules.written(address, size)

    callbacks = [HOOK_CODE_CFUNC(count), HOOK_MEM_ACCESS_CFUNC(on_write)]
    return (lambda: counter[0]), callbacks, previous


def register_buffers() -> tuple[int, Any, Any, Any]:
    """(count, register ids, values, pointers to each value): what one
    `uc_reg_read_batch` call reads every register into, prepared once."""
    n_regs = len(UC_IDS)
    reg_ids = (ctypes.c_int * n_regs)(*UC_IDS)
    values = (ctypes.c_uint64 * n_regs)()
    base = ctypes.addressof(values)
    pointers = (ctypes.c_void_p * n_regs)(*[base + WORD * i for i in range(n_regs)])
    return n_regs, reg_ids, values, pointers


def by_register(rows: bytes | bytearray) -> bytes:
    """Rows of REGISTERS (row by row, as the Python hooks append them) as the
    chunk hands them over: register by register, as the C core fills them."""
    import numpy as np

    table = np.frombuffer(rows, dtype="<u8").reshape(-1, len(REGISTERS))
    return np.ascontiguousarray(table.T).tobytes()


def events_array(events: list[MemEvent] | bytes) -> Any:
    """A chunk's memory events as an (n, 5) int64 array, from either implementation."""
    import numpy as np

    if isinstance(events, bytes):
        return np.frombuffer(events, dtype=np.int64).reshape(-1, 5)
    return np.array(events, dtype=np.int64).reshape(-1, 5)


#: String instructions a rep/repe/repne prefix repeats (ins, movs, outs, cmps, stos, lods, scas).
_STRING_OPCODES = frozenset((0x6C, 0x6D, 0x6E, 0x6F, *range(0xA4, 0xA8), *range(0xAA, 0xB0)))
_LEGACY_PREFIXES = frozenset((0xF0, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))


def _is_rep_reentry(uc: Uc, address: int) -> bool:
    """At an instruction that follows itself: unicorn's extra entry into a finished rep."""
    return int(uc.reg_read(x86.UC_X86_REG_RCX)) == 0 and is_rep_string(uc, address)


def is_rep_string(uc: Uc, address: int) -> bool:
    """Whether the instruction at `address` is a rep-prefixed string instruction.

    Runs only when an instruction follows itself, so decoding prefixes by hand
    here costs nothing on the per-step path. (An 0x67 prefix would count in
    ecx; the rcx == 0 test above is then conservative: no row is dropped.)
    """
    rep = False
    try:
        code = bytes(uc.mem_read(address, 15))
    except UcError:  # the instruction ends close to unmapped memory
        code = bytes(uc.mem_read(address, -address % 0x1000 or 0x1000))
    for byte in code:
        if byte in (0xF2, 0xF3):
            rep = True
        elif byte in _LEGACY_PREFIXES or 0x40 <= byte <= 0x4F:  # REX last, but harmless
            continue
        else:
            return rep and byte in _STRING_OPCODES
    return False
