//! The first green-thread exercise, as a real program: a 48-byte stack of our
//! own, the address of `hello` written 16 bytes below its end (index 32), and
//! a switch that loads rsp from the context and returns into `hello`.
//!
//! Build it static, so stacktrace-lab can record it (see README.md here):
//!     rustc -O -C target-feature=+crt-static first_switch.rs
//! Works with rustc 1.63 or newer (`std::arch::asm!`, no nightly features).

use std::arch::asm;

const SSIZE: isize = 48;

/// What a thread needs to resume: for now only its stack pointer. `repr(C)`
/// so that `rsp` is the first 8 bytes, where the assembly reads it.
#[derive(Debug, Default)]
#[repr(C)]
struct ThreadContext {
    rsp: u64,
}

fn hello() -> ! {
    println!("I LOVE WAKING UP ON A NEW STACK!");
    loop {}
}

/// Load the new context's rsp and `ret`: the CPU pops the address planted at
/// the top of the new stack and continues there.
#[inline(never)]
unsafe fn gt_switch(new: *const ThreadContext) {
    asm!(
        "mov 0x00({0}), %rsp",
        "ret",
        in(reg) new,
        options(att_syntax),
    );
}

fn main() {
    let mut ctx = ThreadContext::default();
    let mut stack = vec![0_u8; SSIZE as usize];
    unsafe {
        let stack_ptr = stack.as_mut_ptr();
        // Index 32 = SSIZE - 16: after `ret` pops it, rsp % 16 == 8, as on any
        // function entry (the vector's buffer is 16-byte aligned).
        std::ptr::write(stack_ptr.offset(SSIZE - 16) as *mut u64, hello as *const () as u64);
        ctx.rsp = stack_ptr.offset(SSIZE - 16) as u64;
        gt_switch(&ctx);
    }
}
