"""Small programs that several test modules record."""

#: A function that zeroes r12 and returns: breaks `callee-saved` only.
ZERO_R12 = """
main:
    push %rbp
    mov $7, %r12
    call zero_r12
    pop %rbp
    ret
zero_r12:
    xor %r12, %r12
    ret
"""
