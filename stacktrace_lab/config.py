"""`[tool.stacktrace-lab]` in pyproject.toml: one place for a project's settings.

    [tool.stacktrace-lab]
    traces-dir = "traces"          # goldens: the pytest plugin's golden dir
    record-dir = "stacktrace-lab-traces"  # `record`'s and `demo`'s default output
    reports-dir = "reports"        # `report`'s default output: <reports-dir>/<trace name>/
    diff-ignore = ["rflags"]       # names `diff` and the plugin leave out (as --ignore)
    snapshot-limit = 512           # bytes of each stack stored per step (record)
    max-steps = 100000             # recording step limit (default: the scenario's own)

The command line and the pytest plugin both call `load_config()`; an option
given on the command line (or a pytest ini setting) wins over the file. The
file is the first pyproject.toml found in the start directory or above it;
relative directories are relative to the file's directory. Without a file
(or without the table) every setting has its default, relative to the start
directory.

This module imports nothing heavy: it runs at every command's start.
"""

from __future__ import annotations

import contextlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput

TABLE = "stacktrace-lab"
KEYS = ("traces-dir", "record-dir", "reports-dir", "diff-ignore", "snapshot-limit", "max-steps")
#: `record`'s default output folder. Not the goldens' (traces-dir): the plugin owns
#: those, and a trace recorded by hand must never be taken for one (issue 24).
DEFAULT_RECORD_DIR = "stacktrace-lab-traces"


@dataclass(frozen=True)
class Config:
    #: Where relative directories start: the pyproject.toml's directory, or the start directory.
    root: Path
    traces_dir: Path
    reports_dir: Path
    record_dir: Path = Path(DEFAULT_RECORD_DIR)
    diff_ignore: tuple[str, ...] = ()
    snapshot_limit: int | None = None  # None: the recorder's default
    max_steps: int | None = None  # None: the scenario's own
    #: The file read, if any (for messages).
    source: Path | None = field(default=None, compare=False)

    def golden_path(self, path: Path) -> bool:
        """Whether `path` lies inside the traces (goldens) directory."""
        try:
            path.resolve().relative_to(self.traces_dir.resolve())
        except ValueError:
            return False
        return True


def find_pyproject(start: Path) -> Path | None:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path | None = None) -> Config:
    """The settings for a run started in `start` (default: the current directory)."""
    relative = start is None  # the CLI: show paths as the user would type them
    start = (start or Path.cwd()).resolve()
    pyproject = find_pyproject(start)
    table: dict[str, Any] = {}
    root = start
    if pyproject is not None:
        try:
            doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise BadInput(f"{pyproject}: {exc}") from None
        tool = doc.get("tool", {})
        found = tool.get(TABLE) if isinstance(tool, dict) else None
        if found is not None:
            if not isinstance(found, dict):
                raise BadInput(f"{pyproject}: [tool.{TABLE}] must be a table")
            table, root = found, pyproject.parent
    if relative:
        # A file above the current directory keeps its absolute path.
        with contextlib.suppress(ValueError):
            root = root.relative_to(start)
    return _parse(table, root, pyproject if table else None)


def _parse(table: dict[str, Any], root: Path, source: Path | None) -> Config:
    def fail(key: str, what: str) -> BadInput:
        return BadInput(f"{source}: [tool.{TABLE}] {key}: {what}")

    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown setting (known: {', '.join(KEYS)})")

    def directory(key: str, default: str) -> Path:
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            raise fail(key, "must be a directory name (a string)")
        return root / value

    def count(key: str) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(key, f"must be a positive integer, got {value!r}")
        return value

    ignore = table.get("diff-ignore", [])
    if isinstance(ignore, str):
        ignore = ignore.split(",")
    if not isinstance(ignore, list) or not all(isinstance(n, str) for n in ignore):
        raise fail("diff-ignore", "must be a list of names")
    return Config(
        root=root,
        traces_dir=directory("traces-dir", "traces"),
        reports_dir=directory("reports-dir", "reports"),
        record_dir=directory("record-dir", DEFAULT_RECORD_DIR),
        diff_ignore=tuple(n.strip() for n in ignore if n.strip()),
        snapshot_limit=count("snapshot-limit"),
        max_steps=count("max-steps"),
        source=source,
    )
