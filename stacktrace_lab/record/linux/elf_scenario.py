"""A scenario file whose program is a compiled one: `[program] elf = "prog"`.

```toml
name = "first-switch-rust"
max_steps = 200000
[[stacks]]              # optional: name a discovered stack (by its size) or a data symbol
name = "green"
size = 48
[expect]
stdout = "I LOVE WAKING UP ON A NEW STACK!\n"
stop = "spin"
[[expect.ret]]
stack = "green"
index = 32
target = "first_switch::hello"
[program]
elf = "first_switch"    # relative to the .toml
args = []               # optional
from = "main"           # optional, as --from
to = "exit"             # optional, as --to
```

Stacks are found as for `record ./prog`; a `[[stacks]]` entry renames the
first found stack of that `size` to its `name`, or with `symbol = "NAME"`
declares the ELF data object of that name as a stack. The rest of the
scenario file (syntax, entry, [[data]], assembly) does not apply to a
compiled program and is refused.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...errors import BadInput
from ...layout import Region
from ...limits import DEFAULT_LIMITS, check_toml_depth, read_input, resolve_input
from ...scenario import _expectations, _Fields  # one parser for [expect]
from ...trace.format import ProgramInfo
from ..recorder import Description
from .naming import PROCESS_STACK

_TOP_KEYS = {"name", "description", "max_steps", "stacks", "expect", "program"}
_PROGRAM_KEYS = {"elf", "args", "from", "to"}


def is_elf_scenario(path: str | Path) -> bool:
    """Whether a scenario file's `[program]` names a compiled program (a file that
    cannot be read is not: the scenario loader says what is wrong with it)."""
    try:
        doc = _read(Path(path))
    except BadInput:
        return False
    program = doc.get("program")
    return isinstance(program, dict) and "elf" in program


def _read(path: Path) -> dict[str, Any]:
    # Bounded as every scenario file is (limits.py): regular, at most so large, so deep.
    data = read_input(path, DEFAULT_LIMITS.max_source_bytes, "scenario file")
    depth = DEFAULT_LIMITS.max_toml_depth
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise BadInput(f"{path}: TOML nested more than {depth} levels deep") from None
    check_toml_depth(doc, path, depth)
    return doc


def describe_elf_scenario(
    path: str | Path, max_steps: int | None = None, allow_outside: bool = False
) -> Description:
    path = Path(path)
    raw = path.read_bytes() if path.is_file() else b""
    doc = _read(path)
    f = _Fields(path, doc)
    f.no_unknown(_TOP_KEYS)
    program = f.table["program"]
    p = _Fields(path, program, "program.")
    p.no_unknown(_PROGRAM_KEYS)
    # Inside the scenario's directory, as `[program] file` is: a shared scenario
    # must not record (and put the code bytes of) a host program it names.
    where = f"{path}: field 'program.elf'"
    elf = resolve_input(p.string("elf"), path.parent, where, allow_outside)
    args = program.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise p.fail("args", "must be a list of strings")
    declared = []
    for i, table in enumerate(f.tables("stacks")):
        s = _Fields(path, table, f"stacks[{i}].")
        s.no_unknown({"name", "size", "symbol"})
        declared.append((s.string("name"), table.get("size"), table.get("symbol"), s))
    sizes = {name: int(size) for name, size, _, _ in declared if isinstance(size, int)}
    expect = _expectations(f, {**sizes, **{n: 1 << 20 for n, _, sym, _ in declared if sym}})
    # Here, not at import: a scenario of assembly asks `is_elf_scenario` and needs
    # none of the ELF front end (pyelftools, the loader, discovery: ~0.1 s).
    from .elf_front import describe_elf

    description = describe_elf(
        elf,
        args,
        p.optional_string("from"),
        p.optional_string("to"),
        max_steps or (f.integer("max_steps", 1, 1 << 31) if "max_steps" in doc else None),
        expect=expect,
        name=f.string("name"),
    )
    if declared:
        description.spec = replace(
            description.spec, regions=_named(description.spec.regions, declared, elf)
        )
    description.info = replace(description.info, description=f.string("description", ""))
    description.program = ProgramInfo("elf", str(elf), description.program.sha256)
    description.options["scenario_sha256"] = hashlib.sha256(raw).hexdigest()
    return description


def _named(
    regions: list[Region], declared: list[tuple[str, Any, Any, _Fields]], elf: Path
) -> list[Region]:
    """The regions with the scenario's names on the stacks it declares."""
    from .elf import load_elf

    out = list(regions)
    taken: set[int] = set()
    for name, size, symbol, fields in declared:
        if symbol is not None:
            image = load_elf(elf)
            found = [d for d in image.data_symbols if d.name == symbol]
            if not found:
                raise fields.fail("symbol", f"no data symbol {symbol!r} in {elf}")
            data = found[0]
            stack = Region(name, "stack", data.addr, data.size, "rw-")
            same = [i for i, r in enumerate(out) if r.kind == "stack" and r.base == data.addr]
            if same:
                out[same[0]] = stack
                taken.add(same[0])
            else:
                out.insert(1, stack)
            continue
        match = next(
            (
                i
                for i, r in enumerate(out)
                if r.kind == "stack"
                and r.name != PROCESS_STACK
                and r.size == size
                and i not in taken
            ),
            None,
        )
        if match is None:
            raise fields.fail("size", f"no stack of {size} bytes was found in {elf}")
        out[match] = replace(out[match], name=name)
        taken.add(match)
    return out
