"""The recorder side: assemble (keystone), emulate (unicorn), disassemble (capstone).

Nothing outside this subpackage imports those libraries.
"""
