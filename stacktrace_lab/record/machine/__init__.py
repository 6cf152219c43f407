"""The emulated machine: unicorn behind one class, the CPU model, user mode, the instructions
unicorn gets wrong, the start state, and the kernel it answers as: system calls, address
space, threads.
"""
