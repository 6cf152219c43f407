"""pytest plugin: record a scenario, check its invariants and compare it with its golden trace.

Registered through the `pytest11` entry point, so installing stacktrace-lab is
enough:

    def test_first_switch(golden_trace):
        golden_trace.check("first-switch")          # or a path to a .toml

A golden belongs to one test: by default its path is the test's node id under
the golden directory (`traces/test_switch/test_first_switch.parquet`), or a
name the test gives (`check("first-switch", name="first-switch")` ->
`traces/first-switch.parquet`). Two checks that claim one golden are an error,
so two tests of one scenario under different options cannot share (and
overwrite) a golden.

A check, in order:
1. records the scenario into the test's tmp_path;
2. runs the invariants: any that fails fails the test, unless the test said it
   expects exactly those to fail (`expect_failures=["alignment"]`) or opted
   out (`invariants=False`);
3. diffs the trace against the golden with `diff_traces` (so tool-version
   metadata never fails a test). A difference fails with the diff's text and
   the command that accepts the new trace for this one test; a missing golden
   fails and is written; `--stacktrace-lab-update` rewrites goldens that
   differ (or are missing) and lets the test pass.

At the end of a session that ran every test, goldens no test used are
reported as unused, and removed with `--stacktrace-lab-update`. One summary
line counts passed / written / updated / failed / unused goldens; under
pytest-xdist each worker sends its counts to the controller
(`config.workeroutput`), which adds them up.

Options live in one group, `stacktrace-lab`, each with an ini setting, and
fall back on `[tool.stacktrace-lab]` in pyproject.toml (stacktrace_lab.config).
The module imports nothing heavy at load time: it is loaded in every pytest
run of an environment where stacktrace-lab is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .analysis import CheckResult
    from .diff import TraceDiff

GROUP = "stacktrace-lab"
WORKER_KEY = "stacktrace_lab"
#: The counts of the summary line, in its order.
COUNTS = ("passed", "written", "updated", "failed")


@dataclass(frozen=True)
class GoldenSettings:
    root: Path  # relative paths (golden dir, results dir, a golden given to check) start here
    golden_dir: Path
    update: bool
    ignore: tuple[str, ...]
    results_dir: Path | None
    snapshot_limit: int | None = None
    max_steps: int | None = None


@dataclass
class GoldenLedger:
    """What this process did with goldens; a worker's ledger is merged into the controller's."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    #: golden path -> the node ids that claimed it (more than one is a collision)
    claims: dict[str, list[str]] = field(default_factory=dict)
    #: goldens written or rewritten, with why
    written: list[tuple[str, str]] = field(default_factory=list)
    #: node ids of tests that did not pass: their default goldens are never "unused"
    protected: set[str] = field(default_factory=set)
    collected: int = 0
    ran: int = 0
    deselected: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "counts": self.counts,
                "claims": self.claims,
                "written": self.written,
                "protected": sorted(self.protected),
                "collected": self.collected,
                "ran": self.ran,
                "deselected": self.deselected,
            }
        )

    def merge(self, text: str) -> None:
        other = json.loads(text)
        for name, n in other["counts"].items():
            self.counts[name] = self.counts.get(name, 0) + n
        for path, nodes in other["claims"].items():
            self.claims.setdefault(path, []).extend(nodes)
        self.written.extend((p, why) for p, why in other["written"])
        self.protected.update(other["protected"])
        # Every worker collects every test and runs a share of them.
        self.collected = max(self.collected, other["collected"])
        self.ran += other["ran"]
        self.deselected |= other["deselected"]

    def collisions(self) -> dict[str, list[str]]:
        return {path: nodes for path, nodes in self.claims.items() if len(set(nodes)) > 1}


_settings_key = pytest.StashKey[GoldenSettings]()
_ledger_key = pytest.StashKey[GoldenLedger]()
_unused_key = pytest.StashKey[list[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "golden traces (stacktrace-lab)")

    def option(name: str, help: str, **kwargs: Any) -> None:
        group.addoption(f"--stacktrace-lab-{name}", default=None, help=help, **kwargs)
        flag = kwargs.get("action") == "store_true"
        ini = f"stacktrace_lab_{name.replace('-', '_')}"
        if flag:
            parser.addini(ini, help, type="bool", default=False)
        else:
            parser.addini(ini, help, type="string", default="")

    option(
        "update",
        "Rewrite golden traces that differ or are missing, and remove unused ones.",
        action="store_true",
    )
    option(
        "golden-dir",
        "Directory of golden traces, relative to the rootdir "
        "[default: traces-dir of [tool.stacktrace-lab], else traces].",
        metavar="DIR",
    )
    option(
        "ignore",
        "Columns or metadata fields the comparison leaves out (as `diff --ignore`).",
        metavar="COLUMN,...",
    )
    option(
        "results-dir",
        "For each failing check, keep the new trace and its diff (.diff.txt, .diff.md) "
        "here, e.g. for CI artifacts.",
        metavar="DIR",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ledger_key] = GoldenLedger()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistController(), "stacktrace-lab-xdist")


def _settings(config: pytest.Config) -> GoldenSettings:
    """The settings, read when first needed: a suite that checks no golden never reads them."""
    settings = config.stash.get(_settings_key, None)
    if settings is not None:
        return settings
    from .config import load_config
    from .errors import BadInput

    def option(name: str) -> Any:
        value = config.getoption(f"--stacktrace-lab-{name.replace('_', '-')}")
        return value if value is not None else config.getini("stacktrace_lab_" + name)

    root = config.rootpath
    try:
        project = load_config(root)
    except BadInput as exc:
        raise pytest.UsageError(f"stacktrace-lab: {exc}") from None
    golden_dir = str(option("golden_dir"))
    ignore = str(option("ignore"))
    results = str(option("results_dir"))
    settings = GoldenSettings(
        root=root,
        golden_dir=root / golden_dir if golden_dir else project.traces_dir,
        update=bool(option("update")),
        ignore=_names(ignore.split(",")) if ignore else project.diff_ignore,
        results_dir=root / results if results else None,
        snapshot_limit=project.snapshot_limit,
        max_steps=project.max_steps,
    )
    config.stash[_settings_key] = settings
    return settings


class _XdistController:
    """Hooks that exist only with pytest-xdist: the controller gathers the workers' ledgers."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        if WORKER_KEY in output:
            node.config.stash[_ledger_key].merge(output[WORKER_KEY])


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        items[0].config.stash[_ledger_key].deselected = True


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_ledger_key].collected = len(session.items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    ledger = item.config.stash[_ledger_key]
    if report.when == "teardown":
        ledger.ran += 1
    if report.failed or report.skipped:
        # A test that did not get through keeps its golden: it is not unused.
        ledger.protected.add(item.nodeid)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    ledger = config.stash[_ledger_key]
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller sums up
        workeroutput[WORKER_KEY] = ledger.to_json()
        return
    if ledger.collisions():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not ledger.claims:  # no golden checked: nothing to say about the directory
        return
    settings = _settings(config)
    unused = _unused_goldens(config, settings, ledger)
    if settings.update:
        for path in unused:
            path.unlink(missing_ok=True)
            _remove_empty_parents(path.parent, settings.golden_dir)
    config.stash[_unused_key] = unused


def _unused_goldens(
    config: pytest.Config, settings: GoldenSettings, ledger: GoldenLedger
) -> list[Path]:
    """Goldens under the golden dir that no test claimed, if this session ran every test.

    A run of some tests only (-k, a file, a node id, -x stopping early, --lf)
    cannot tell which goldens the others use, so it reports none.
    """
    if not _whole_suite(config) or ledger.deselected or ledger.ran < ledger.collected:
        return []
    if not settings.golden_dir.is_dir():
        return []
    kept = {str(_default_golden(settings, nodeid).resolve()) for nodeid in ledger.protected}
    used = set(ledger.claims) | kept
    found = settings.golden_dir.rglob("*.parquet")
    return sorted(p for p in found if str(p.resolve()) not in used)


def _remove_empty_parents(directory: Path, golden_dir: Path) -> None:
    """Directories of node-id goldens left empty, up to (not including) the golden dir."""
    top = golden_dir.resolve()
    directory = directory.resolve()
    while directory != top and top in directory.parents:
        try:
            directory.rmdir()  # only if empty
        except OSError:
            return
        directory = directory.parent


def _whole_suite(config: pytest.Config) -> bool:
    source = config.args_source
    if source == pytest.Config.ArgsSource.TESTPATHS:
        return True
    args = {Path(a).resolve() for a in config.args if not a.startswith("-")}
    if any("::" in str(a) for a in args):
        return False
    # The rootdir itself, or exactly the configured testpaths named by hand.
    testpaths = {(config.rootpath / p).resolve() for p in config.getini("testpaths")}
    return args <= {config.rootpath} or (bool(testpaths) and args == testpaths)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    ledger = config.stash.get(_ledger_key, None)
    if ledger is None or hasattr(config, "workeroutput"):
        return
    unused = config.stash.get(_unused_key, [])
    collisions = ledger.collisions()
    if not (ledger.claims or unused):
        return
    write = terminalreporter.write_line
    terminalreporter.section("stacktrace-lab golden traces")
    for path, why in ledger.written:
        write(f"{why}: {path}")
    for claimed, nodes in sorted(collisions.items()):
        write(f"error: {claimed} is claimed by {len(set(nodes))} tests: {', '.join(sorted(nodes))}")
    settings = _settings(config)
    for stale in unused:
        write(f"unused{' (removed)' if settings.update else ''}: {stale}")
    line = ", ".join(f"{ledger.counts[name]} {name}" for name in COUNTS)
    line += f", {len(unused)} unused" + (" (removed)" if unused and settings.update else "")
    if collisions:
        line += f", {len(collisions)} claimed twice"
    write(f"goldens: {line}")
    if unused and not settings.update:
        write("remove unused goldens with: pytest --stacktrace-lab-update")


def _names(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(n.strip() for n in items if n.strip())


def _default_golden(settings: GoldenSettings, nodeid: str) -> Path:
    """The golden of a test named by its node id.

    `tests/test_x.py::TestY::test_z[a-1]` -> <golden dir>/tests/test_x/TestY/test_z[a-1].parquet
    """
    path, _, rest = nodeid.partition("::")
    parts = [p for p in Path(path).with_suffix("").parts if p not in ("", ".", "..")]
    parts += [_safe(p) for p in rest.split("::") if p]
    return settings.golden_dir.joinpath(*parts).with_suffix(".parquet")


def _safe(part: str) -> str:
    """A node id part as a file name: path separators and shell-hostile characters to `_`."""
    return re.sub(r"[^\w.\[\]=+,-]", "_", part)


class GoldenTrace:
    """What the `golden_trace` fixture gives a test."""

    def __init__(
        self, settings: GoldenSettings, workdir: Path, ledger: GoldenLedger, nodeid: str
    ) -> None:
        self.settings = settings
        self.workdir = workdir
        self.nodeid = nodeid
        self._ledger = ledger

    def golden_path(self, name: str | None = None) -> Path:
        """The golden of this test: by `name`, or by its node id."""
        if name is None:
            return _default_golden(self.settings, self.nodeid)
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"golden name {name!r} must be a relative path without '..'")
        return self.settings.golden_dir / f"{name}.parquet"

    def check(
        self,
        scenario: str | os.PathLike[str],
        *,
        name: str | None = None,
        golden: str | os.PathLike[str] | None = None,
        ignore: Iterable[str] = (),
        align: bool = False,
        max_steps: int | None = None,
        snapshot_limit: int | None = None,
        invariants: bool = True,
        expect_failures: Iterable[str] = (),
    ) -> TraceDiff | None:
        """Record `scenario` (built-in name or .toml path), check it, compare it with its golden.

        `name` names the golden (`<golden dir>/<name>.parquet`) instead of the
        test's node id; `golden` gives its path outright (relative to the
        rootdir). `ignore` adds to the configured names. `invariants=False`
        skips the invariants; `expect_failures` lists the invariants that must
        fail (and no others may). Returns the diff (None when the golden was
        missing or unreadable and written).
        """
        # Heavy imports here, not at plugin load (unicorn, pyarrow).
        from .analysis import check as check_invariants
        from .errors import BadInput
        from .record.recorder import RecordOptions, record
        from .scenario import load_scenario
        from .trace import load_trace
        from .trace.format import DEFAULT_SNAPSHOT_LIMIT

        __tracebackhide__ = True
        target = (
            self.settings.root / golden if golden is not None else self.golden_path(name)
        ).resolve()
        self._claim(target)
        try:
            loaded = load_scenario(scenario)
            chosen_limit = (
                snapshot_limit if snapshot_limit is not None else self.settings.snapshot_limit
            )
            options = RecordOptions(
                max_steps=max_steps if max_steps is not None else self.settings.max_steps,
                snapshot_limit=DEFAULT_SNAPSHOT_LIMIT if chosen_limit is None else chosen_limit,
            )
            new = record(loaded, self.workdir / f"{loaded.name}.parquet", options).path
            new_trace = load_trace(new)
        except BadInput as exc:
            self._count("failed")
            pytest.fail(f"stacktrace-lab: {exc}", pytrace=False)

        if invariants:
            problem = _invariant_problem(check_invariants(new_trace), set(expect_failures))
            if problem:
                self._count("failed")
                pytest.fail(f"{loaded.name}: {problem}", pytrace=False)
        return self._compare(new, target, loaded.name, ignore, align)

    def _compare(
        self, new: Path, target: Path, name: str, ignore: Iterable[str], align: bool
    ) -> TraceDiff | None:
        from .diff import diff_traces, render
        from .diff.render_text import headline, summary
        from .errors import BadInput
        from .trace import load_trace

        __tracebackhide__ = True
        if not target.exists():
            self._write_golden(new, target, "written (was missing)")
            self._count("written")
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
                self._count("updated")
                return None
            self._count("failed")
            pytest.fail(f"golden trace unusable: {exc}\n{self._accept_hint()}", pytrace=False)
        try:
            diff = diff_traces(
                reference, new, ignore=(*self.settings.ignore, *_names(ignore)), align=align
            )
        except BadInput as exc:  # an unknown name to ignore
            self._count("failed")
            pytest.fail(f"stacktrace-lab: {exc}", pytrace=False)
        if diff.same:
            self._count("passed")
            return diff
        if self.settings.update:
            self._write_golden(new, target, "rewritten (differed)")
            self._count("updated")
            return diff
        self._count("failed")
        self._keep_results(new, target, diff)
        first = diff.first_divergence
        gist = headline(first) if first is not None else summary(diff)
        pytest.fail(
            f"{name} differs from its golden trace {target}: {gist}\n\n"
            + render(diff, "text")
            + f"\n{self._accept_hint()}",
            pytrace=False,
        )

    def _accept_hint(self) -> str:
        return (
            "To accept the new trace as this test's golden: "
            f"pytest {shlex.quote(self.nodeid)} --stacktrace-lab-update"
        )

    def _claim(self, target: Path) -> None:
        __tracebackhide__ = True
        claims = self._ledger.claims.setdefault(str(target), [])
        if claims:
            self._count("failed")
            pytest.fail(
                f"golden trace {target} is already used by {claims[0]}: "
                "give this check its own golden with check(..., name=...)",
                pytrace=False,
            )
        claims.append(self.nodeid)

    def _count(self, what: str) -> None:
        self._ledger.counts[what] += 1

    def _write_golden(self, source: Path, target: Path, why: str) -> None:
        # Temp file + rename: a golden is never half written, even under xdist.
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        shutil.copyfile(source, temp)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        self._ledger.written.append((str(target), why))

    def _keep_results(self, trace: Path, target: Path, diff: TraceDiff) -> None:
        from .diff import render

        results = self.settings.results_dir
        if results is None:
            return
        name = target.stem
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trace, results / f"{name}.parquet")
        (results / f"{name}.diff.txt").write_text(render(diff, "text"))
        (results / f"{name}.diff.md").write_text(render(diff, "markdown"))


def _invariant_problem(result: CheckResult, expected: set[str]) -> str | None:
    """Why the invariants' outcome is not the one the test expects, or None if it is."""
    failed = set(result.failed)
    unknown = expected - {r.id for r in result.results}
    if unknown:
        return f"expect_failures names no invariant: {', '.join(sorted(unknown))}"
    if failed == expected:
        return None
    lines = []
    for invariant in sorted(failed - expected):
        first = result.result(invariant).violations
        where = f" at step {first[0].step} ({first[0].symbol}): {first[0].message}" if first else ""
        lines.append(f"invariant {invariant} fails{where}")
    for invariant in sorted(expected - failed):
        lines.append(f"invariant {invariant} was expected to fail but holds")
    hint = "(pass expect_failures=[...] to the check if that is the point of the scenario)"
    return "; ".join(lines) + "\n" + hint


@pytest.fixture
def golden_trace(request: pytest.FixtureRequest, tmp_path: Path) -> GoldenTrace:
    """Record a scenario, check it and compare it with its golden: `golden_trace.check(name)`."""
    config = request.config
    try:
        settings = _settings(config)
    except pytest.UsageError as exc:  # a bad [tool.stacktrace-lab]: one line, no traceback
        pytest.fail(str(exc), pytrace=False)
    return GoldenTrace(settings, tmp_path, config.stash[_ledger_key], request.node.nodeid)
