"""Threads of one emulated process, run one at a time under a fixed schedule.

The kernel (syscalls.py) creates threads (`clone`/`clone3` with CLONE_THREAD),
blocks and wakes them (`futex`), and ends them (`exit`); the machine
(machine.py) switches the CPU between them. One thread runs at a time, and it
runs until one of:

- it blocks (a `futex` wait), yields (`sched_yield`) or exits: the `syscall`
  hook asks for a switch and stops the emulation after that instruction;
- it has run `slice` instructions (unicorn's instruction count) while another
  thread is alive: the emulation stops before the next instruction.

The next thread is the first runnable one after the current in creation
order (round robin). Time is the machine's `Clock`, never the host's: it
moves only when the program reads it (a small step a read) and when a thread
sleeps or waits with a timeout and nothing else can run (then it jumps to
the first deadline). A sleeper or a timed waiter runs again at the first
switch after the clock passed its deadline, so the schedule is the same on
every host. When every thread waits without a timeout the run ends with
reason `deadlock`.

Each thread keeps its whole CPU state (unicorn's context: every register,
fs_base, x87 and SSE state) while it does not run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Instructions a thread runs before the next runnable one gets the CPU.
DEFAULT_SLICE = 10_000
#: Where the machine's clock starts: 2023-11-14 22:13:20 UTC, in nanoseconds.
CLOCK_START_NS = 1_700_000_000 * 1_000_000_000
#: How far each read of the clock moves it (1 us): a loop that polls the clock
#: until a deadline ends, as one that polls rdtsc does (cpu.py).
CLOCK_READ_NS = 1_000
#: The futex wait's answer when its timeout expired (-ETIMEDOUT).
ETIMEDOUT = 110
#: FUTEX_BITSET_MATCH_ANY: what FUTEX_WAIT and FUTEX_WAKE use.
MATCH_ANY = 0xFFFFFFFF
#: FUTEX_WAKE on a futex a PI waiter waits on (-EINVAL, as Linux answers).
EINVAL = 22
#: A PI futex's word (linux/futex.h): the owner's tid, and a bit saying that
#: threads wait in the kernel (its owner must unlock through FUTEX_UNLOCK_PI).
FUTEX_WAITERS, FUTEX_OWNER_DIED, FUTEX_TID_MASK = 0x80000000, 0x40000000, 0x3FFFFFFF

RUNNABLE, BLOCKED, EXITED = "runnable", "blocked", "exited"


@dataclass
class Clock:
    """The machine's clock, one for every clock id (realtime, monotonic, ...).

    It does not follow the host, so a recording is the same every time: it
    starts at CLOCK_START_NS, moves CLOCK_READ_NS at each read, and jumps to a
    sleeper's or timed waiter's deadline when nothing else can run."""

    now: int = CLOCK_START_NS

    def read(self) -> int:
        value = self.now
        self.now += CLOCK_READ_NS
        return value

    def advance_to(self, when: int) -> None:
        self.now = max(self.now, when)


@dataclass
class Thread:
    #: 1 for the process's first thread, then 2, 3... in creation order (the `thread` column).
    number: int
    tid: int
    state: str = RUNNABLE
    #: The CPU state while the thread does not run (a unicorn context).
    context: Any = None
    #: Registers to set after restoring `context` when the thread first runs
    #: (a new thread starts as a copy of its parent at the `syscall`).
    start: dict[int, int] = field(default_factory=dict)
    #: rax to set when it next runs: the answer of the call it blocked in.
    result: int | None = None
    #: CLONE_CHILD_CLEARTID / set_tid_address: zeroed and woken at exit.
    clear_tid: int = 0
    #: set_robust_list: the head of its list of robust futexes, walked at exit.
    robust_list: int = 0
    #: What a blocked thread waits for: (futex address, bitset), and when its
    #: timeout expires (nanoseconds of the machine's clock; None: never).
    futex: tuple[int, int] | None = None
    deadline: int | None = None
    #: It waits to own a PI futex (FUTEX_LOCK_PI): FUTEX_UNLOCK_PI hands it over,
    #: FUTEX_WAKE may not wake it.
    pi: bool = False
    #: It sleeps (nanosleep, clock_nanosleep) until `deadline`: 0 then, not -ETIMEDOUT.
    sleeping: bool = False
    #: The order threads blocked in: among equal deadlines, the first expires first.
    blocked_seq: int = 0
    #: The recording hooks' last rip of this thread (the `rep` rule, hooks.py).
    previous_rip: int = -1
    #: Where its stack starts (rsp when it began), for naming its stack.
    stack_top: int = 0
    #: Its fs base when it began (CLONE_SETTLS: its thread-local storage).
    tls: int = 0
    exit_status: int | None = None

    def describe(self) -> str:
        if self.sleeping:
            return f"thread {self.number} (tid {self.tid}) sleeps"
        if self.futex is not None:
            waits = f"waits on futex {self.futex[0]:#x}"
            return f"thread {self.number} (tid {self.tid}) {waits}"
        return f"thread {self.number} (tid {self.tid}) {self.state}"


class Threads:
    """The threads of the process and the schedule's state."""

    def __init__(self, first_tid: int, slice_steps: int = DEFAULT_SLICE) -> None:
        self.all: list[Thread] = [Thread(1, first_tid)]
        self.current = self.all[0]
        self.slice = slice_steps
        #: Set by a system call: stop after this `syscall` and run the scheduler.
        self.switch_wanted = False
        #: Set by clone: stop after this `syscall`, go on with slices (the caller runs on).
        self.reslice = False
        self._next_tid = first_tid + 1
        self._blocked_seq = 0
        self.clock = Clock()

    # --- questions ------------------------------------------------------------------

    def several(self) -> bool:
        """More than one thread alive: the schedule has slices."""
        return sum(t.state != EXITED for t in self.all) > 1

    def alive(self) -> list[Thread]:
        return [t for t in self.all if t.state != EXITED]

    def by_tid(self, tid: int) -> Thread | None:
        return next((t for t in self.all if t.tid == tid and t.state != EXITED), None)

    # --- what the system calls do ------------------------------------------------------

    def create(self, context: Any, start: dict[int, int], stack_top: int) -> Thread:
        thread = Thread(len(self.all) + 1, self._next_tid, context=context, start=start)
        thread.stack_top = stack_top
        self._next_tid += 1
        self.all.append(thread)
        return thread

    def block(self, address: int, bitset: int, deadline: int | None, pi: bool = False) -> None:
        """The current thread waits on the futex at `address` (`pi`: to own it)."""
        thread = self._blocked(deadline)
        thread.futex = (address, bitset)
        thread.pi = pi

    def sleep(self, deadline: int) -> None:
        """The current thread sleeps until the clock reads `deadline`."""
        self._blocked(deadline).sleeping = True

    def _blocked(self, deadline: int | None) -> Thread:
        """The current thread, blocked until woken or until `deadline`, in the order
        threads blocked in; the scheduler runs next."""
        thread = self.current
        thread.state = BLOCKED
        thread.deadline = deadline
        self._blocked_seq += 1
        thread.blocked_seq = self._blocked_seq
        self.switch_wanted = True
        return thread

    def wake(self, address: int, count: int, bitset: int = MATCH_ANY) -> int:
        """Wake up to `count` threads waiting at `address` (in the order they blocked).
        Meeting a PI waiter there ends it with -EINVAL, as in Linux's futex_wake
        (those woken before it stay woken)."""
        woken = 0
        for thread in self._waiting(address):
            if woken >= count:
                break
            if thread.pi:
                return -EINVAL
            if thread.futex is not None and thread.futex[1] & bitset:
                self._unblock(thread, 0)
                woken += 1
        return woken

    def requeue(self, address: int, wake: int, target: int, move: int) -> int:
        """FUTEX_REQUEUE: wake `wake` waiters, move up to `move` others to `target`.
        PI waiters cannot be requeued so (-EINVAL)."""
        if any(t.pi for t in self._waiting(address)):
            return -EINVAL
        woken = self.wake(address, wake)
        moved = 0
        for thread in self._waiting(address):
            if moved >= move:
                break
            assert thread.futex is not None
            thread.futex = (target, thread.futex[1])
            moved += 1
        return woken + moved

    def pi_waiters(self, address: int) -> list[Thread]:
        """The threads waiting to own the PI futex at `address`, first come first.
        (Linux orders them by priority; every thread here has the same.)"""
        return [t for t in self._waiting(address) if t.pi]

    def hand_over(self, thread: Thread) -> None:
        """FUTEX_UNLOCK_PI: `thread` now owns the PI futex it waited for."""
        self._unblock(thread, 0)

    def exit(self, status: int) -> Thread:
        thread = self.current
        thread.state = EXITED
        thread.exit_status = status
        self.switch_wanted = True
        return thread

    def _waiting(self, address: int) -> list[Thread]:
        waiting = [t for t in self.all if t.state == BLOCKED and t.futex and t.futex[0] == address]
        return sorted(waiting, key=lambda t: t.blocked_seq)

    def _unblock(self, thread: Thread, result: int) -> None:
        thread.state = RUNNABLE
        thread.futex = None
        thread.deadline = None
        thread.pi = False
        thread.sleeping = False
        thread.result = result

    # --- the schedule -------------------------------------------------------------------

    def pick(self) -> Thread | None:
        """The thread to run next: the first runnable one after the current (the
        current last), else the timed waiter whose timeout expires first (it
        returns -ETIMEDOUT); None when every thread waits for ever (a deadlock)."""
        self.switch_wanted = False
        # The timed waiters, first deadline first (among equal ones, first blocked).
        timed = sorted(
            (t for t in self.all if t.state == BLOCKED and t.deadline is not None),
            key=lambda t: (t.deadline, t.blocked_seq),
        )
        for thread in timed:
            if thread.deadline is not None and thread.deadline <= self.clock.now:
                self._time_out(thread)  # the clock passed it while others ran
        n = len(self.all)
        start = self.current.number  # the index after the current one
        for k in range(n):
            thread = self.all[(start + k) % n]
            if thread.state == RUNNABLE:
                return thread
        # None can run, so none of the timed waiters has expired: the first expires.
        if not timed:
            return None
        expired = timed[0]
        assert expired.deadline is not None
        self.clock.advance_to(expired.deadline)
        self._time_out(expired)
        return expired

    def _time_out(self, thread: Thread) -> None:
        """`thread`'s deadline has come: a sleep ends (0), a timed wait fails (-ETIMEDOUT)."""
        self._unblock(thread, 0 if thread.sleeping else -ETIMEDOUT)

    def deadlock(self) -> str:
        return "every thread waits: " + "; ".join(t.describe() for t in self.alive())

    def metadata(self) -> list[dict[str, object]]:
        """The trace's `threads`: each thread's number, tid and how it ended."""
        return [
            {
                "number": t.number,
                "tid": t.tid,
                "stack_top": t.stack_top,
                "tls": t.tls,
                "exit_status": t.exit_status,
            }
            for t in self.all
        ]
