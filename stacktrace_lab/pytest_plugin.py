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

`check_program("./prog", from_="main", args=[...])` golden-tests a compiled
static x86-64 program the same way, and `check("x.toml")` takes a scenario
with `[program] elf = ...` as well as an assembly one. A relative scenario or
program path starts at the rootdir, as golden paths do.

A check, in order:
1. records the scenario (or program) into the test's tmp_path;
2. runs the invariants: any that fails fails the test, unless the test said it
   expects exactly those to fail (`expect_failures=["alignment"]`) or opted
   out (`invariants=False`);
3. diffs the trace against the golden with `diff_traces` (so tool-version
   metadata never fails a test). A difference fails with the diff's text and
   the command that accepts the new trace for this one test; a missing golden
   fails and is written; `--stacktrace-lab-update` rewrites goldens that
   differ (or are missing) and lets the test pass.

Goldens are files the plugin owns. A golden, or a folder on its way from the
rootdir, that is a symbolic link, a FIFO or anything but a regular file is
refused in one line: never followed, read or written through. The plugin
lists the goldens it wrote or checked in a manifest beside them
(`<golden dir>/.stacktrace-lab-goldens.json`, to commit with them), and only
ever removes a file listed there: a trace that `stacktrace-lab record -o`
put into the golden folder by hand is never deleted.

At the end of a session that ran every test and had no failure, goldens no
test used are reported as unused, and the plugin's own removed with
`--stacktrace-lab-update`; a partial run says `unused: not checked (partial
run)`, a run with failures removes nothing. One summary
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
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .analysis import CheckResult
    from .diff import TraceDiff
    from .record.recorder import RecordOptions

GROUP = "stacktrace-lab"
WORKER_KEY = "stacktrace_lab"
#: The counts of the summary line, in its order.
COUNTS = ("passed", "written", "updated", "failed")
#: The goldens the plugin owns, beside them: only a file listed here is ever removed.
MANIFEST = ".stacktrace-lab-goldens.json"
MANIFEST_FORMAT = "stacktrace-lab-goldens"


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
    #: goldens this run wrote, or checked and found equal: the manifest lists them
    owned: set[str] = field(default_factory=set)
    #: tests that failed (or errored) in any phase: nothing is removed after such a run
    failures: int = 0
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
                "owned": sorted(self.owned),
                "failures": self.failures,
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
        self.owned.update(other["owned"])
        self.failures += other["failures"]
        # Every worker collects every test and runs a share of them.
        self.collected = max(self.collected, other["collected"])
        self.ran += other["ran"]
        self.deselected |= other["deselected"]

    def collisions(self) -> dict[str, list[str]]:
        return {path: nodes for path, nodes in self.claims.items() if len(set(nodes)) > 1}


_settings_key = pytest.StashKey[GoldenSettings]()
_ledger_key = pytest.StashKey[GoldenLedger]()
_unused_key = pytest.StashKey["Unused"]()


@dataclass
class Unused:
    """What the end of a session found about goldens no test used."""

    #: the plugin's own (listed in the manifest): removed with --stacktrace-lab-update
    owned: list[Path] = field(default_factory=list)
    #: files the plugin never wrote (not in the manifest): listed, never removed
    foreign: list[Path] = field(default_factory=list)
    #: why nothing was checked (a partial run), or None
    unchecked: str | None = None
    #: why nothing was removed though --stacktrace-lab-update asked (failures), or None
    kept_because: str | None = None
    removed: bool = False


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
    if report.failed:
        ledger.failures += 1
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
    manifest = _read_manifest(settings)
    adopted = (_relative(settings, Path(p)) for p in ledger.owned)
    owned = manifest | {name for name in adopted if name is not None}
    unused = _unused_goldens(config, settings, ledger, owned)
    failures = max(ledger.failures, session.testsfailed)
    if settings.update and unused.owned:
        if failures:
            unused.kept_because = f"{failures} test{'s' if failures > 1 else ''} failed"
        else:
            for path in unused.owned:
                _remove_golden(path, settings.golden_dir)
            owned -= {_relative(settings, path) for path in unused.owned}
            unused.removed = True
    _write_manifest(settings, owned, manifest)
    config.stash[_unused_key] = unused


def _unused_goldens(
    config: pytest.Config, settings: GoldenSettings, ledger: GoldenLedger, owned: set[str]
) -> Unused:
    """Goldens under the golden dir that no test claimed, if this session ran every test.

    A run of some tests only (-k, a file, a node id, -x stopping early, --lf)
    cannot tell which goldens the others use, so it checks none.
    """
    if not _whole_suite(config) or ledger.deselected or ledger.ran < ledger.collected:
        return Unused(unchecked="partial run")
    golden_dir = settings.golden_dir
    if not golden_dir.is_dir() or _unsafe(golden_dir, settings.root):
        return Unused()
    kept = {_normal(_default_golden(settings, nodeid)) for nodeid in ledger.protected}
    used = set(ledger.claims) | kept
    unused = Unused()
    # os.walk without following links: a linked folder's files are not ours to judge.
    for directory, _dirs, files in os.walk(golden_dir):
        for name in files:
            path = Path(directory) / name
            if not name.endswith(".parquet") or _normal(path) in used:
                continue
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            mine = _relative(settings, path) in owned
            (unused.owned if mine else unused.foreign).append(path)
    unused.owned.sort()
    unused.foreign.sort()
    return unused


def _remove_golden(path: Path, golden_dir: Path) -> None:
    """Remove a golden of ours, a regular file (never what a link points to), and the
    node-id directories it leaves empty, up to (not including) the golden dir."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink()
    except OSError:
        return
    top = Path(_normal(golden_dir))
    directory = Path(_normal(path.parent))
    while directory != top and top in directory.parents:
        try:
            directory.rmdir()  # only if empty
        except OSError:
            return
        directory = directory.parent


def _normal(path: Path) -> str:
    """An absolute path with `..` and `.` folded, without following any link
    (Path.resolve follows them: a golden linked elsewhere would become its target)."""
    return os.path.normpath(os.path.abspath(path))


def _relative(settings: GoldenSettings, path: Path) -> str | None:
    """`path` relative to the golden dir, in the manifest's spelling; None outside it."""
    try:
        return Path(_normal(path)).relative_to(_normal(settings.golden_dir)).as_posix()
    except ValueError:
        return None


def _unsafe(path: Path, root: Path) -> str | None:
    """Why `path` cannot be a golden (or the folder of one), or None.

    Every existing component below the rootdir must be a real directory, and
    `path` itself a regular file or nothing: a golden that is a symbolic link
    (git stores them, so a pull request can aim one at any file the CI user
    can write), a FIFO (reading it blocks) or a device is refused, never followed.
    """
    full = Path(_normal(path))
    top = Path(_normal(root))
    parts = full.relative_to(top).parts if top in full.parents else (full.name,)
    current = top if top in full.parents else full.parent
    for n, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{current}: cannot read: {exc.strerror}"
        last = n == len(parts) - 1
        if stat.S_ISLNK(mode):
            return f"{current} is a symbolic link; goldens and their folders must be real files"
        if last and stat.S_ISDIR(mode) and path.suffix == ".parquet":
            return f"{current} is a directory, not a golden trace file"
        if last and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return f"{current} is not a regular file (a FIFO, socket or device); refused"
        if not last and not stat.S_ISDIR(mode):
            return f"{current} is not a directory"
    return None


def _read_manifest(settings: GoldenSettings) -> set[str]:
    """The goldens the plugin wrote, relative to the golden dir. A missing, unsafe or
    malformed manifest owns nothing: then nothing is ever removed."""
    path = settings.golden_dir / MANIFEST
    if _unsafe(path, settings.root) or not path.is_file():
        return set()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return set()
    entries = doc.get("goldens") if isinstance(doc, dict) else None
    if doc.get("format") != MANIFEST_FORMAT or not isinstance(entries, list):
        return set()
    # Only plain relative names of traces inside the golden dir, whatever a forged file says.
    return {
        e
        for e in entries
        if isinstance(e, str)
        and e.endswith(".parquet")
        and not Path(e).is_absolute()
        and ".." not in Path(e).parts
    }


def _write_manifest(settings: GoldenSettings, owned: set[str], before: set[str]) -> None:
    if owned == before or not settings.golden_dir.is_dir():
        return
    path = settings.golden_dir / MANIFEST
    if _unsafe(path, settings.root):
        return
    doc = {"format": MANIFEST_FORMAT, "version": 1, "goldens": sorted(owned)}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError:
        return  # a read-only checkout: the goldens are fine, the manifest waits


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
    unused = config.stash.get(_unused_key, Unused())
    collisions = ledger.collisions()
    if not ledger.claims:
        return
    write = terminalreporter.write_line
    terminalreporter.section("stacktrace-lab golden traces")
    for path, why in ledger.written:
        write(f"{why}: {path}")
    for claimed, nodes in sorted(collisions.items()):
        write(f"error: {claimed} is claimed by {len(set(nodes))} tests: {', '.join(sorted(nodes))}")
    for stale in unused.owned:
        write(f"unused{' (removed)' if unused.removed else ''}: {stale}")
    for stale in unused.foreign:
        write(f"unused (not written by stacktrace-lab: left alone): {stale}")
    line = ", ".join(f"{ledger.counts[name]} {name}" for name in COUNTS)
    if unused.unchecked:
        line += f"; unused: not checked ({unused.unchecked})"
    else:
        count = len(unused.owned) + len(unused.foreign)
        line += f", {count} unused" + (" (removed)" if unused.removed else "")
    if collisions:
        line += f", {len(collisions)} claimed twice"
    write(f"goldens: {line}")
    if unused.kept_because:
        write(f"unused goldens not removed: {unused.kept_because}")
    elif unused.owned and not unused.removed:
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

        The scenario may be an assembly one or name a compiled program
        (`[program] elf = "prog"`). A relative path starts at the rootdir.
        `name` names the golden (`<golden dir>/<name>.parquet`) instead of the
        test's node id; `golden` gives its path outright (relative to the
        rootdir). `ignore` adds to the configured names. `invariants=False`
        skips the invariants; `expect_failures` lists the invariants that must
        fail (and no others may). Returns the diff (None when the golden was
        missing or unreadable and written).
        """
        __tracebackhide__ = True
        options = self._options(max_steps, snapshot_limit)
        given = os.fspath(scenario)
        path = self._from_root(given) if given.endswith(".toml") or os.sep in given else None

        def recorder() -> tuple[str, Callable[[Path], object]]:
            from .record.linux.elf_scenario import is_elf_scenario
            from .record.recorder import record, record_description
            from .scenario import load_scenario

            if path is not None and is_elf_scenario(path):
                from .record.linux.elf_scenario import describe_elf_scenario

                description = describe_elf_scenario(path, options.max_steps)
                return description.info.name, lambda out: record_description(
                    description, out, options
                )
            loaded = load_scenario(path if path is not None else given)
            return loaded.name, lambda out: record(loaded, out, options)

        return self._check(recorder, name, golden, ignore, align, invariants, set(expect_failures))

    def check_program(
        self,
        program: str | os.PathLike[str],
        *,
        args: Sequence[str] = (),
        from_: str | None = None,
        to: str | None = None,
        name: str | None = None,
        golden: str | os.PathLike[str] | None = None,
        ignore: Iterable[str] = (),
        align: bool = False,
        max_steps: int | None = None,
        snapshot_limit: int | None = None,
        invariants: bool = True,
        expect_failures: Iterable[str] = (),
    ) -> TraceDiff | None:
        """Record a static x86-64 `program` (as `stacktrace-lab record PROGRAM --from
        FROM_ --to TO -- ARGS...`), check it and compare it with its golden.

        A relative path starts at the rootdir. The other arguments are `check`'s.
        """
        __tracebackhide__ = True
        options = self._options(max_steps, snapshot_limit)
        path = self._from_root(os.fspath(program))

        def recorder() -> tuple[str, Callable[[Path], object]]:
            from .record.linux.elf_front import describe_elf
            from .record.recorder import record_description

            description = describe_elf(path, list(args), from_, to, options.max_steps)
            return description.info.name, lambda out: record_description(description, out, options)

        return self._check(recorder, name, golden, ignore, align, invariants, set(expect_failures))

    def _from_root(self, given: str) -> Path:
        path = Path(given)
        return path if path.is_absolute() else self.settings.root / path

    def _options(self, max_steps: int | None, snapshot_limit: int | None) -> RecordOptions:
        from .record.recorder import RecordOptions
        from .trace.format import DEFAULT_SNAPSHOT_LIMIT

        chosen_limit = snapshot_limit
        if chosen_limit is None:
            chosen_limit = self.settings.snapshot_limit
        return RecordOptions(
            max_steps=max_steps if max_steps is not None else self.settings.max_steps,
            snapshot_limit=DEFAULT_SNAPSHOT_LIMIT if chosen_limit is None else chosen_limit,
        )

    def _check(
        self,
        recorder: Callable[[], tuple[str, Callable[[Path], object]]],
        name: str | None,
        golden: str | os.PathLike[str] | None,
        ignore: Iterable[str],
        align: bool,
        invariants: bool,
        expected: set[str],
    ) -> TraceDiff | None:
        # Heavy imports here, not at plugin load (unicorn, pyarrow).
        from .analysis import check as check_invariants
        from .errors import BadInput
        from .trace import load_trace

        __tracebackhide__ = True
        target = Path(
            _normal(self.settings.root / golden if golden is not None else self.golden_path(name))
        )
        self._claim(target)
        problem: str | None = None
        try:
            trace_name, record_into = recorder()
            new = self.workdir / f"{_safe(trace_name)}.parquet"
            record_into(new)
            new_trace = load_trace(new)
        except BadInput as exc:
            problem = f"stacktrace-lab: {exc}"
        if problem is not None:  # failed outside the except: one message, no chained one
            self._count("failed")
            pytest.fail(problem, pytrace=False)

        if invariants:
            problem = _invariant_problem(check_invariants(new_trace), expected)
            if problem:
                self._count("failed")
                pytest.fail(f"{trace_name}: {problem}", pytrace=False)
        return self._compare(new, target, trace_name, ignore, align)

    def _compare(
        self, new: Path, target: Path, name: str, ignore: Iterable[str], align: bool
    ) -> TraceDiff | None:
        from .diff import diff_traces, render
        from .diff.render_text import headline, summary
        from .errors import BadInput
        from .trace import load_trace

        __tracebackhide__ = True
        unsafe = _unsafe(target, self.settings.root)
        if unsafe is not None:
            self._count("failed")
            pytest.fail(f"golden trace refused: {unsafe}", pytrace=False)
        if not os.path.lexists(target):
            self._write_golden(new, target, "written (was missing)")
            self._count("written")
            if self.settings.update:
                return None
            pytest.fail(
                f"golden trace {target} did not exist: wrote it from this run. "
                "Check it (stacktrace-lab report) and commit it.",
                pytrace=False,
            )
        problem: str | None = None
        try:
            reference = load_trace(target)
        except BadInput as exc:
            problem = str(exc)
        if problem is not None:
            if self.settings.update:
                self._write_golden(new, target, "rewritten (was unreadable)")
                self._count("updated")
                return None
            self._count("failed")
            pytest.fail(f"golden trace unusable: {problem}\n{self._accept_hint()}", pytrace=False)
        try:
            diff = diff_traces(
                reference, new, ignore=(*self.settings.ignore, *_names(ignore)), align=align
            )
        except BadInput as exc:  # an unknown name to ignore
            problem = str(exc)
        if problem is not None:
            self._count("failed")
            pytest.fail(f"stacktrace-lab: {problem}", pytrace=False)
        if diff.same:
            self._count("passed")
            self._ledger.owned.add(str(target))
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
        """Temp file + rename: a golden is never half written, even under xdist; and
        never written through a link (checked again just before, as the folder may
        have been made since the first check)."""
        from . import safe_output

        __tracebackhide__ = True
        problem = _unsafe(target, self.settings.root)
        temp: Path | None = None
        if problem is None:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                problem = _unsafe(target, self.settings.root)
                if problem is None:
                    temp = safe_output.create_temp(target)
                    shutil.copyfile(source, temp)
                    safe_output.commit_temp(temp, target)
            except OSError as exc:
                where = target if exc.filename in (None, str(temp)) else exc.filename
                problem = f"{where}: {exc.strerror or exc}"
            finally:
                if temp is not None:
                    safe_output.discard_temp(temp)
        if problem is not None:
            self._count("failed")
            pytest.fail(f"cannot write golden trace {target}: {problem}", pytrace=False)
        self._ledger.written.append((str(target), why))
        self._ledger.owned.add(str(target))

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
    problem: str | None = None
    try:
        settings = _settings(config)
    except pytest.UsageError as exc:  # a bad [tool.stacktrace-lab]: one line, no traceback
        problem = str(exc)
    if problem is not None:  # outside the except: pytest prints it once, with no chained one
        pytest.fail(problem, pytrace=False)
    return GoldenTrace(settings, tmp_path, config.stash[_ledger_key], request.node.nodeid)
