"""The tutorial's programs ship with the package, so `demo --rust` works from a plain install."""

from __future__ import annotations

import tomllib
from pathlib import Path

from stacktrace_lab.examples import C_SOURCE, COROUTINES_SOURCE, EXAMPLES, RUST_SOURCE

REPO = Path(__file__).resolve().parent.parent


def test_the_packaged_examples_are_the_ones_the_readme_links() -> None:
    assert EXAMPLES.parent.name == "stacktrace_lab"  # inside the package, not the checkout
    for source in (RUST_SOURCE, C_SOURCE, COROUTINES_SOURCE):
        assert source.is_file(), source
        assert source.read_bytes() == (REPO / "examples" / source.name).read_bytes()


def test_the_wheel_takes_the_examples_as_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["stacktrace_lab"]
    for source in (RUST_SOURCE, C_SOURCE, COROUTINES_SOURCE):
        relative = source.relative_to(EXAMPLES.parent).as_posix()
        assert any(Path(relative).match(pattern) for pattern in data), relative
