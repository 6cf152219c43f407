"""The recorder side: assemble (keystone), emulate (unicorn), disassemble (capstone).

Nothing outside this subpackage imports those libraries, with one exception:
the trace reader imports `disassembly` (capstone only) to derive the
per-instruction columns of version 1 traces, and only when it reads one.
"""
