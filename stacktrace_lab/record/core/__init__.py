"""The recording core: the per-step hooks in C (_core.c) and in Python (hooks.py), the
columns they fill and the snapshot windows.
"""
