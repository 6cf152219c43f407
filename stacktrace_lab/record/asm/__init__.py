"""The assembly front end: GNU-as sources in, keystone (in a child process) assembling them,
the miscompile guard and the pre-check.
"""
