"""The silicon check: the same program single-stepped on this CPU and in the emulator.

    target (a scenario: `scenario_elf` writes its machine as a static ELF)
      -> `native`: single-step it under ptrace, log the outside world
      -> `emulated`: the recorder's machine, that outside world replayed
      -> `normalise` -> `compare`: the first divergence and its likely cause

`check.silicon_check()` runs the whole pipeline; docs/silicon.md explains it.
Only the `silicon-check` command imports this package.
"""
