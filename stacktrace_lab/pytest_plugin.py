"""pytest plugin: record a scenario and compare it with its golden trace.

Registered through the `pytest11` entry point, so installing stacktrace-lab is
enough:

    def test_first_switch(golden_trace):
        golden_trace.check("first-switch")          # or a path to a .toml

`check` records the scenario into the test's tmp_path and diffs it against
`<golden dir>/<scenario name>.parquet` (default dir `traces/`, relative to the
rootdir) with `diff_traces`, so tool-version metadata never fails a test. A
difference fails the test with the diff's text; a missing golden fails the
test and is written, to be reviewed and committed; `--stacktrace-lab-update`
rewrites goldens that differ (or are missing) and lets the test pass.

Options live in one group, `stacktrace-lab`, each with an ini setting. The
module imports nothing heavy at load time: it is loaded in every pytest run
of an environment where stacktrace-lab is installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .diff import TraceDiff

GROUP = "stacktrace-lab"


@dataclass(frozen=True)
class GoldenSettings:
    root: Path  # relative paths (golden dir, results dir, a golden given to check) start here
    golden_dir: Path
    update: bool
    ignore: tuple[str, ...]
    results_dir: Path | None


@dataclass
class _Written:
    """Goldens this session wrote, for the terminal summary."""

    paths: list[tuple[Path, str]] = field(default_factory=list)


_settings_key = pytest.StashKey[GoldenSettings]()
_written_key = pytest.StashKey[_Written]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "golden traces (stacktrace-lab)")
    group.addoption(
        "--stacktrace-lab-update",
        action="store_true",
        default=None,
        help="Rewrite golden traces that differ or are missing, and pass.",
    )
    parser.addini(
        "stacktrace_lab_update",
        type="bool",
        default=False,
        help="Rewrite golden traces that differ or are missing, and pass.",
    )
    group.addoption(
        "--stacktrace-lab-golden-dir",
        default=None,
        metavar="DIR",
        help="Directory of golden traces, relative to the rootdir [default: traces].",
    )
    parser.addini(
        "stacktrace_lab_golden_dir",
        default="traces",
        help="Directory of golden traces, relative to the rootdir.",
    )
    group.addoption(
        "--stacktrace-lab-ignore",
        default=None,
        metavar="COLUMN,...",
        help="Columns or metadata fields the comparison leaves out (as `diff --ignore`).",
    )
    parser.addini(
        "stacktrace_lab_ignore",
        default="",
        help="Columns or metadata fields the comparison leaves out, comma separated.",
    )
    group.addoption(
        "--stacktrace-lab-results-dir",
        default=None,
        metavar="DIR",
        help="For each failing check, keep the new trace and its diff (.diff.txt, "
        ".diff.md) here, e.g. for CI artifacts.",
    )
    parser.addini(
        "stacktrace_lab_results_dir",
        default="",
        help="Where failing checks keep the new trace and its diff (empty: nowhere).",
    )


def pytest_configure(config: pytest.Config) -> None:
    def option(name: str) -> object:
        value = config.getoption(f"--stacktrace-lab-{name}")
        if value is not None:
            return value
        return config.getini("stacktrace_lab_" + name.replace("-", "_"))

    root = config.rootpath
    results = str(option("results-dir"))
    config.stash[_settings_key] = GoldenSettings(
        root=root,
        golden_dir=root / str(option("golden-dir")),
        update=bool(option("update")),
        ignore=_names(str(option("ignore")).split(",")),
        results_dir=root / results if results else None,
    )
    config.stash[_written_key] = _Written()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    written = terminalreporter.config.stash.get(_written_key, None)
    if written is None or not written.paths:
        return
    terminalreporter.section("stacktrace-lab golden traces")
    for path, why in written.paths:
        terminalreporter.write_line(f"{why}: {path}")


def _names(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(n.strip() for n in items if n.strip())


class GoldenTrace:
    """What the `golden_trace` fixture gives a test."""

    def __init__(self, settings: GoldenSettings, workdir: Path, written: _Written) -> None:
        self.settings = settings
        self.workdir = workdir
        self._written = written

    def golden_path(self, name: str) -> Path:
        return self.settings.golden_dir / f"{name}.parquet"

    def check(
        self,
        scenario: str | os.PathLike[str],
        *,
        golden: str | os.PathLike[str] | None = None,
        ignore: Iterable[str] = (),
        align: bool = False,
        max_steps: int | None = None,
    ) -> TraceDiff | None:
        """Record `scenario` (built-in name or .toml path) and compare it with its golden.

        `golden` overrides the golden path; `ignore` adds to the configured
        names. Returns the diff (None when the golden was missing and written).
        """
        # Heavy imports here, not at plugin load (unicorn, pyarrow).
        from .diff import diff_traces, render
        from .diff.render_text import headline, summary
        from .errors import BadInput
        from .record.recorder import RecordOptions, record
        from .scenario import load_scenario
        from .trace import load_trace

        __tracebackhide__ = True
        try:
            loaded = load_scenario(scenario)
            options = RecordOptions(max_steps=max_steps)
            new = record(loaded, self.workdir / f"{loaded.name}.parquet", options).path
        except BadInput as exc:
            pytest.fail(f"stacktrace-lab: {exc}", pytrace=False)
        target = (
            self.settings.root / golden if golden is not None else self.golden_path(loaded.name)
        )

        if not target.exists():
            self._write_golden(new, target, "written (was missing)")
            if self.settings.update:
                return None
            pytest.fail(
                f"golden trace {target} did not exist: wrote it from this run. "
                "Check it (stacktrace-lab report) and commit it.",
                pytrace=False,
            )
        try:
            reference = load_trace(target)
        except BadInput as exc:
            if self.settings.update:
                self._write_golden(new, target, "rewritten (was unreadable)")
                return None
            pytest.fail(f"golden trace unusable: {exc}", pytrace=False)
        try:
            diff = diff_traces(
                reference, new, ignore=(*self.settings.ignore, *_names(ignore)), align=align
            )
        except BadInput as exc:  # an unknown name to ignore
            pytest.fail(f"stacktrace-lab: {exc}", pytrace=False)
        if diff.same:
            return diff
        if self.settings.update:
            self._write_golden(new, target, "rewritten (differed)")
            return diff
        self._keep_results(new, loaded.name, diff)
        first = diff.first_divergence
        gist = headline(first) if first is not None else summary(diff)
        pytest.fail(
            f"{loaded.name} differs from its golden trace: {gist}\n\n"
            + render(diff, "text")
            + f"\nTo accept the new trace as golden: pytest --stacktrace-lab-update ({target})",
            pytrace=False,
        )

    def _write_golden(self, source: Path, target: Path, why: str) -> None:
        # Temp file + rename: a golden is never half written, even under xdist.
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        shutil.copyfile(source, temp)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        self._written.paths.append((target, why))

    def _keep_results(self, trace: Path, name: str, diff: TraceDiff) -> None:
        from .diff import render

        results = self.settings.results_dir
        if results is None:
            return
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trace, results / f"{name}.parquet")
        (results / f"{name}.diff.txt").write_text(render(diff, "text"))
        (results / f"{name}.diff.md").write_text(render(diff, "markdown"))


@pytest.fixture
def golden_trace(request: pytest.FixtureRequest, tmp_path: Path) -> GoldenTrace:
    """Record a scenario and compare it with its golden trace: `golden_trace.check(name)`."""
    config = request.config
    return GoldenTrace(config.stash[_settings_key], tmp_path, config.stash[_written_key])
