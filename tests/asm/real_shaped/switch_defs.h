/* The context is one word: the saved stack pointer. */
#ifndef SWITCH_DEFS_H
#define SWITCH_DEFS_H

#define CTX_SP 0
#define SAVE_SP(ctx) movq %rsp, CTX_SP(ctx)
#define LOAD_SP(ctx) movq CTX_SP(ctx), %rsp

#endif
