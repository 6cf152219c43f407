"""The optional C recording core (stacktrace_lab/record/core/_core.c).

Everything else is in pyproject.toml. `optional=True`: where no C compiler
is found, the install goes on without the extension and the recorder uses
its pure-Python hooks (record/core/hooks.py), which write the same traces.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stacktrace_lab.record.core._core",
            sources=["stacktrace_lab/record/core/_core.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ]
)
