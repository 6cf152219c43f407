"""Names of the regions a real program's recording finds: what a person reads in every view.

A region's name is also the name of its snapshot column (`stack__<name>`), so
it stays a plain identifier; this module decides it in one place for the
process front end (`process.py`) and the discovery pass (`discovery.py`).
"""

from __future__ import annotations

#: The stack Linux gives the process (not `main`: `main` is a function, and
#: "ret pops main+254 from main+11384" reads as code).
PROCESS_STACK = "stack"


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
