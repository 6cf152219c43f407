"""The progress bar of `record` and `replay`, apart from commands/common.py: rich
(common's consoles) is imported only when the bar is shown, on a terminal, so a
recording into a pipe or a CI log does not pay for it (docs/performance.md)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..record.recorder import Progress as PhasedProgress


@contextmanager
def step_progress(total: int, label: str) -> Iterator[PhasedProgress | None]:
    """A progress bar on stderr for long runs; nothing when stderr is not a terminal.

    `update(steps, phase)`: a program's recording goes through phases (the
    unrecorded start-up before `--from`, the discovery pass, the recording),
    each shown with its own step count and rate; only the recording has a
    known total."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .common import stderr_console

    with Progress(
        TextColumn("{task.description}", markup=False),  # a program's name, as it is
        BarColumn(),
        TextColumn("{task.completed:,} steps"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=stderr_console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total, rate="")
        shown = ["recording"]
        since = [time.perf_counter()]

        def update(steps: int, phase: str = "recording") -> None:
            now = time.perf_counter()
            if phase != shown[0]:
                shown[0], since[0] = phase, now
                progress.reset(task, total=total if phase == "recording" else None)
            elapsed = now - since[0]
            rate = f"{steps / elapsed:,.0f} steps/s" if elapsed > 0 else ""
            progress.update(task, completed=steps, description=f"{label}: {phase}", rate=rate)

        yield update
