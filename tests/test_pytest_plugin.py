"""The pytest plugin, run on small projects with pytester: goldens pass, fail, appear, update.

Each test builds a project outside the package (pytester's directory) and runs
pytest on it in process, so the plugin is exercised as a user's suite sees it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from stacktrace_lab.diff import diff_traces
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario

from .conftest import scenario_toml
from .test_diff import ADD

pytest_plugins = ["pytester"]

CHECK_PROG = """
def test_prog(golden_trace):
    golden_trace.check("prog.toml")
"""


#: The golden of test_prog.py::test_prog: its node id under the golden directory.
PROG_GOLDEN = Path("traces") / "test_prog" / "test_prog.parquet"


def _project(pytester: pytest.Pytester, imm: int, golden_imm: int | None) -> Path:
    """A project with prog.toml (`add $imm`) and, if asked, a golden of `add $golden_imm`."""
    pytester.makepyfile(test_prog=CHECK_PROG)
    scenario = pytester.path / "prog.toml"
    golden = pytester.path / PROG_GOLDEN
    if golden_imm is not None:
        scenario.write_text(scenario_toml(ADD.format(imm=golden_imm), name="prog"))
        golden.parent.mkdir(parents=True, exist_ok=True)
        record(load_scenario(scenario), golden)
    scenario.write_text(scenario_toml(ADD.format(imm=imm), name="prog"))
    return golden


def test_a_matching_golden_passes(pytester: pytest.Pytester) -> None:
    _project(pytester, imm=0, golden_imm=0)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)


def test_a_differing_golden_fails_with_the_diff(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=5, golden_imm=0)
    before = golden.read_bytes()
    result = pytester.runpytest("--stacktrace-lab-results-dir", "results")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*first divergent step: A step 1 / B step 1, differs in: insn*",
            "*after this step: rax: A 0x1  B 0x6*",
            "*To accept the new trace as this test's golden: "
            "pytest test_prog.py::test_prog --stacktrace-lab-update",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert golden.read_bytes() == before  # a failing check never touches the golden
    results = pytester.path / "results"
    markdown = (results / "test_prog.diff.md").read_text()
    assert markdown.startswith("### stacktrace-lab diff: different")
    assert "rax" in (results / "test_prog.diff.txt").read_text()
    assert not diff_traces(golden, results / "test_prog.parquet").same
    result.stdout.fnmatch_lines(["goldens: 0 passed, 0 written, 0 updated, 1 failed, 0 unused"])


def test_a_missing_golden_fails_and_is_written(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=0, golden_imm=None)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*golden trace *test_prog.parquet did not exist: wrote it*"])
    result.stdout.fnmatch_lines(["*written (was missing): *traces/test_prog/test_prog.parquet"])
    assert golden.exists()
    pytester.runpytest().assert_outcomes(passed=1)


def test_update_rewrites_the_golden(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=5, golden_imm=0)
    result = pytester.runpytest("--stacktrace-lab-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*rewritten (differed): *test_prog.parquet"])
    result.stdout.fnmatch_lines(["goldens: 0 passed, 0 written, 1 updated, 0 failed, 0 unused"])
    rewritten = load_scenario(pytester.path / "prog.toml")
    fresh = record(rewritten, pytester.path / "fresh.parquet").path
    assert diff_traces(golden, fresh).same
    pytester.runpytest().assert_outcomes(passed=1)


def test_ini_settings_choose_the_golden_dir_and_ignored_names(pytester: pytest.Pytester) -> None:
    _project(pytester, imm=0, golden_imm=0)
    shutil.move(pytester.path / "traces", pytester.path / "goldens")
    # Same program, one comment more: only the metadata field `source` differs.
    prog = pytester.path / "prog.toml"
    prog.write_text(prog.read_text().replace("ret", "ret  # back to the sentinel"))
    pytester.makeini("[pytest]\nstacktrace_lab_golden_dir = goldens\n")
    failed = pytester.runpytest()
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines(["*metadata differs: source*"])
    assert not (pytester.path / "traces").exists()

    pytester.makeini(
        "[pytest]\nstacktrace_lab_golden_dir = goldens\nstacktrace_lab_ignore = source\n"
    )
    pytester.runpytest().assert_outcomes(passed=1)
    # The command line option wins over the ini setting.
    pytester.runpytest("--stacktrace-lab-ignore=rflags").assert_outcomes(failed=1)


def test_unknown_scenario_fails_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_it(golden_trace):
            golden_trace.check("no-such-scenario")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stacktrace-lab: *no-such-scenario*"])
    # Once: not again as "During handling of the above exception" (issue 24).
    out = result.stdout.str()
    # Before pytest's short summary, which repeats the line (whole when CI is set).
    report = out.split("short test summary info")[0]
    assert report.count("no such built-in scenario") == 1
    assert "During handling" not in out and "Traceback" not in out


TWO_OPTIONS = """
def test_whole_run(golden_trace):
    golden_trace.check("first-switch")

def test_first_five_steps(golden_trace):
    # Cut short, the run never prints: `stop` and the scenario's [expect] fail, as they should.
    golden_trace.check("first-switch", max_steps=5, expect_failures=["stop", "expect"])
"""


def test_one_scenario_under_two_options_has_two_goldens(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO_OPTIONS)
    first = pytester.runpytest()
    first.assert_outcomes(failed=2)  # both goldens missing: written, to be reviewed
    first.stdout.fnmatch_lines(["goldens: 0 passed, 2 written, 0 updated, 0 failed, 0 unused"])
    whole = pytester.path / "traces" / "test_two" / "test_whole_run.parquet"
    short = pytester.path / "traces" / "test_two" / "test_first_five_steps.parquet"
    assert not diff_traces(whole, short).same  # two goldens, each of its own run
    again = pytester.runpytest()
    again.assert_outcomes(passed=2)
    again.stdout.fnmatch_lines(["goldens: 2 passed, 0 written, 0 updated, 0 failed, 0 unused"])
    # ... and an update leaves goldens that pass the next run.
    pytester.runpytest("--stacktrace-lab-update").assert_outcomes(passed=2)
    pytester.runpytest().assert_outcomes(passed=2)


def test_two_checks_claiming_one_golden_is_an_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_clash="""
        def test_a(golden_trace):
            golden_trace.check("first-switch", name="shared")

        def test_b(golden_trace):
            golden_trace.check("first-switch", name="shared", max_steps=5)

        def test_twice_in_one_test(golden_trace):
            golden_trace.check("first-switch", name="mine")
            golden_trace.check("first-switch", name="mine", max_steps=5)
        """
    )
    result = pytester.runpytest("--stacktrace-lab-update")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_b _*",
            "golden trace *shared.parquet is already used by test_clash.py::test_a: "
            "give this check its own golden with check(..., name=...)",
            "*_ test_twice_in_one_test _*",
            "golden trace *mine.parquet is already used by test_clash.py::test_twice_in_one_test:*",
        ]
    )


def test_a_golden_of_a_broken_scenario_fails_on_its_invariant(pytester: pytest.Pytester) -> None:
    # The golden is exactly this run's trace: only the invariant can fail the test.
    golden = pytester.path / "traces" / "misaligned.parquet"
    golden.parent.mkdir()
    record(load_scenario("first-switch-misaligned"), golden)
    pytester.makepyfile(
        test_broken="""
        def test_default(golden_trace):
            golden_trace.check("first-switch-misaligned", name="misaligned")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*first-switch-misaligned: invariant alignment fails at step 13 (hello*",
            "*pass expect_failures=*",
        ]
    )
    result.stdout.fnmatch_lines(["goldens: 0 passed, 0 written, 0 updated, 1 failed, 0 unused"])

    pytester.makepyfile(
        test_broken="""
        def test_expected(golden_trace):
            golden_trace.check(
                "first-switch-misaligned", name="misaligned", expect_failures=["alignment"]
            )
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.makepyfile(
        test_broken="""
        def test_wrong_expectation(golden_trace):
            golden_trace.check(
                "first-switch-misaligned", name="misaligned", expect_failures=["stack-bounds"]
            )

        def test_opted_out(golden_trace):
            golden_trace.check("first-switch-misaligned", name="again", invariants=False)
        """
    )
    shutil.copyfile(golden, golden.with_name("again.parquet"))
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*invariant alignment fails*; invariant stack-bounds was expected to fail but holds*"]
    )


def _own(pytester: pytest.Pytester, *names: str) -> None:
    """List goldens in the manifest, as the plugin does for those it writes or checks."""
    manifest = pytester.path / "traces" / ".stacktrace-lab-goldens.json"
    doc = {"format": "stacktrace-lab-goldens", "version": 1, "goldens": sorted(names)}
    manifest.write_text(json.dumps(doc))


def _owned(pytester: pytest.Pytester) -> list[str]:
    manifest = pytester.path / "traces" / ".stacktrace-lab-goldens.json"
    goldens: list[str] = json.loads(manifest.read_text())["goldens"]
    return goldens


def test_unused_goldens_are_reported_and_removed_on_update(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=0, golden_imm=0)
    stale = pytester.path / "traces" / "old" / "gone.parquet"
    stale.parent.mkdir()
    shutil.copyfile(golden, stale)
    _own(pytester, "old/gone.parquet")
    # What `stacktrace-lab record -o traces/mine.parquet` left there: never the plugin's.
    recorded = pytester.path / "traces" / "mine.parquet"
    shutil.copyfile(golden, recorded)
    pytester.makepyfile(test_other="def test_no_golden():\n    pass\n")

    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "unused: *traces/old/gone.parquet",
            "unused (not written by stacktrace-lab: left alone): *traces/mine.parquet",
            "goldens: 1 passed, 0 written, 0 updated, 0 failed, 2 unused",
            "remove unused goldens with: pytest --stacktrace-lab-update",
        ]
    )
    assert stale.exists()  # reported, never removed without the update option
    # The golden the test checked is the plugin's now: listed in the manifest.
    assert _owned(pytester) == ["old/gone.parquet", "test_prog/test_prog.parquet"]

    # A run of some tests only cannot tell what the others use: it says so.
    for partial in (["-k", "prog"], ["test_prog.py::test_prog"]):
        part = pytester.runpytest("--stacktrace-lab-update", *partial)
        part.stdout.fnmatch_lines(
            ["goldens: 1 passed, 0 written, 0 updated, 0 failed; unused: not checked (partial run)"]
        )
        assert stale.exists()

    removed = pytester.runpytest("--stacktrace-lab-update")
    removed.stdout.fnmatch_lines(
        [
            "unused (removed): *traces/old/gone.parquet",
            "unused (not written by stacktrace-lab: left alone): *traces/mine.parquet",
            "goldens: 1 passed, 0 written, 0 updated, 0 failed, 2 unused (removed)",
        ]
    )
    assert not stale.exists() and golden.exists() and recorded.exists()
    assert not stale.parent.exists()  # its directory, left empty, went too
    assert golden.parent.is_dir()
    assert _owned(pytester) == ["test_prog/test_prog.parquet"]


def test_a_run_with_failures_removes_no_golden(pytester: pytest.Pytester) -> None:
    """Issue 24: `record first-switch-overflow` wrote into the golden folder, then
    `pytest --stacktrace-lab-update` with two failing tests deleted it."""
    golden = _project(pytester, imm=0, golden_imm=0)
    stale = golden.parent.parent / "first-switch-overflow.parquet"
    shutil.copyfile(golden, stale)
    _own(pytester, "first-switch-overflow.parquet")
    pytester.makepyfile(test_broken="def test_broken():\n    assert False\n")
    result = pytester.runpytest("--stacktrace-lab-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "unused: *traces/first-switch-overflow.parquet",
            "goldens: 1 passed, 0 written, 0 updated, 0 failed, 1 unused",
            "unused goldens not removed: 1 test failed",
        ]
    )
    assert stale.exists()


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "linked folder"])
def test_a_golden_that_is_not_a_regular_file_is_refused_and_never_written_through(
    pytester: pytest.Pytester, tmp_path: Path, kind: str
) -> None:
    """A pull request can commit `traces/x.parquet -> ../../outside/victim.txt`: the
    plugin refuses it in one line, neither reading, following nor replacing it."""
    golden = _project(pytester, imm=0, golden_imm=0)
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious\n")
    if kind == "symlink":
        golden.unlink()
        golden.symlink_to(victim)
    elif kind == "dangling":
        golden.unlink()
        golden.symlink_to(tmp_path / "outside" / "created-by-pytest")
    elif kind == "fifo":
        golden.unlink()
        os.mkfifo(golden)
    else:
        shutil.rmtree(golden.parent)
        golden.parent.symlink_to(victim.parent, target_is_directory=True)
    result = pytester.runpytest("--stacktrace-lab-update", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*golden trace refused: *traces/test_prog*"])
    out = result.stdout.str()
    assert "Traceback" not in out and "During handling" not in out
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


def test_a_golden_folder_that_cannot_be_written_fails_in_one_line(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_prog=CHECK_PROG)
    (pytester.path / "prog.toml").write_text(scenario_toml(ADD.format(imm=0), name="prog"))
    (pytester.path / "traces").write_text("a file where the golden folder should be\n")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*golden trace refused: *traces is not a directory"])
    assert "FileExistsError" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_a_skipped_test_keeps_its_golden(pytester: pytest.Pytester) -> None:
    golden = _project(pytester, imm=0, golden_imm=0)
    pytester.makepyfile(
        test_prog="import pytest\n\n@pytest.mark.skip\n" + CHECK_PROG.lstrip(),
        test_used="def test_used(golden_trace):\n"
        "    golden_trace.check('prog.toml', name='used')\n",
    )
    shutil.copyfile(golden, golden.parent.parent / "used.parquet")
    result = pytester.runpytest("--stacktrace-lab-update")
    result.stdout.fnmatch_lines(["goldens: 1 passed, 0 written, 0 updated, 0 failed, 0 unused"])
    assert golden.exists()


def test_the_summary_adds_up_the_workers_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    golden = _project(pytester, imm=0, golden_imm=0)
    pytester.makepyfile(
        test_many="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_named(golden_trace, n):
            golden_trace.check("prog.toml", name=f"prog{n}")
        """
    )
    for n in range(3):  # prog3 has no golden yet: written
        shutil.copyfile(golden, golden.parent.parent / f"prog{n}.parquet")
    stale = golden.parent.parent / "stale.parquet"
    shutil.copyfile(golden, stale)
    _own(pytester, "stale.parquet")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(
        [
            "written (was missing): *traces/prog3.parquet",
            "unused: *traces/stale.parquet",
            "goldens: 4 passed, 1 written, 0 updated, 0 failed, 1 unused",
        ]
    )
    updated = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--stacktrace-lab-update")
    updated.assert_outcomes(passed=5)
    updated.stdout.fnmatch_lines(
        ["goldens: 5 passed, 0 written, 0 updated, 0 failed, 1 unused (removed)"]
    )
    assert not stale.exists()


def test_a_golden_claimed_on_two_workers_fails_the_session(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        test_clash="""
        import pytest

        @pytest.mark.parametrize("steps", [5, 6])
        def test_same_name(golden_trace, steps):
            golden_trace.check(
                "first-switch", name="shared", max_steps=steps, invariants=False
            )
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--stacktrace-lab-update")
    assert result.ret != 0
    out = result.stdout.str()
    # On one worker the second claim fails its test; on two, the controller finds it.
    assert "is already used by test_clash.py::test_same_name[" in out or (
        "is claimed by 2 tests" in out and "claimed twice" in out
    )


def test_a_bad_config_fails_checks_in_one_line_and_spares_other_tests(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyprojecttoml("[tool.stacktrace-lab]\nmax-steps = -1\n")
    pytester.makepyfile(
        test_it="""
        def test_golden(golden_trace):
            golden_trace.check("first-switch")

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*stacktrace-lab: *pyproject.toml: [[]tool.stacktrace-lab[]] max-steps: must be a pos*"]
    )
    out = result.stdout.str()
    assert "Traceback" not in out and "During handling" not in out
    # Before pytest's short summary, which repeats the line (whole when CI is set).
    report = out.split("short test summary info")[0]
    assert report.count("max-steps: must be a positive integer") == 1


C_PROGRAM = r"""
long __attribute__((noinline)) add(long a, long b) { return a + b; }
void __attribute__((noinline)) done(void) { __asm__ volatile(""); }
long __attribute__((noinline)) run(long n) { long r = add(n, 41); done(); return r; }
int main(int argc, char **argv) { (void)argv; return (int)run(argc); }
"""

#: A C project's test, as docs/ci.md shows it: build the program, golden-test it twice
#: (the program directly, and a scenario that names it).
C_PROJECT_TEST = """
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent


@pytest.fixture(scope="session")
def prog():
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = ROOT / "build" / "prog"
    out.parent.mkdir(exist_ok=True)
    # -fno-ipa-stack-alignment: else gcc skips the 16-byte alignment before calling a
    # function it knows needs none, which the alignment invariant reports.
    flags = ["-static", "-O0", "-g", "-fno-ipa-stack-alignment"]
    subprocess.run(["gcc", *flags, "prog.c", "-o", str(out)], cwd=ROOT, check=True)
    return out


def test_prog(golden_trace, prog):
    golden_trace.check_program("build/prog", from_="run", to="done", args=["one"])


def test_prog_scenario(golden_trace, prog):
    golden_trace.check("prog.toml")
"""


def test_compiled_programs_are_golden_tested(pytester: pytest.Pytester) -> None:
    """Issue 24 item 2: `check_program` and a scenario with `[program] elf`, with the
    same invariants, diff and update flow as an assembly scenario."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    pytester.makepyfile(test_c=C_PROJECT_TEST)
    (pytester.path / "prog.c").write_text(C_PROGRAM)
    (pytester.path / "prog.toml").write_text(
        'name = "prog"\n\n[program]\nelf = "build/prog"\nfrom = "run"\nto = "done"\n'
    )
    first = pytester.runpytest()
    first.assert_outcomes(failed=2)
    first.stdout.fnmatch_lines(
        ["*golden trace *traces/test_c/test_prog.parquet did not exist: wrote it*"]
    )
    again = pytester.runpytest()
    again.assert_outcomes(passed=2)
    again.stdout.fnmatch_lines(["goldens: 2 passed, 0 written, 0 updated, 0 failed, 0 unused"])

    # A change in the program is a difference in its golden, with the diff.
    (pytester.path / "prog.c").write_text(C_PROGRAM.replace("a + b", "a + b + 1"))
    changed = pytester.runpytest()
    changed.assert_outcomes(failed=2)
    changed.stdout.fnmatch_lines(["*differs from its golden trace *test_prog.parquet*"])
    assert "Traceback" not in changed.stdout.str()
