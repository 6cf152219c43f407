"""stacktrace-lab: record x86-64 stack switches in an emulator and explain them.

The pipeline, one subpackage each, imports pointing one way:

    scenario (.toml + asm) -> record/ (keystone, unicorn, capstone) -> trace/ (Parquet)
    trace/ -> analysis (invariants) -> report/ (plots, html, md, json)
    trace/ -> diff

Nothing after recording imports unicorn or keystone: it reads only the trace file.
"""

__version__ = "0.1.0"
