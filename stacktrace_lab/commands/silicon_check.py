"""`stacktrace-lab silicon-check TARGET [--from SYMBOL] [--to SYMBOL] [--json]`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the silicon check loads the recorder: imported when the command runs
    from ..silicon.compare import Comparison


@click.command("silicon-check")
@click.argument("target")
@click.option("--from", "from_symbol", metavar="SYMBOL", help="Compare from this symbol on.")
@click.option("--to", "to_symbol", metavar="SYMBOL", help="Stop comparing where this is reached.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Compare at most this many steps.")
@click.option(
    "--no-replay",
    is_flag=True,
    help="Let the emulator answer syscalls, rdtsc and rdrand itself (the environment's part).",
)
def silicon_check_command(
    target: str,
    from_symbol: str | None,
    to_symbol: str | None,
    as_json: bool,
    max_steps: int | None,
    no_replay: bool,
) -> int:
    """Single-step TARGET on this CPU and compare every step with the emulated run.

    TARGET is a built-in scenario, a scenario .toml, an x86-64 ELF (static or
    dynamically linked), or a trace file (its program runs natively, from the
    recorder's first stack, its system calls answered from the trace's log,
    and is compared with the file's rows and memory writes). Exit 0 only when
    the runs are the same: every step's registers (with the documented masks)
    and memory writes, stdout and stderr byte for byte, and the end (exit
    status or fault kind); 1 at the first difference (the text and JSON name
    it, its cause and category: only an instruction's own result is called an
    emulator bug); 2 on bad input, for a program that starts a thread ("threads
    are not compared yet"), or when ptrace is not available here.

    What runs natively: the program's instructions, single-stepped (to --from
    at full speed). cpuid and xgetbv never run: the recorder's CPU model
    answers them (rdtsc and rdrand too, before --from and for a trace). Every
    system call is stopped before the kernel runs it; only those acting on
    the process itself (its memory map, signal state, ids, clock, random
    bytes) run. Files are seen only through the recorder's read-only view
    (the loader's libraries, /etc/ld.so.cache, the program's directory),
    answered by the tracer, never opened by the program; a library's mmap is
    an anonymous mapping the tracer fills. Output is captured from memory,
    stdin is empty, everything else is answered -ENOSYS without running, and
    the process group is killed at the end (docs/silicon.md).
    """
    from ..silicon.check import silicon_check

    result = silicon_check(
        target,
        from_symbol=from_symbol,
        to_symbol=to_symbol,
        replay=not no_replay,
        max_steps=max_steps,
    )
    comparison = result.comparison
    if as_json:
        doc = {"target": result.target.name, **comparison.to_json()}
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        click.echo(_summary(result.target.name, comparison))
    return 0 if comparison.same else 1


def _summary(name: str, c: Comparison) -> str:
    from ..silicon.compare import CAUSES

    touched = ", ".join(f"{k} {v}" for k, v in c.normalisations.items())
    lines = []
    if c.divergence is None:
        lines.append(
            f"{name}: the CPU and the emulator agree on all {c.compared_steps} steps "
            f"(registers, memory writes, stdout, stderr; stop: {c.native_stop})"
        )
    else:
        d = c.divergence
        where = f"{d.symbol} ({d.rip:#x})" + (f", {d.source}" if d.source else "")
        lines.append(f"{name}: differs at step {d.step}, {where}")
        if d.previous_instruction is not None:
            lines.append(f"  after:  {d.previous_instruction}")
        lines.append(f"  at:     {d.instruction}")
        for reg, (native, emulated) in d.registers.items():
            lines.append(f"  {reg:<6}  CPU {native:#x}  emulator {emulated:#x}")
        if not d.registers:
            lines.append(f"  CPU: {c.native_steps} steps, {c.native_stop}")
            lines.append(f"  emulator: {c.emulated_steps} steps, {c.emulated_stop}")
        if d.first_register is not None:
            lines.append(f"  first:  {d.first_register}")
        category, text = CAUSES[d.cause]
        lines.append(f"  most likely: {d.cause} ({category}): {text}")
    if c.output_difference is not None:
        stream, at, cpu_bytes, emulator_bytes = c.output_difference
        if c.divergence is None:
            lines[0] = f"{name}: {stream} differs (every step's registers agree)"
        lines.append(
            f"  {stream} differs first at byte {at}: CPU {cpu_bytes!r}, emulator {emulator_bytes!r}"
        )
    if c.memory_difference is not None:
        row, address, cpu_bytes, emulator_bytes = c.memory_difference
        if c.first_difference == "memory":
            lines[0] = f"{name}: memory written at step {row} differs"
        if address < 0:
            lines.append(f"  memory: the second native pass did not repeat the first at step {row}")
        else:
            first = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(cpu_bytes, emulator_bytes, strict=False))
                    if a != b
                ),
                0,
            )
            if emulator_bytes:
                lines.append(
                    f"  memory at {address:#x} after step {row}: CPU {cpu_bytes.hex()}, "
                    f"emulator {emulator_bytes.hex()}; first differing byte at {address + first:#x}"
                )
            else:  # the CPU stored there, the emulator did not
                lines.append(
                    f"  memory at {address:#x} after step {row}: the CPU stored "
                    f"{cpu_bytes.hex() or 'there'}, the emulator wrote nothing there"
                )
            if c.memory_instruction:
                lines.append(f"  written by: {c.memory_instruction}")
    if c.syscall_difference is not None:
        row, what = c.syscall_difference
        if c.first_difference == "syscall":
            lines[0] = f"{name}: the system call at step {row} is not the trace's"
        lines.append(f"  system call at step {row}: {what}")
    for mismatch in c.replay_mismatches:
        lines.append(f"  replay: {mismatch}")
    lines.append(f"  normalised (rows): {touched}")
    return "\n".join(lines)
