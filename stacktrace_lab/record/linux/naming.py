"""Names and bounds of the regions a real program's recording finds.

A region's name is also the name of its snapshot column (`stack__<name>`), so
it stays a plain identifier; this module decides it in one place for the
process front end (`process.py`) and the discovery pass (`discovery.py`).

A stack found in an anonymous mapping is nested in that mapping's region
(kind `mapped`, which keeps the whole mapping) and bounded by its accessible
part: guard pages (mapped with no access, as libaco and most coroutine
libraries put under a stack) are not the stack, so running into one is an
overflow of it.
"""

from __future__ import annotations

#: The stack Linux gives the process (not `main`: `main` is a function, and
#: "ret pops main+254 from main+11384" reads as code).
PROCESS_STACK = "stack"


def thread_stack_name(number: int) -> str:
    """The stack thread `number` (2, 3...: the `thread` column) started on; the
    process's first thread runs on `stack`."""
    return f"thread_{number}_stack"


#: How a stack labelled by the function that first ran on it begins.
FIRST_RAN = "stack of "


def first_ran_label(function: str) -> str:
    """The label of a stack known only by the function that first ran on it (an
    mmap'd stack, a static array, a range): `stack of worker`."""
    return f"{FIRST_RAN}{function}"


def thread_stack_label(number: int, found: str = "") -> str:
    """What a person reads for thread `number`'s stack (`thread 2 stack`), with what
    discovery found it to be when that says more (`thread 2 stack, calloc(65536) in
    main` for a stack the program gave pthread_attr_setstack; not the function that
    first ran on it, glibc's `start_thread` for every thread)."""
    said = f"thread {number} stack"
    return f"{said}, {found}" if found and not found.startswith(FIRST_RAN) else said


def identifier(name: str) -> str:
    """A region name usable in `REGION[INDEX]` and a column name: `a::b` -> `a.b`."""
    cleaned = name.replace("::", ".")
    return "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in cleaned)


def unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... when taken; the result is added to `taken`."""
    chosen, n = name, 2
    while chosen in taken:
        chosen = f"{name}_{n}"
        n += 1
    taken.add(chosen)
    return chosen


def usable_part(start: int, end: int, no_access: list[tuple[int, int]]) -> tuple[int, int]:
    """[start, end) without the no-access pages at either end (a guard page under a stack,
    or over it); the whole range when nothing in it is accessible."""
    lo, hi = start, end
    moved = True
    while moved and lo < hi:
        moved = False
        for a, b in no_access:
            if a <= lo < b:
                lo, moved = b, True
            if a < hi <= b:
                hi, moved = a, True
    return (lo, hi) if lo < hi else (start, end)
