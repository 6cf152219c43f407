/* The recording core in C: unicorn's per-instruction and per-access hooks.
 *
 * machine.py's pure-Python hooks are the reference; this file does the same
 * per-step work without a Python call per step (tests/test_native_core.py
 * checks that both write byte-identical traces). Python is called only per
 * chunk of rows, for an address executed for the first time whose instruction
 * may be privileged, fixed-value or an emulator gap (the user-mode decision,
 * record/machine/user_mode.py; the rest are decided here, with capstone's C library,
 * record/core/native_capstone.py), after a fixed-value instruction (the CPU
 * model's answer), at a privileged or unsupported instruction, at an execution
 * of one whose memory operand must be aligned (record/machine/emulator_gaps.py) when
 * the operand is misaligned (the core computes its address at every execution
 * from the operand Python described when it decided the instruction; Python
 * writes the message and stops the run), and in the discovery pass at the
 * allocator's entries and returns.
 *
 * No unicorn or capstone header is needed: the few entry points used are declared
 * below and their addresses come from the libraries the `unicorn` and `capstone`
 * packages loaded.
 *
 * Modes:
 *   COUNT     run to `--from`'s symbol: count steps, nothing else;
 *   DISCOVER  the discovery pass (record/linux/discovery.py): rsp at every step, and
 *             rip for the first steps after rsp jumps to another stack (what ran first);
 *   RECORD    every register at every step, every memory access.
 *   IDLE      between runs: the hooks do nothing.
 * Every mode keeps the user-mode decisions and the CPU model's answers.
 *
 * The code hook and the write hook stay registered for the machine's life (only the
 * recording's read hook comes and goes): unicorn drops every block translated while a
 * code hook was registered when that hook is deleted (`hooked_regions`), so a hook per
 * pass made the recording translate again all the code the discovery pass had
 * translated. With one hook whose mode changes, a machine rewound after the discovery
 * pass (Machine.rewind) records on the blocks that pass translated. The write hook being
 * there from the start also keeps every block on unicorn's slow memory path, where the
 * read hook added later is called (a block translated with no memory hook would skip it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef int (*reg_read_batch_fn)(void *uc, int *ids, void **values, int count);
typedef int (*emu_stop_fn)(void *uc);
typedef int (*mem_read_fn)(void *uc, uint64_t address, void *bytes, uint64_t size);
typedef int (*hook_add_fn)(void *uc, size_t *handle, int type, void *callback, void *user,
                           uint64_t begin, uint64_t end, ...);
typedef int (*hook_del_fn)(void *uc, size_t handle);

enum { COUNT = 0, DISCOVER = 1, RECORD = 2, IDLE = 3 };
enum {
    NORMAL = 1,
    PRIVILEGED = 2,
    FIXED_VALUE = 3,
    UNSUPPORTED = 4,
    ALIGN_CHECK = 5,
    KIND_MASK = 0xff,
    WATCH = 0x100
};
enum { STOP_NONE = 0, STOP_MAX_STEPS = 1, STOP_SPIN = 2, STOP_CALLBACK = 3 };
#define MAX_REGS 32
#define PAGE_SHIFT 12
#define PAGE_SIZE 4096
#define NO_ADDRESS UINT64_MAX
#define SIGNAL_CHECK_MASK 0xffff
#define TICK_MASK 0xfffff /* owner.tick(steps) every 2**20 steps, when asked */
#define MAX_WATCH 8

/* An alignment-checked instruction's memory operand (StepRules.aligned_operand):
 * its address is constant + base + index * scale + segment base, cut to bits. */
typedef struct {
    uint64_t insn; /* the instruction's address; NO_ADDRESS: a free slot */
    uint64_t constant;
    int regs[3]; /* base, index, segment base: unicorn ids, 0 for none */
    int scale, bits;
} AlignedOperand;

/* The decisions of one page: a kind per byte offset (0: not decided yet). */
typedef struct {
    uint64_t page;
    uint8_t *kinds;
    int watched;
} PageEntry;

typedef struct {
    PyObject_HEAD
    void *uc;
    reg_read_batch_fn reg_read_batch;
    emu_stop_fn emu_stop;
    mem_read_fn mem_read;
    hook_add_fn hook_add;
    hook_del_fn hook_del;
    int hook_code, hook_mem_write, hook_mem_read_after, mem_write;

    int n_regs, rcx_index, rsp_index;
    int reg_ids[MAX_REGS];
    uint64_t values[MAX_REGS];
    void *pointers[MAX_REGS];
    size_t row_bytes;

    /* A weak reference to the Python Uc object: the core deletes its hooks when it goes
     * only while unicorn's engine is still open (a strong one would make a cycle the
     * collector cannot see: uc -> the machine's callbacks -> the machine -> the core). */
    PyObject *machine_uc;
    PyObject *owner; /* the Python side: decide, answer, privileged, forgot, chunk, ... */
    /* A Capstone (below) deciding in C what Python would decide NORMAL; NULL: Python decides
     * every address may_matter lets through. */
    PyObject *capstone;
    PyObject *error; /* (type, value, traceback) of an exception raised in a callback */

    int mode;
    int64_t step;
    uint64_t previous_rip;
    int stop;
    size_t handles[2]; /* the hooks of one run (the recording's read hook) */
    int n_handles;
    size_t code_handle, write_handle; /* registered for the core's life (see the top) */
    int hooked;

    /* RECORD */
    int64_t max_steps, next_check, chunk_rows, chunk_start;
    /* The chunk's registers by column: register i's values at rows[i * rows_cap ..],
     * so that each becomes an Arrow column without a transposition. */
    uint64_t *rows;
    size_t n_rows, rows_cap;
    int64_t *events; /* (step, access, address, size, value) */
    size_t n_events, events_cap;
    uint8_t last_row[MAX_REGS * 8];
    int have_last_row;

    /* DISCOVER */
    uint64_t stack_lo, stack_hi, lowest, want;
    uint64_t watch[MAX_WATCH];
    int n_watch;
    int64_t *outside; /* (step, rsp) */
    size_t n_outside, outside_cap;
    int64_t outside_calls; /* how many times `outside` may still be called */
    /* (step, rip, rsp) of the first `follow_steps` steps outside the process stack after
     * each of the first `follow_budget` switches (rsp jumping: from the process stack,
     * or by more than `switch_jump`): the code that ran first on a stack. */
    int64_t *followed;
    size_t n_followed, followed_cap;
    int64_t follow_budget, follow_steps, follow_left;
    uint64_t switch_jump;
    int tick;              /* COUNT and DISCOVER: call owner.tick(steps) for a progress bar */

    /* decisions, by page */
    PageEntry *pages;
    size_t pages_cap, n_pages, n_watched;
    uint64_t last_page;
    uint8_t *last_kinds;
    uint64_t pending_at, pending_insn; /* a fixed-value instruction ran: answer at pending_at */

    /* ALIGN_CHECK operands, by instruction address (open addressing, never removed:
     * an address decided again gets its operand again) */
    AlignedOperand *aligned;
    size_t aligned_cap, n_aligned;
    AlignedOperand *last_aligned;
} Core;

/* ---- calling Python from a hook ------------------------------------------------ */

static void keep_error(Core *c) {
    if (c->error == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
        c->error = Py_BuildValue("(NNN)", type ? type : Py_NewRef(Py_None),
                                 value ? value : Py_NewRef(Py_None),
                                 tb ? tb : Py_NewRef(Py_None));
    }
    PyErr_Clear();
    c->stop = STOP_CALLBACK;
    c->emu_stop(c->uc);
}

static int call_void(Core *c, const char *name, const char *format, ...);

/* Ctrl-C and SIGTERM run their Python handlers only when Python code runs:
 * give them a chance every 65536 steps. */
static void check_signals(Core *c) {
    PyGILState_STATE gil = PyGILState_Ensure();
    if (PyErr_CheckSignals() < 0) keep_error(c);
    PyGILState_Release(gil);
}

/* Every 65536 steps of a run that calls Python for nothing else. */
static void periodic(Core *c) {
    check_signals(c);
    if (c->tick && (c->step & TICK_MASK) == 0 && c->stop == STOP_NONE)
        call_void(c, "tick", "(L)", (long long)c->step);
}

/* ---- decisions ------------------------------------------------------------------ */

static size_t page_slot(Core *c, uint64_t page) {
    size_t mask = c->pages_cap - 1;
    size_t i = (size_t)(page * 0x9E3779B97F4A7C15ULL >> 20) & mask;
    while (c->pages[i].kinds != NULL && c->pages[i].page != page) i = (i + 1) & mask;
    return i;
}

static PageEntry *find_page(Core *c, uint64_t page) {
    if (c->pages_cap == 0) return NULL;
    PageEntry *entry = &c->pages[page_slot(c, page)];
    return entry->kinds != NULL ? entry : NULL;
}

static PageEntry *add_page(Core *c, uint64_t page) {
    if ((c->n_pages + 1) * 2 > c->pages_cap) {
        size_t old_cap = c->pages_cap;
        PageEntry *old = c->pages;
        c->pages_cap = old_cap ? old_cap * 2 : 64;
        c->pages = calloc(c->pages_cap, sizeof(PageEntry));
        if (c->pages == NULL) return NULL;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].kinds != NULL) c->pages[page_slot(c, old[i].page)] = old[i];
        free(old);
    }
    PageEntry *entry = &c->pages[page_slot(c, page)];
    entry->page = page;
    entry->kinds = calloc(PAGE_SIZE, 1);
    entry->watched = 0;
    if (entry->kinds == NULL) return NULL;
    c->n_pages++;
    c->last_page = NO_ADDRESS; /* entries moved */
    return entry;
}

static void forget_range(Core *c, uint64_t address, uint64_t size) {
    uint64_t last = (address + (size ? size : 1) - 1) >> PAGE_SHIFT;
    for (uint64_t page = address >> PAGE_SHIFT; page <= last; page++) {
        PageEntry *entry = find_page(c, page);
        if (entry == NULL) continue;
        memset(entry->kinds, 0, PAGE_SIZE);
        if (entry->watched) c->n_watched--;
        entry->watched = 0;
    }
}

/* A write the program makes: code it overwrites is decided again. */
static void written(Core *c, uint64_t address, int size) {
    uint64_t first = address >> PAGE_SHIFT, last = (address + (uint64_t)size - 1) >> PAGE_SHIFT;
    for (uint64_t page = first; page <= last; page++) {
        PageEntry *entry = find_page(c, page);
        if (entry != NULL && entry->watched) {
            forget_range(c, page << PAGE_SHIFT, PAGE_SIZE);
            call_void(c, "forgot", "(KK)", (unsigned long long)(page << PAGE_SHIFT),
                      (unsigned long long)PAGE_SIZE);
        }
    }
}

static int call_void(Core *c, const char *name, const char *format, ...) {
    PyGILState_STATE gil = PyGILState_Ensure();
    va_list va;
    va_start(va, format);
    PyObject *args = Py_VaBuildValue(format, va);
    va_end(va);
    PyObject *result = NULL;
    if (args != NULL) {
        PyObject *method = PyObject_GetAttrString(c->owner, name);
        if (method != NULL) {
            result = PyObject_Call(method, args, NULL);
            Py_DECREF(method);
        }
        Py_DECREF(args);
    }
    int ok = result != NULL;
    if (!ok) keep_error(c);
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return ok;
}

static int is_prefix(uint8_t byte) {
    return byte == 0x66 || byte == 0x67 || byte == 0xF0 || byte == 0xF2 || byte == 0xF3 ||
           byte == 0x2E || byte == 0x36 || byte == 0x3E || byte == 0x26 || byte == 0x64 ||
           byte == 0x65 || (byte >= 0x40 && byte <= 0x4F);
}

/* user_mode.py's `_may_matter`: whether the opcode after the prefixes could start a
 * privileged, fixed-value or emulator-gap instruction (VEX/EVEX/XOP c4 c5 62 8f,
 * x87 d9, legacy SSE behind 0f). Most instructions are NORMAL without a call
 * into Python (capstone). `code` gets the bytes read (`*read` of them; 0: none). */
static int may_matter(Core *c, uint64_t address, uint8_t code[15], uint64_t *read) {
    uint64_t size = 15;
    *read = 0;
    if (c->mem_read(c->uc, address, code, size) != 0) {
        size = (-address) % PAGE_SIZE;
        if (size == 0 || size > 15) size = 15;
        if (c->mem_read(c->uc, address, code, size) != 0) return 1; /* let Python see it */
    }
    *read = size;
    for (uint64_t i = 0; i < size; i++) {
        uint8_t byte = code[i];
        if (is_prefix(byte)) continue;
        return byte == 0xFA || byte == 0xFB || byte == 0x0F || (byte >= 0xE4 && byte <= 0xE7) ||
               (byte >= 0xEC && byte <= 0xEF) || (byte >= 0x6C && byte <= 0x6F) ||
               byte == 0xC4 || byte == 0xC5 || byte == 0x62 || byte == 0x8F || byte == 0xD9;
    }
    return 1;
}

/* ---- capstone, from the library the `capstone` package loaded ------------------------
 *
 * Decoding a new address through the Python binding costs more than everything
 * else a step does. Like unicorn's, capstone's entry points come from the library
 * the package already loaded, and the offsets of the few cs_insn/cs_detail fields
 * read here come from the binding's own ctypes structures (record/core/native_capstone.py),
 * so no capstone header is needed either. One Capstone object per user: a handle
 * is not shared between threads. */

typedef void *(*cs_malloc_fn)(size_t handle);
typedef _Bool (*cs_disasm_iter_fn)(size_t handle, const uint8_t **code, size_t *size,
                                   uint64_t *address, void *insn);
typedef void (*cs_free_fn)(void *insn, size_t count);

/* The instruction kinds in trace/format.py's INSTRUCTION_KINDS order. */
enum { KIND_CALL, KIND_RET, KIND_JMP, KIND_INDIRECT_JMP, KIND_SYSCALL, KIND_OTHER, N_KINDS };
#define MAX_BRANCH_WORDS 32

typedef struct {
    PyObject_HEAD
    PyObject *cs; /* the capstone.Cs whose handle this is: kept open while used here */
    size_t handle;
    cs_disasm_iter_fn disasm_iter;
    cs_free_fn free_insn;
    uint8_t *insn; /* one cs_insn (with its detail) from cs_malloc */
    /* Byte offsets: in cs_insn id, size, mnemonic, op_str, detail; in cs_detail groups,
     * groups_count, x86.op_count, x86.operands; an operand's size, type, size. */
    Py_ssize_t at_id, at_size, at_mnemonic, at_op_str, at_detail, at_groups, at_groups_count,
        at_op_count, at_operands, op_stride, at_op_type, at_op_size;
    /* capstone's numbers: instruction ids, groups, operand types */
    int ins_syscall, ins_sysenter, grp_jump, grp_call, grp_ret, grp_branch_relative,
        grp_privilege, op_reg, op_mem;
    /* Instruction ids whose user-mode decision Python makes (user_mode.py). */
    uint8_t *python_ids;
    Py_ssize_t n_python_ids;
    /* disassembly.py's _MAY_BRANCH: mnemonic words that may start a branch. */
    char *branch_words[MAX_BRANCH_WORDS];
    int n_branch_words;
    /* emulator_gaps.py's UNALIGNED_OK: mnemonics whose 16-byte memory operand may be
     * misaligned. */
    char *unaligned_ok[MAX_BRANCH_WORDS];
    int n_unaligned_ok;
    PyObject *kind_names; /* INSTRUCTION_KINDS, as str */
} Capstone;

#define FIELD(type, base, offset) (*(type *)((base) + (offset)))

/* Decode one instruction of `code` at `address` into cap->insn: 1, or 0 when the
 * bytes are no instruction. */
static int cap_decode(Capstone *cap, const uint8_t *code, size_t size, uint64_t address) {
    const uint8_t *at = code;
    size_t left = size;
    uint64_t where = address;
    return cap->disasm_iter(cap->handle, &at, &left, &where, cap->insn) ? 1 : 0;
}

static int cap_in_group(Capstone *cap, const uint8_t *detail, int group) {
    int count = detail[cap->at_groups_count];
    for (int i = 0; i < count; i++)
        if (detail[cap->at_groups + i] == group) return 1;
    return 0;
}

static int cap_has_operand(Capstone *cap, const uint8_t *detail, int type, int size) {
    int count = detail[cap->at_op_count];
    for (int i = 0; i < count; i++) {
        const uint8_t *op = detail + cap->at_operands + (Py_ssize_t)i * cap->op_stride;
        if (FIELD(int32_t, op, cap->at_op_type) == type &&
            (size < 0 || op[cap->at_op_size] == size))
            return 1;
    }
    return 0;
}

/* disassembly.py's instruction_kind, on the decoded instruction. */
static int cap_kind(Capstone *cap) {
    uint32_t id = FIELD(uint32_t, cap->insn, cap->at_id);
    if ((int)id == cap->ins_syscall || (int)id == cap->ins_sysenter) return KIND_SYSCALL;
    const uint8_t *detail = FIELD(uint8_t *, cap->insn, cap->at_detail);
    if (detail == NULL) return KIND_OTHER;
    if (cap_in_group(cap, detail, cap->grp_call)) return KIND_CALL;
    if (cap_in_group(cap, detail, cap->grp_ret)) return KIND_RET;
    if (cap_in_group(cap, detail, cap->grp_jump) ||
        cap_in_group(cap, detail, cap->grp_branch_relative)) {
        int indirect = cap_has_operand(cap, detail, cap->op_reg, -1) ||
                       cap_has_operand(cap, detail, cap->op_mem, -1);
        return indirect ? KIND_INDIRECT_JMP : KIND_JMP;
    }
    return KIND_OTHER;
}

/* str.isspace() for the ASCII capstone writes. */
static int is_space(char ch) {
    return ch == ' ' || (ch >= '\t' && ch <= '\r') || (ch >= 0x1c && ch <= 0x1f);
}

/* disassembly.py's may_branch: whether a word of the mnemonic starts with a branch word. */
static int cap_may_branch(Capstone *cap, const char *mnemonic) {
    const char *word = mnemonic;
    while (*word) {
        while (*word && is_space(*word)) word++;
        if (!*word) break;
        const char *end = word;
        while (*end && !is_space(*end)) end++;
        for (int i = 0; i < cap->n_branch_words; i++) {
            size_t n = strlen(cap->branch_words[i]);
            if ((size_t)(end - word) >= n && memcmp(word, cap->branch_words[i], n) == 0) return 1;
        }
        word = end;
    }
    return 0;
}

/* f"{mnemonic} {op_str}".strip() of the decoded instruction. */
static PyObject *cap_text(Capstone *cap) {
    const char *mnemonic = (const char *)cap->insn + cap->at_mnemonic;
    const char *operands = (const char *)cap->insn + cap->at_op_str;
    char text[256];
    size_t m = strnlen(mnemonic, 32), o = strnlen(operands, 160);
    memcpy(text, mnemonic, m);
    text[m] = ' ';
    memcpy(text + m + 1, operands, o);
    size_t begin = 0, end = m + 1 + o;
    while (begin < end && is_space(text[begin])) begin++;
    while (end > begin && is_space(text[end - 1])) end--;
    return PyUnicode_DecodeASCII(text + begin, (Py_ssize_t)(end - begin), NULL);
}

/* facts(addresses, segments) -> [(text, size, kind, bytes)]: Disassembler.decode of each
 * address (uint64, native order) in the program's code, `segments` a sorted list of
 * (base, bytes) (the first one holding an address gives its bytes, up to 16). */
static PyObject *cap_facts(Capstone *cap, PyObject *args) {
    Py_buffer addresses;
    PyObject *segments;
    if (!PyArg_ParseTuple(args, "y*O!", &addresses, &PyList_Type, &segments)) return NULL;
    Py_ssize_t n = addresses.len / 8, n_segments = PyList_GET_SIZE(segments);
    PyObject *result = NULL;
    unsigned long long *bases = malloc(((size_t)n_segments + 1) * sizeof(unsigned long long));
    const char **starts = malloc(((size_t)n_segments + 1) * sizeof(char *));
    Py_ssize_t *lengths = malloc(((size_t)n_segments + 1) * sizeof(Py_ssize_t));
    if (bases == NULL || starts == NULL || lengths == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t s = 0; s < n_segments; s++)
        if (!PyArg_ParseTuple(PyList_GET_ITEM(segments, s), "Ky#", &bases[s], &starts[s],
                              &lengths[s]))
            goto fail;
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        uint64_t address = ((const uint64_t *)addresses.buf)[i];
        const uint8_t *code = NULL;
        Py_ssize_t size = 0;
        for (Py_ssize_t s = 0; s < n_segments; s++) {
            if (bases[s] <= address && address - bases[s] < (uint64_t)lengths[s]) {
                code = (const uint8_t *)starts[s] + (address - bases[s]);
                size = lengths[s] - (Py_ssize_t)(address - bases[s]);
                if (size > 16) size = 16;
                break;
            }
        }
        PyObject *fact;
        PyObject *other = PyTuple_GET_ITEM(cap->kind_names, KIND_OTHER);
        if (code == NULL) {
            fact = Py_BuildValue("(siOy#)", "(bad)", 1, other, "", (Py_ssize_t)0);
        } else if (!cap_decode(cap, code, (size_t)size, address)) {
            fact = Py_BuildValue("(siOy#)", "(bad)", 1, other, (const char *)code, (Py_ssize_t)1);
        } else {
            int length = FIELD(uint16_t, cap->insn, cap->at_size);
            int kind = KIND_OTHER;
            if (cap_may_branch(cap, (const char *)cap->insn + cap->at_mnemonic))
                kind = cap_kind(cap);
            PyObject *text = cap_text(cap);
            fact = text == NULL ? NULL
                                : Py_BuildValue("(NiOy#)", text, length,
                                                PyTuple_GET_ITEM(cap->kind_names, kind),
                                                (const char *)code, (Py_ssize_t)length);
        }
        if (fact == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, fact);
    }
fail:
    free(bases);
    free(starts);
    free(lengths);
    PyBuffer_Release(&addresses);
    return result;
}

/* Whether the user-mode decision of the instruction in `code` needs Python
 * (user_mode.py's Decisions.decide): anything that may be privileged, a fixed-value
 * instruction or an emulator gap (emulator_gaps.gap_of: VEX/EVEX/XOP, x87, a 16-byte
 * memory operand). Everything else is NORMAL, as Python would decide it. */
static int cap_needs_python(Capstone *cap, const uint8_t *code, size_t size, uint64_t address) {
    for (size_t i = 0; i < size; i++) {
        uint8_t byte = code[i];
        if (is_prefix(byte)) continue;
        if (byte == 0xC4 || byte == 0xC5 || byte == 0x62 || byte == 0x8F) return 1;
        break;
    }
    if (!cap_decode(cap, code, size, address)) return 0; /* no instruction: NORMAL */
    uint32_t id = FIELD(uint32_t, cap->insn, cap->at_id);
    if ((Py_ssize_t)id < cap->n_python_ids && cap->python_ids[id]) return 1;
    if (((const char *)cap->insn + cap->at_mnemonic)[0] == 'f') return 1;
    const uint8_t *detail = FIELD(uint8_t *, cap->insn, cap->at_detail);
    if (detail == NULL) return 1;
    if (cap_in_group(cap, detail, cap->grp_privilege)) return 1;
    if (!cap_has_operand(cap, detail, cap->op_mem, 16)) return 0;
    const char *mnemonic = (const char *)cap->insn + cap->at_mnemonic;
    for (int i = 0; i < cap->n_unaligned_ok; i++)
        if (strcmp(mnemonic, cap->unaligned_ok[i]) == 0) return 0;
    return 1;
}

/* Copies of the str items of `words` into `out` (at most MAX_BRANCH_WORDS): 0 on error. */
static int keep_words(PyObject *words, char **out, int *n) {
    PyObject *seq = PySequence_Fast(words, "words must be a sequence");
    if (seq == NULL) return 0;
    int ok = 1;
    for (Py_ssize_t i = 0; ok && i < PySequence_Fast_GET_SIZE(seq); i++) {
        const char *word = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (word == NULL) {
            ok = 0;
        } else if (*n == MAX_BRANCH_WORDS) {
            PyErr_SetString(PyExc_ValueError, "too many words");
            ok = 0;
        } else if ((out[*n] = strdup(word)) == NULL) {
            PyErr_NoMemory();
            ok = 0;
        } else {
            (*n)++;
        }
    }
    Py_DECREF(seq);
    return ok;
}

static void cap_dealloc(Capstone *cap) {
    if (cap->insn != NULL) cap->free_insn(cap->insn, 1);
    free(cap->python_ids);
    for (int i = 0; i < cap->n_branch_words; i++) free(cap->branch_words[i]);
    for (int i = 0; i < cap->n_unaligned_ok; i++) free(cap->unaligned_ok[i]);
    Py_XDECREF(cap->cs);
    Py_XDECREF(cap->kind_names);
    Py_TYPE(cap)->tp_free((PyObject *)cap);
}

/* Capstone(cs, handle, (cs_malloc, cs_disasm_iter, cs_free), layout (12 offsets),
 *          constants (9), python ids, branch words, unaligned-ok mnemonics, kind names) */
static int cap_init(Capstone *cap, PyObject *args, PyObject *kwargs) {
    PyObject *cs, *ids, *words, *unaligned, *kind_names;
    unsigned long long handle, f_malloc, f_iter, f_free;
    if (!PyArg_ParseTuple(args, "OK(KKK)(nnnnnnnnnnnn)(iiiiiiiii)OOOO!", &cs, &handle, &f_malloc,
                          &f_iter, &f_free, &cap->at_id, &cap->at_size, &cap->at_mnemonic,
                          &cap->at_op_str, &cap->at_detail, &cap->at_groups,
                          &cap->at_groups_count, &cap->at_op_count, &cap->at_operands,
                          &cap->op_stride, &cap->at_op_type, &cap->at_op_size, &cap->ins_syscall,
                          &cap->ins_sysenter, &cap->grp_jump, &cap->grp_call, &cap->grp_ret,
                          &cap->grp_branch_relative, &cap->grp_privilege, &cap->op_reg,
                          &cap->op_mem, &ids, &words, &unaligned, &PyTuple_Type,
                          &kind_names))
        return -1;
    if (cap->insn != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Capstone initialised twice");
        return -1;
    }
    if (PyTuple_GET_SIZE(kind_names) != N_KINDS) {
        PyErr_SetString(PyExc_ValueError, "kind names: one per INSTRUCTION_KINDS");
        return -1;
    }
    PyObject *seq = PySequence_Fast(ids, "python ids must be a sequence");
    if (seq == NULL) return -1;
    long highest = -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        long id = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (id > highest) highest = id;
    }
    cap->n_python_ids = highest + 1;
    cap->python_ids = calloc((size_t)highest + 2, 1);
    for (Py_ssize_t i = 0; cap->python_ids != NULL && i < PySequence_Fast_GET_SIZE(seq); i++) {
        long id = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (id >= 0) cap->python_ids[id] = 1;
    }
    Py_DECREF(seq);
    if (cap->python_ids == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyErr_Occurred()) return -1;
    if (!keep_words(words, cap->branch_words, &cap->n_branch_words) ||
        !keep_words(unaligned, cap->unaligned_ok, &cap->n_unaligned_ok))
        return -1;
    cap->handle = (size_t)handle;
    cap->disasm_iter = (cs_disasm_iter_fn)(uintptr_t)f_iter;
    cap->free_insn = (cs_free_fn)(uintptr_t)f_free;
    cap->insn = ((cs_malloc_fn)(uintptr_t)f_malloc)(cap->handle);
    if (cap->insn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cs_malloc failed");
        return -1;
    }
    Py_INCREF(cs);
    Py_XSETREF(cap->cs, cs);
    Py_INCREF(kind_names);
    Py_XSETREF(cap->kind_names, kind_names);
    return 0;
}

/* asks_python(code, address) -> bool: whether the core asks Decisions.decide about the
 * instruction in `code` (the bytes at `address`) once may_matter let it through. */
static PyObject *cap_asks_python(Capstone *cap, PyObject *args) {
    const char *code;
    Py_ssize_t size;
    unsigned long long address;
    if (!PyArg_ParseTuple(args, "y#K", &code, &size, &address)) return NULL;
    return PyBool_FromLong(cap_needs_python(cap, (const uint8_t *)code, (size_t)size, address));
}

static PyMethodDef cap_methods[] = {
    {"facts", (PyCFunction)cap_facts, METH_VARARGS, NULL},
    {"asks_python", (PyCFunction)cap_asks_python, METH_VARARGS, NULL},
    {NULL},
};

static PyTypeObject CapstoneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stacktrace_lab.record.core._core.Capstone",
    .tp_basicsize = sizeof(Capstone),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cap_init,
    .tp_dealloc = (destructor)cap_dealloc,
    .tp_methods = cap_methods,
    .tp_doc = "capstone's C library for new addresses (record/core/native_capstone.py)",
};

/* ---- alignment-checked operands --------------------------------------------------- */

static size_t aligned_slot(AlignedOperand *table, size_t cap, uint64_t insn) {
    size_t mask = cap - 1;
    size_t i = (size_t)(insn * 0x9E3779B97F4A7C15ULL >> 20) & mask;
    while (table[i].insn != NO_ADDRESS && table[i].insn != insn) i = (i + 1) & mask;
    return i;
}

static AlignedOperand *find_aligned(Core *c, uint64_t insn) {
    if (c->last_aligned != NULL && c->last_aligned->insn == insn) return c->last_aligned;
    if (c->aligned_cap == 0) return NULL;
    AlignedOperand *entry = &c->aligned[aligned_slot(c->aligned, c->aligned_cap, insn)];
    if (entry->insn != insn) return NULL;
    c->last_aligned = entry;
    return entry;
}

static AlignedOperand *add_aligned(Core *c, uint64_t insn) {
    AlignedOperand *entry = find_aligned(c, insn);
    if (entry != NULL) return entry;
    if ((c->n_aligned + 1) * 2 > c->aligned_cap) {
        size_t old_cap = c->aligned_cap, cap = old_cap ? old_cap * 2 : 256;
        AlignedOperand *table = malloc(cap * sizeof(AlignedOperand));
        if (table == NULL) return NULL;
        for (size_t i = 0; i < cap; i++) table[i].insn = NO_ADDRESS;
        for (size_t i = 0; i < old_cap; i++)
            if (c->aligned[i].insn != NO_ADDRESS)
                table[aligned_slot(table, cap, c->aligned[i].insn)] = c->aligned[i];
        free(c->aligned);
        c->aligned = table;
        c->aligned_cap = cap;
        c->last_aligned = NULL; /* entries moved */
    }
    entry = &c->aligned[aligned_slot(c->aligned, c->aligned_cap, insn)];
    entry->insn = insn;
    c->n_aligned++;
    return entry;
}

/* Python decided ALIGN_CHECK at `insn` (GIL held): keep its operand. */
static void keep_aligned_operand(Core *c, uint64_t insn) {
    PyObject *answer = PyObject_CallMethod(c->owner, "aligned_operand", "(K)",
                                           (unsigned long long)insn);
    if (answer == NULL) return;
    unsigned long long constant;
    int base, index, scale, segment, bits;
    if (PyArg_ParseTuple(answer, "Kiiiii", &constant, &base, &index, &scale, &segment, &bits)) {
        AlignedOperand *entry = add_aligned(c, insn);
        if (entry == NULL) {
            PyErr_NoMemory();
        } else {
            entry->constant = constant;
            entry->regs[0] = base;
            entry->regs[1] = index;
            entry->regs[2] = segment;
            entry->scale = scale;
            entry->bits = bits;
        }
    }
    Py_DECREF(answer);
}

/* Whether the operand of the alignment-checked instruction at `insn` is 16-byte
 * aligned this time (emulator_gaps.MustBeAligned.address, the same sum). */
static int operand_aligned(Core *c, uint64_t insn) {
    AlignedOperand *op = find_aligned(c, insn);
    if (op == NULL) return 0; /* not described: let Python look */
    uint64_t values[3] = {0, 0, 0};
    void *pointers[3];
    int ids[3], n = 0;
    for (int i = 0; i < 3; i++) {
        if (op->regs[i] == 0) continue;
        ids[n] = op->regs[i];
        pointers[n] = &values[i];
        n++;
    }
    if (n > 0) c->reg_read_batch(c->uc, ids, pointers, n);
    uint64_t address = op->constant + values[0] + values[1] * (uint64_t)op->scale + values[2];
    if (op->bits < 64) address &= (1ULL << op->bits) - 1;
    return (address & 15) == 0;
}

static int decide(Core *c, uint64_t address) {
    uint64_t page = address >> PAGE_SHIFT;
    if (page != c->last_page) {
        PageEntry *entry = find_page(c, page);
        if (entry == NULL) {
            entry = add_page(c, page);
            if (entry == NULL) return NORMAL;
        }
        c->last_page = page;
        c->last_kinds = entry->kinds;
    }
    int kind = c->last_kinds[address & (PAGE_SIZE - 1)];
    if (kind) return kind;
    long value = NORMAL | WATCH;
    uint8_t code[15];
    uint64_t read;
    if (may_matter(c, address, code, &read) &&
        (c->capstone == NULL || read == 0 ||
         cap_needs_python((Capstone *)c->capstone, code, read, address))) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *answer =
            PyObject_CallMethod(c->owner, "decide", "(K)", (unsigned long long)address);
        if (answer != NULL) {
            value = PyLong_AsLong(answer);
            Py_DECREF(answer);
        }
        if (!PyErr_Occurred() && (value & KIND_MASK) == ALIGN_CHECK)
            keep_aligned_operand(c, address);
        if (PyErr_Occurred()) {
            keep_error(c);
            value = NORMAL;
        }
        PyGILState_Release(gil);
    }
    kind = (int)(value & KIND_MASK);
    c->last_kinds[address & (PAGE_SIZE - 1)] = (uint8_t)kind;
    if (value & WATCH) {
        PageEntry *entry = find_page(c, page);
        if (!entry->watched) c->n_watched++;
        entry->watched = 1;
    }
    return kind;
}

/* After the step's own work: what the instruction about to run is. */
static void apply_decision(Core *c, uint64_t address, uint32_t size) {
    int kind = decide(c, address);
    if (kind == NORMAL || c->stop != STOP_NONE) return;
    if (kind == PRIVILEGED) {
        call_void(c, "privileged", "(K)", (unsigned long long)address);
    } else if (kind == ALIGN_CHECK) {
        if (!operand_aligned(c, address))
            call_void(c, "align_check", "(K)", (unsigned long long)address);
    } else if (kind == UNSUPPORTED) {
        call_void(c, "unsupported", "(K)", (unsigned long long)address);
    } else if (kind == FIXED_VALUE) {
        c->pending_at = address + size;
        c->pending_insn = address;
    }
}

/* A fixed-value instruction ran just before: the CPU model's answer, before this row. */
static inline void answer_pending(Core *c, uint64_t address) {
    if (c->pending_at == NO_ADDRESS) return;
    uint64_t at = c->pending_at;
    c->pending_at = NO_ADDRESS;
    if (at == address) call_void(c, "answer", "(K)", (unsigned long long)c->pending_insn);
}

/* ---- the rep rule ------------------------------------------------------------- */

static int is_rep_string(Core *c, uint64_t address) {
    uint8_t code[15];
    uint64_t size = 15;
    if (c->mem_read(c->uc, address, code, 15) != 0) {
        size = (-address) % PAGE_SIZE;
        if (size == 0) size = PAGE_SIZE;
        if (size > 15) size = 15;
        if (c->mem_read(c->uc, address, code, size) != 0) return 0;
    }
    int rep = 0;
    for (uint64_t i = 0; i < size; i++) {
        uint8_t byte = code[i];
        if (byte == 0xF2 || byte == 0xF3) {
            rep = 1;
        } else if (byte == 0xF0 || byte == 0x2E || byte == 0x36 || byte == 0x3E || byte == 0x26 ||
                   byte == 0x64 || byte == 0x65 || byte == 0x66 || byte == 0x67 ||
                   (byte >= 0x40 && byte <= 0x4F)) {
            continue;
        } else {
            int string = (byte >= 0x6C && byte <= 0x6F) || (byte >= 0xA4 && byte <= 0xA7) ||
                         (byte >= 0xAA && byte <= 0xAF);
            return rep && string;
        }
    }
    return 0;
}

static uint64_t read_one(Core *c, int index) {
    uint64_t value = 0;
    void *pointer = &value;
    c->reg_read_batch(c->uc, &c->reg_ids[index], &pointer, 1);
    return value;
}

/* ---- buffers ------------------------------------------------------------------ */

static int grow(void **buffer, size_t *cap, size_t need, size_t item) {
    if (need <= *cap) return 1;
    size_t cap2 = *cap ? *cap : 1024;
    while (cap2 < need) cap2 *= 2;
    void *more = realloc(*buffer, cap2 * item);
    if (more == NULL) return 0;
    *buffer = more;
    *cap = cap2;
    return 1;
}

static void add_event(Core *c, int64_t step, int64_t access, int64_t address, int64_t size,
                      int64_t value) {
    if (!grow((void **)&c->events, &c->events_cap, c->n_events + 1, 5 * sizeof(int64_t))) {
        c->stop = STOP_CALLBACK;
        c->emu_stop(c->uc);
        return;
    }
    int64_t *e = c->events + 5 * c->n_events++;
    e[0] = step;
    e[1] = access;
    e[2] = address;
    e[3] = size;
    e[4] = value;
}

/* The last row, kept (row-major) for the spin check across a chunk's end. */
static void keep_last_row(Core *c) {
    uint64_t *last = (uint64_t *)c->last_row;
    for (int i = 0; i < c->n_regs; i++) last[i] = c->rows[(size_t)i * c->rows_cap + c->n_rows - 1];
    c->have_last_row = 1;
}

/* The chunk's rows as bytes, register by register (n_regs columns of n_rows). */
static PyObject *take_rows(Core *c) {
    size_t column = c->n_rows * 8;
    if (c->n_rows == c->rows_cap)
        return PyBytes_FromStringAndSize((char *)c->rows, (Py_ssize_t)(column * c->n_regs));
    PyObject *rows = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(column * c->n_regs));
    if (rows == NULL) return NULL;
    char *out = PyBytes_AS_STRING(rows);
    for (int i = 0; i < c->n_regs; i++)
        memcpy(out + column * i, c->rows + (size_t)i * c->rows_cap, column);
    return rows;
}

/* Hand the rows so far to Python (owner.chunk); 0 when the run must stop. */
static int flush(Core *c) {
    if (c->n_rows > 0) {
        keep_last_row(c);
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *rows = take_rows(c);
        PyObject *events = PyBytes_FromStringAndSize((char *)c->events,
                                                     (Py_ssize_t)(c->n_events * 5 * 8));
        PyObject *result = NULL;
        if (rows != NULL && events != NULL)
            result = PyObject_CallMethod(c->owner, "chunk", "(LOO)", (long long)c->chunk_start,
                                         rows, events);
        Py_XDECREF(rows);
        Py_XDECREF(events);
        int go_on = 0;
        if (result == NULL) {
            keep_error(c);
        } else {
            go_on = PyObject_IsTrue(result);
            Py_DECREF(result);
        }
        PyGILState_Release(gil);
        c->n_rows = 0;
        c->n_events = 0;
        c->chunk_start = c->step;
        return go_on;
    }
    c->chunk_start = c->step;
    return 1;
}

/* ---- the hooks -------------------------------------------------------------- */

static int is_spin(Core *c) {
    if (c->n_rows > 0) {
        for (int i = 0; i < c->n_regs; i++)
            if (c->rows[(size_t)i * c->rows_cap + c->n_rows - 1] != c->values[i]) return 0;
    } else if (!c->have_last_row || memcmp(c->last_row, c->values, c->row_bytes) != 0) {
        return 0;
    }
    for (size_t i = c->n_events; i-- > 0;) {
        int64_t *e = c->events + 5 * i;
        if (e[0] != c->step - 1) break;
        if (e[1] == c->mem_write) return 0;
    }
    return 1;
}

static void on_code_record(void *uc, uint64_t address, uint32_t size, void *user) {
    Core *c = user;
    answer_pending(c, address);
    if (c->stop != STOP_NONE) return;
    if (c->step == c->next_check) {
        if (c->step >= c->max_steps) {
            c->stop = STOP_MAX_STEPS;
            c->emu_stop(uc);
            return;
        }
        if (!flush(c)) {
            if (c->stop == STOP_NONE) c->stop = STOP_CALLBACK;
            c->emu_stop(uc);
            return;
        }
        int64_t next = c->step + c->chunk_rows;
        c->next_check = next < c->max_steps ? next : c->max_steps;
    }
    if ((c->step & SIGNAL_CHECK_MASK) == SIGNAL_CHECK_MASK) {
        check_signals(c);
        if (c->stop != STOP_NONE) return;
    }
    c->reg_read_batch(uc, c->reg_ids, c->pointers, c->n_regs);
    if (address == c->previous_rip) {
        if (is_spin(c)) {
            c->stop = STOP_SPIN;
            c->emu_stop(uc);
            return;
        }
        /* unicorn enters a finished `rep` once more (machine.py, `run`): not a step. */
        if (c->values[c->rcx_index] == 0 && is_rep_string(c, address)) return;
    }
    if (c->n_rows == c->rows_cap) { /* never: a chunk is handed over at chunk_rows */
        c->stop = STOP_CALLBACK;
        c->emu_stop(uc);
        return;
    }
    for (int i = 0; i < c->n_regs; i++) c->rows[(size_t)i * c->rows_cap + c->n_rows] = c->values[i];
    c->n_rows++;
    c->previous_rip = address;
    c->step++;
    apply_decision(c, address, size);
}

static void on_memory_record(void *uc, int access, uint64_t address, int size, int64_t value,
                             void *user) {
    Core *c = user;
    add_event(c, c->step - 1, access, (int64_t)address, size, value);
    if (c->n_watched && access == c->mem_write) written(c, address, size);
}

static void on_code_count(void *uc, uint64_t address, uint32_t size, void *user) {
    Core *c = user;
    answer_pending(c, address);
    if (c->stop != STOP_NONE) return;
    if (address == c->previous_rip && read_one(c, c->rcx_index) == 0 &&
        is_rep_string(c, address))
        return;
    c->previous_rip = address;
    c->step++;
    if ((c->step & SIGNAL_CHECK_MASK) == 0) periodic(c);
    apply_decision(c, address, size);
}

static void on_code_discover(void *uc, uint64_t address, uint32_t size, void *user) {
    Core *c = user;
    answer_pending(c, address);
    if (c->stop != STOP_NONE) return;
    if (c->step >= c->max_steps) {
        c->stop = STOP_MAX_STEPS;
        c->emu_stop(uc);
        return;
    }
    uint64_t rsp = read_one(c, c->rsp_index);
    if (rsp < c->stack_lo || rsp > c->stack_hi) {
        int continues = c->n_outside && c->outside[2 * (c->n_outside - 1)] == c->step - 1;
        if (!continues && c->outside_calls > 0) {
            c->outside_calls--;
            if (!call_void(c, "outside", "(L)", (long long)c->step)) return;
        }
        int jumped = !continues;
        if (continues) {
            uint64_t last = (uint64_t)c->outside[2 * (c->n_outside - 1) + 1];
            jumped = (rsp > last ? rsp - last : last - rsp) > c->switch_jump;
        }
        if (jumped && c->follow_budget > 0) {
            c->follow_budget--;
            c->follow_left = c->follow_steps;
        }
        if (c->follow_left > 0) {
            if (!grow((void **)&c->followed, &c->followed_cap, c->n_followed + 1,
                      3 * sizeof(int64_t))) {
                c->stop = STOP_CALLBACK;
                c->emu_stop(uc);
                return;
            }
            c->followed[3 * c->n_followed] = c->step;
            c->followed[3 * c->n_followed + 1] = (int64_t)address;
            c->followed[3 * c->n_followed + 2] = (int64_t)rsp;
            c->n_followed++;
            c->follow_left--;
        }
        if (!grow((void **)&c->outside, &c->outside_cap, c->n_outside + 1, 2 * sizeof(int64_t))) {
            c->stop = STOP_CALLBACK;
            c->emu_stop(uc);
            return;
        }
        c->outside[2 * c->n_outside] = c->step;
        c->outside[2 * c->n_outside + 1] = (int64_t)rsp;
        c->n_outside++;
    } else {
        c->follow_left = 0; /* back on the process stack: the switch is followed no further */
        if (rsp < c->lowest) c->lowest = rsp;
    }
    if (address == c->want) {
        if (!call_void(c, "returned", "(K)", (unsigned long long)rsp)) return;
    } else {
        for (int i = 0; i < c->n_watch; i++) {
            if (c->watch[i] == address) {
                if (!call_void(c, "entered", "(KK)", (unsigned long long)address,
                               (unsigned long long)rsp))
                    return;
                break;
            }
        }
    }
    if (address == c->previous_rip) {
        uint8_t code[2];
        if (c->mem_read(uc, address, code, 2) == 0 && code[0] == 0xEB && code[1] == 0xFE) {
            c->stop = STOP_SPIN;
            c->emu_stop(uc);
            return;
        }
    }
    c->previous_rip = address;
    c->step++;
    if ((c->step & SIGNAL_CHECK_MASK) == 0) periodic(c);
    apply_decision(c, address, size);
}

/* COUNT and DISCOVER: only writes into watched code pages matter. */
static void on_write_watch(void *uc, int access, uint64_t address, int size, int64_t value,
                           void *user) {
    Core *c = user;
    if (c->n_watched) written(c, address, size);
}

/* The one code hook: what it does is the mode's. */
static void on_code(void *uc, uint64_t address, uint32_t size, void *user) {
    Core *c = user;
    switch (c->mode) {
    case RECORD:
        on_code_record(uc, address, size, user);
        break;
    case DISCOVER:
        on_code_discover(uc, address, size, user);
        break;
    case COUNT:
        on_code_count(uc, address, size, user);
        break;
    default:
        break;
    }
}

/* The one write hook: recorded as an event while recording; in every mode, code
 * written over is decided again. */
static void on_write(void *uc, int access, uint64_t address, int size, int64_t value,
                     void *user) {
    Core *c = user;
    if (c->mode == RECORD) {
        on_memory_record(uc, access, address, size, value, user);
    } else if (c->mode != IDLE) {
        on_write_watch(uc, access, address, size, value, user);
    }
}

/* ---- the Python type ---------------------------------------------------------- */

static void core_detach(Core *c) {
    for (int i = 0; i < c->n_handles; i++) c->hook_del(c->uc, c->handles[i]);
    c->n_handles = 0;
    c->mode = IDLE;
}

static void core_dealloc(Core *c) {
    if (c->hooked && c->machine_uc != NULL && PyWeakref_GetObject(c->machine_uc) != Py_None) {
        core_detach(c);
        c->hook_del(c->uc, c->code_handle);
        c->hook_del(c->uc, c->write_handle);
    }
    c->n_handles = 0;
    c->hooked = 0;
    Py_XDECREF(c->machine_uc);
    for (size_t i = 0; i < c->pages_cap; i++) free(c->pages[i].kinds);
    free(c->pages);
    free(c->rows);
    free(c->events);
    free(c->outside);
    free(c->followed);
    free(c->aligned);
    Py_XDECREF(c->owner);
    Py_XDECREF(c->capstone);
    Py_XDECREF(c->error);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* Core(owner, uc, (reg_read_batch, emu_stop, mem_read, hook_add, hook_del),
 *      register ids, rcx index, rsp index, (HOOK_CODE, HOOK_MEM_WRITE, HOOK_MEM_READ_AFTER, MEM_WRITE),
 *      the Uc object (weakly: the core deletes its hooks when it goes, if unicorn is open)) */
static int core_init(Core *c, PyObject *args, PyObject *kwargs) {
    PyObject *owner, *ids, *machine_uc;
    unsigned long long uc, f_batch, f_stop, f_read, f_add, f_del;
    if (c->hooked) {
        PyErr_SetString(PyExc_RuntimeError, "Core is initialised once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OK(KKKKK)Oii(iiii)O", &owner, &uc, &f_batch, &f_stop, &f_read,
                          &f_add, &f_del, &ids, &c->rcx_index, &c->rsp_index, &c->hook_code,
                          &c->hook_mem_write, &c->hook_mem_read_after, &c->mem_write,
                          &machine_uc))
        return -1;
    PyObject *seq = PySequence_Fast(ids, "register ids must be a sequence");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_REGS || c->rcx_index >= n || c->rsp_index >= n) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "bad register list");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        c->reg_ids[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        c->pointers[i] = &c->values[i];
    }
    Py_DECREF(seq);
    if (PyErr_Occurred()) return -1;
    c->n_regs = (int)n;
    c->row_bytes = 8 * (size_t)n;
    c->uc = (void *)(uintptr_t)uc;
    c->reg_read_batch = (reg_read_batch_fn)(uintptr_t)f_batch;
    c->emu_stop = (emu_stop_fn)(uintptr_t)f_stop;
    c->mem_read = (mem_read_fn)(uintptr_t)f_read;
    c->hook_add = (hook_add_fn)(uintptr_t)f_add;
    c->hook_del = (hook_del_fn)(uintptr_t)f_del;
    Py_INCREF(owner);
    Py_XSETREF(c->owner, owner);
    PyObject *weak = PyWeakref_NewRef(machine_uc, NULL);
    if (weak == NULL) return -1;
    Py_XSETREF(c->machine_uc, weak);
    c->previous_rip = NO_ADDRESS;
    c->pending_at = NO_ADDRESS;
    c->last_page = NO_ADDRESS;
    c->want = NO_ADDRESS;
    c->mode = IDLE;
    /* Before any code is translated: every block then calls the two hooks. */
    size_t code_handle = 0, write_handle = 0;
    int status = c->hook_add(c->uc, &code_handle, c->hook_code, (void *)on_code, c, (uint64_t)1,
                             (uint64_t)0);
    if (status == 0) {
        status = c->hook_add(c->uc, &write_handle, c->hook_mem_write, (void *)on_write, c,
                             (uint64_t)1, (uint64_t)0);
        if (status != 0) c->hook_del(c->uc, code_handle);
    }
    if (status != 0) {
        PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed: %d", status);
        return -1;
    }
    c->code_handle = code_handle;
    c->write_handle = write_handle;
    c->hooked = 1;
    return 0;
}

static int add_hook(Core *c, int type, void *callback) {
    size_t handle = 0;
    int status = c->hook_add(c->uc, &handle, type, callback, c, (uint64_t)1, (uint64_t)0);
    if (status != 0) {
        PyErr_Format(PyExc_RuntimeError, "uc_hook_add failed: %d", status);
        return 0;
    }
    c->handles[c->n_handles++] = handle;
    return 1;
}

/* The recording's memory reads (its writes come through on_write). */
static void on_read_record(void *uc, int access, uint64_t address, int size, int64_t value,
                           void *user) {
    Core *c = user;
    add_event(c, c->step - 1, access, (int64_t)address, size, value);
}

static void reset_run(Core *c, int mode) {
    core_detach(c);
    c->mode = mode;
    c->step = 0;
    c->previous_rip = NO_ADDRESS;
    c->stop = STOP_NONE;
    c->n_rows = 0;
    c->n_events = 0;
    c->n_outside = 0;
    c->n_followed = 0;
    c->follow_left = 0;
    c->have_last_row = 0;
    c->chunk_start = 0;
}

/* attach_count(): hooks for a fast-forward. */
static PyObject *core_attach_count(Core *c, PyObject *noargs) {
    reset_run(c, COUNT);
    Py_RETURN_NONE;
}

/* attach_record(max_steps, chunk_rows) */
static PyObject *core_attach_record(Core *c, PyObject *args) {
    long long max_steps, chunk_rows;
    if (!PyArg_ParseTuple(args, "LL", &max_steps, &chunk_rows)) return NULL;
    reset_run(c, RECORD);
    c->max_steps = max_steps;
    c->chunk_rows = chunk_rows;
    c->next_check = chunk_rows < max_steps ? chunk_rows : max_steps;
    /* A chunk holds at most next_check rows (the first) or chunk_rows (later ones). */
    size_t cap = (size_t)(c->next_check > 0 ? c->next_check : 1);
    if (cap > (size_t)chunk_rows && chunk_rows > 0) cap = (size_t)chunk_rows;
    if (cap != c->rows_cap) {
        free(c->rows);
        c->rows = malloc(cap * (size_t)c->n_regs * 8);
        c->rows_cap = c->rows ? cap : 0;
        if (c->rows == NULL) return PyErr_NoMemory();
    }
    if (!add_hook(c, c->hook_mem_read_after, (void *)on_read_record)) {
        c->mode = IDLE;
        return NULL;
    }
    Py_RETURN_NONE;
}

/* attach_discover(max_steps, stack_lo, stack_hi, watch addresses, outside calls,
 *                 switches followed, steps followed after each, switch jump) */
static PyObject *core_attach_discover(Core *c, PyObject *args) {
    long long max_steps, outside_calls, follow_budget, follow_steps;
    unsigned long long lo, hi, switch_jump;
    PyObject *watch;
    if (!PyArg_ParseTuple(args, "LKKOLLLK", &max_steps, &lo, &hi, &watch, &outside_calls,
                          &follow_budget, &follow_steps, &switch_jump))
        return NULL;
    PyObject *seq = PySequence_Fast(watch, "watch addresses must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_WATCH) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many watch addresses");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        c->watch[i] = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
    Py_DECREF(seq);
    if (PyErr_Occurred()) return NULL;
    reset_run(c, DISCOVER);
    c->n_watch = (int)n;
    c->max_steps = max_steps;
    c->stack_lo = lo;
    c->stack_hi = hi;
    c->lowest = hi;
    c->want = NO_ADDRESS;
    c->outside_calls = outside_calls;
    c->follow_budget = follow_budget;
    c->follow_steps = follow_steps;
    c->switch_jump = switch_jump;
    Py_RETURN_NONE;
}

static PyObject *core_detach_method(Core *c, PyObject *noargs) {
    core_detach(c);
    Py_RETURN_NONE;
}

/* After emu_start: raise what a callback raised, if anything. */
static PyObject *core_raise_error(Core *c, PyObject *noargs) {
    if (c->error == NULL) Py_RETURN_NONE;
    PyObject *error = c->error;
    c->error = NULL;
    PyObject *type = PyTuple_GET_ITEM(error, 0), *value = PyTuple_GET_ITEM(error, 1),
             *tb = PyTuple_GET_ITEM(error, 2);
    Py_INCREF(type);
    Py_INCREF(value);
    Py_INCREF(tb);
    Py_DECREF(error);
    PyErr_Restore(type, value == Py_None ? NULL : value, tb == Py_None ? NULL : tb);
    if (value == Py_None) Py_DECREF(value);
    if (tb == Py_None) Py_DECREF(tb);
    return NULL;
}

/* take_chunk() -> (first step, register rows, events): what is left after the run. */
static PyObject *core_take_chunk(Core *c, PyObject *noargs) {
    /* PyBytes_FromStringAndSize(NULL, 0) is b"" (a buffer never grown is NULL). */
    PyObject *rows = c->n_rows ? take_rows(c) : PyBytes_FromStringAndSize(NULL, 0);
    PyObject *events =
        PyBytes_FromStringAndSize((char *)c->events, (Py_ssize_t)(c->n_events * 5 * 8));
    PyObject *result = NULL;
    if (rows != NULL && events != NULL)
        result = Py_BuildValue("(LOO)", (long long)c->chunk_start, rows, events);
    Py_XDECREF(rows);
    Py_XDECREF(events);
    if (c->n_rows) keep_last_row(c);
    c->n_rows = 0;
    c->n_events = 0;
    c->chunk_start = c->step;
    return result;
}

/* take_outside() -> bytes of (step int64, rsp uint64) pairs. */
static PyObject *core_take_outside(Core *c, PyObject *noargs) {
    PyObject *result = PyBytes_FromStringAndSize((char *)c->outside,
                                                 (Py_ssize_t)(c->n_outside * 16));
    c->n_outside = 0;
    return result;
}

/* take_followed() -> bytes of (step int64, rip uint64, rsp uint64) triples: the steps
 * after switches. */
static PyObject *core_take_followed(Core *c, PyObject *noargs) {
    PyObject *result = PyBytes_FromStringAndSize((char *)c->followed,
                                                 (Py_ssize_t)(c->n_followed * 24));
    c->n_followed = 0;
    return result;
}

/* add_event(step, access, address, size, value): a write the kernel made. */
static PyObject *core_add_event(Core *c, PyObject *args) {
    long long step, access, address, size, value;
    if (!PyArg_ParseTuple(args, "LLLLL", &step, &access, &address, &size, &value)) return NULL;
    add_event(c, step, access, address, size, value);
    Py_RETURN_NONE;
}

/* drop_writes(step): a refused write reached the hook before the fault: it never happened. */
static PyObject *core_drop_writes(Core *c, PyObject *args) {
    long long step;
    if (!PyArg_ParseTuple(args, "L", &step)) return NULL;
    while (c->n_events > 0) {
        int64_t *e = c->events + 5 * (c->n_events - 1);
        if (e[0] != step || e[1] != c->mem_write) break;
        c->n_events--;
    }
    Py_RETURN_NONE;
}

/* settle(address): the emulation stopped before the instruction at `address` (a thread's
 * slice ended): give a fixed-value instruction's answer now, before the CPU is put away. */
static PyObject *core_settle(Core *c, PyObject *args) {
    unsigned long long address;
    if (!PyArg_ParseTuple(args, "K", &address)) return NULL;
    answer_pending(c, address);
    return core_raise_error(c, NULL);
}

/* forget(address, size): code there may have changed (a kernel write, mprotect, munmap). */
static PyObject *core_forget(Core *c, PyObject *args) {
    unsigned long long address, size;
    if (!PyArg_ParseTuple(args, "KK", &address, &size)) return NULL;
    forget_range(c, address, size);
    Py_RETURN_NONE;
}

/* use_capstone(capstone): decide in C what Python would decide NORMAL (cap_needs_python). */
static PyObject *core_use_capstone(Core *c, PyObject *args) {
    PyObject *capstone;
    if (!PyArg_ParseTuple(args, "O!", &CapstoneType, &capstone)) return NULL;
    Py_INCREF(capstone);
    Py_XSETREF(c->capstone, capstone);
    Py_RETURN_NONE;
}

/* rewound(): the machine was put back where an earlier run started (Machine.rewind):
 * no fixed-value answer is pending from the run it undid. */
static PyObject *core_rewound(Core *c, PyObject *noargs) {
    c->pending_at = NO_ADDRESS;
    c->previous_rip = NO_ADDRESS;
    Py_RETURN_NONE;
}

static PyObject *get_step(Core *c, void *closure) { return PyLong_FromLongLong(c->step); }
static PyObject *get_pending(Core *c, void *closure) {
    return PyBool_FromLong(c->pending_at != NO_ADDRESS);
}
static PyObject *get_watching(Core *c, void *closure) { return PyBool_FromLong(c->n_watched > 0); }
static PyObject *get_previous_rip(Core *c, void *closure) {
    return c->previous_rip == NO_ADDRESS ? PyLong_FromLong(-1)
                                         : PyLong_FromUnsignedLongLong(c->previous_rip);
}
static int set_previous_rip(Core *c, PyObject *value, void *closure) {
    long long rip = PyLong_AsLongLong(value);
    if (rip == -1 && PyErr_Occurred()) return -1;
    c->previous_rip = rip < 0 ? NO_ADDRESS : (uint64_t)rip;
    return 0;
}
static PyObject *get_stop(Core *c, void *closure) { return PyLong_FromLong(c->stop); }
static PyObject *get_tick(Core *c, void *closure) { return PyBool_FromLong(c->tick); }
static int set_tick(Core *c, PyObject *value, void *closure) {
    int tick = PyObject_IsTrue(value);
    if (tick < 0) return -1;
    c->tick = tick;
    return 0;
}
static PyObject *get_lowest(Core *c, void *closure) {
    return PyLong_FromUnsignedLongLong(c->lowest);
}
static PyObject *get_want(Core *c, void *closure) {
    return c->want == NO_ADDRESS ? PyLong_FromLong(-1) : PyLong_FromUnsignedLongLong(c->want);
}
static int set_want(Core *c, PyObject *value, void *closure) {
    long long want = PyLong_AsLongLong(value);
    if (want == -1 && PyErr_Occurred()) return -1;
    c->want = want < 0 ? NO_ADDRESS : (uint64_t)want;
    return 0;
}

static PyGetSetDef core_getset[] = {
    {"step", (getter)get_step, NULL, "steps counted so far", NULL},
    {"pending", (getter)get_pending, NULL, "a fixed-value answer is still to be given", NULL},
    {"watching", (getter)get_watching, NULL, "whether a page holds decided code", NULL},
    {"previous_rip", (getter)get_previous_rip, (setter)set_previous_rip,
     "the last counted address, -1: none (set when another thread's CPU is put in)", NULL},
    {"stop", (getter)get_stop, NULL, "0 running, 1 max steps, 2 spin, 3 stopped by Python", NULL},
    {"tick", (getter)get_tick, (setter)set_tick, "call owner.tick(steps) every 2**20 steps", NULL},
    {"lowest", (getter)get_lowest, NULL, "lowest rsp inside the main stack (discovery)", NULL},
    {"want", (getter)get_want, (setter)set_want, "return address awaited (discovery)", NULL},
    {NULL},
};

static PyMethodDef core_methods[] = {
    {"attach_count", (PyCFunction)core_attach_count, METH_NOARGS, NULL},
    {"attach_record", (PyCFunction)core_attach_record, METH_VARARGS, NULL},
    {"attach_discover", (PyCFunction)core_attach_discover, METH_VARARGS, NULL},
    {"detach", (PyCFunction)core_detach_method, METH_NOARGS, NULL},
    {"raise_error", (PyCFunction)core_raise_error, METH_NOARGS, NULL},
    {"take_chunk", (PyCFunction)core_take_chunk, METH_NOARGS, NULL},
    {"take_outside", (PyCFunction)core_take_outside, METH_NOARGS, NULL},
    {"take_followed", (PyCFunction)core_take_followed, METH_NOARGS, NULL},
    {"add_event", (PyCFunction)core_add_event, METH_VARARGS, NULL},
    {"drop_writes", (PyCFunction)core_drop_writes, METH_VARARGS, NULL},
    {"forget", (PyCFunction)core_forget, METH_VARARGS, NULL},
    {"settle", (PyCFunction)core_settle, METH_VARARGS, NULL},
    {"use_capstone", (PyCFunction)core_use_capstone, METH_VARARGS, NULL},
    {"rewound", (PyCFunction)core_rewound, METH_NOARGS, NULL},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stacktrace_lab.record.core._core.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
    .tp_doc = "unicorn hooks in C for one machine (record/core/hooks.py)",
};

/* ---- stack snapshots (record/core/columns.py, SnapshotState.column) ------------------- */

/* snapshot_rows(state, base, n_rows, rows, addrs, starts, ends, data, out)
 *
 * Fills `out` (n_rows * the window's size, writable: an Arrow buffer, whose
 * pool reuses memory where fresh bytes objects would fault in new pages)
 * with the window before each of `n_rows` rows: row r shows `state` after every
 * write of a row before r. The writes (int64 rows, uint64 addresses, int64
 * start and end offsets into `data`) are those that touch the window, in
 * order; they are applied to `state` (a bytearray the size of the window,
 * left as after the last one, for the next chunk). Runs without the GIL. */
static PyObject *snapshot_rows(PyObject *module, PyObject *args) {
    Py_buffer state, rows, addrs, starts, ends, data, out;
    unsigned long long base;
    Py_ssize_t n_rows;
    if (!PyArg_ParseTuple(args, "w*Kny*y*y*y*y*w*", &state, &base, &n_rows, &rows, &addrs,
                          &starts, &ends, &data, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t size = state.len, n = rows.len / 8;
    if (addrs.len / 8 != n || starts.len / 8 != n || ends.len / 8 != n || n_rows < 0 ||
        out.len < n_rows * size) {
        PyErr_SetString(PyExc_ValueError, "snapshot_rows: arrays of different lengths");
        goto done;
    }
    uint8_t *window = state.buf, *target = out.buf;
    const int64_t *row = rows.buf, *start = starts.buf, *end = ends.buf;
    const uint64_t *addr = addrs.buf;
    const uint8_t *bytes = data.buf;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t j = 0;
    for (Py_ssize_t r = 0; r <= n_rows; r++) {
        for (; j < n && (r == n_rows || row[j] < r); j++) {
            int64_t first = (int64_t)(addr[j] - base), from = start[j], to = end[j];
            int64_t last = first + (to - from);
            if (first < 0) {
                from -= first;
                first = 0;
            }
            if (last > size) {
                to -= last - size;
                last = size;
            }
            if (last > first && to <= data.len) memcpy(window + first, bytes + from, to - from);
        }
        if (r < n_rows) memcpy(target + r * size, window, size);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&state);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

/* ---- stack snapshots as a dictionary (trace format 5) ----------------------------- */

/* The hash of a version of a window is the sum of a mix of each 8-byte word
 * with its position, so a write changes it by its own words only: a step
 * that writes 8 bytes re-hashes 8 bytes, not the whole window. */
static inline uint64_t word_mix(uint64_t word, size_t position) {
    uint64_t z = word + 0x9E3779B97F4A7C15ull * (position + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Word `w` of a window of `size` bytes (the last one zero-padded). */
static inline uint64_t window_word(const uint8_t *window, Py_ssize_t size, size_t w) {
    uint64_t word = 0;
    size_t at = w * 8, left = (size_t)size - at;
    memcpy(&word, window + at, left < 8 ? left : 8);
    return word;
}

/* The summed mix of words first_word ..= last_word. */
static uint64_t words_hash(const uint8_t *window, Py_ssize_t size, size_t first_word,
                           size_t last_word) {
    uint64_t h = 0;
    for (size_t w = first_word; w <= last_word; w++) h += word_mix(window_word(window, size, w), w);
    return h;
}

/* The distinct versions of a window so far, in order of first appearance. */
typedef struct {
    uint8_t *versions; /* count * size bytes */
    size_t count, cap;
    int32_t *slots; /* open addressing: index into versions, -1 empty */
    uint64_t *hashes;
    size_t n_slots;
} VersionSet;

static int versions_rehash(VersionSet *set, size_t n_slots) {
    int32_t *slots = malloc(n_slots * sizeof(int32_t));
    uint64_t *hashes = malloc(n_slots * sizeof(uint64_t));
    if (slots == NULL || hashes == NULL) {
        free(slots);
        free(hashes);
        return 0;
    }
    for (size_t i = 0; i < n_slots; i++) slots[i] = -1;
    for (size_t i = 0; i < set->n_slots; i++) {
        if (set->slots[i] < 0) continue;
        size_t at = set->hashes[i] & (n_slots - 1);
        while (slots[at] >= 0) at = (at + 1) & (n_slots - 1);
        slots[at] = set->slots[i];
        hashes[at] = set->hashes[i];
    }
    free(set->slots);
    free(set->hashes);
    set->slots = slots;
    set->hashes = hashes;
    set->n_slots = n_slots;
    return 1;
}

/* The index of `window` among the versions, added if new; -1 when out of memory. */
static int32_t version_index(VersionSet *set, const uint8_t *window, Py_ssize_t size, uint64_t h) {
    if ((set->count + 1) * 2 > set->n_slots &&
        !versions_rehash(set, set->n_slots ? set->n_slots * 2 : 1024))
        return -1;
    size_t at = h & (set->n_slots - 1);
    for (; set->slots[at] >= 0; at = (at + 1) & (set->n_slots - 1)) {
        int32_t known = set->slots[at];
        if (set->hashes[at] == h && memcmp(set->versions + (size_t)known * size, window, size) == 0)
            return known;
    }
    if (!grow((void **)&set->versions, &set->cap, set->count + 1, (size_t)size)) return -1;
    memcpy(set->versions + set->count * size, window, size);
    set->slots[at] = (int32_t)set->count;
    set->hashes[at] = h;
    return (int32_t)set->count++;
}

/* snapshot_dictionary(state, base, n_rows, rows, addrs, starts, ends, data, indices) -> bytes
 *
 * The same rows as snapshot_rows, as a dictionary: `indices` (n_rows int32,
 * writable) gets each row's index into the returned bytes, the distinct
 * versions of the window (each the window's size) in the order rows first
 * show them. Parquet writes such a column as it is, where a dense one has
 * every row's bytes hashed again (0.1 CPU s per million rows and stack), and
 * no row's bytes are copied. Runs without the GIL. */
static PyObject *snapshot_dictionary(PyObject *module, PyObject *args) {
    Py_buffer state, rows, addrs, starts, ends, data, out;
    unsigned long long base;
    Py_ssize_t n_rows;
    if (!PyArg_ParseTuple(args, "w*Kny*y*y*y*y*w*", &state, &base, &n_rows, &rows, &addrs,
                          &starts, &ends, &data, &out))
        return NULL;
    PyObject *result = NULL;
    VersionSet set = {0};
    Py_ssize_t size = state.len, n = rows.len / 8;
    if (addrs.len / 8 != n || starts.len / 8 != n || ends.len / 8 != n || n_rows < 0 ||
        out.len < n_rows * 4 || size == 0) {
        PyErr_SetString(PyExc_ValueError, "snapshot_dictionary: arrays of different lengths");
        goto done;
    }
    uint8_t *window = state.buf;
    int32_t *indices = out.buf;
    const int64_t *row = rows.buf, *start = starts.buf, *end = ends.buf;
    const uint64_t *addr = addrs.buf;
    const uint8_t *bytes = data.buf;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t j = 0;
    int32_t current = -1;
    size_t last_word = ((size_t)size - 1) / 8;
    uint64_t hash = words_hash(window, size, 0, last_word);
    for (Py_ssize_t r = 0; r <= n_rows && !failed; r++) {
        int changed = 0;
        for (; j < n && (r == n_rows || row[j] < r); j++) {
            int64_t first = (int64_t)(addr[j] - base), from = start[j], to = end[j];
            int64_t last = first + (to - from);
            if (first < 0) {
                from -= first;
                first = 0;
            }
            if (last > size) {
                to -= last - size;
                last = size;
            }
            if (last > first && to <= data.len) {
                size_t w0 = (size_t)first / 8, w1 = (size_t)(last - 1) / 8;
                hash -= words_hash(window, size, w0, w1);
                memcpy(window + first, bytes + from, to - from);
                hash += words_hash(window, size, w0, w1);
                changed = 1;
            }
        }
        if (r == n_rows) break;
        if (changed || current < 0) {
            current = version_index(&set, window, size, hash);
            if (current < 0) failed = 1;
        }
        indices[r] = current;
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyBytes_FromStringAndSize((const char *)set.versions, (Py_ssize_t)(set.count * size));
done:
    free(set.versions);
    free(set.slots);
    free(set.hashes);
    PyBuffer_Release(&state);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

/* distinct_u64(values, inverse) -> bytes
 *
 * The distinct values of `values` (uint64) in the order they first appear, as
 * bytes of uint64; `inverse` (one int32 per value, writable) gets each value's
 * index among them. What `pyarrow.compute.dictionary_encode` gives, by one
 * open-addressing hash, without importing pyarrow.compute (0.05 CPU s of a
 * `record` of a compiled program) nor sorting (np.unique). Runs without the GIL. */
static PyObject *distinct_u64(PyObject *module, PyObject *args) {
    Py_buffer values, out;
    if (!PyArg_ParseTuple(args, "y*w*", &values, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = values.len / 8;
    uint64_t *seen = NULL;
    int32_t *slots = NULL;
    size_t n_slots = 16;
    while (n_slots < (size_t)n * 2) n_slots <<= 1;
    if (out.len < n * 4) {
        PyErr_SetString(PyExc_ValueError, "distinct_u64: inverse shorter than values");
        goto done;
    }
    seen = malloc((size_t)(n ? n : 1) * 8);
    slots = malloc(n_slots * sizeof(int32_t));
    if (seen == NULL || slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(slots, 0xff, n_slots * sizeof(int32_t));
    const uint64_t *value = values.buf;
    int32_t *inverse = out.buf;
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v = value[i];
        size_t at = (size_t)((v * 0x9E3779B97F4A7C15ull) >> 17) & (n_slots - 1);
        while (slots[at] >= 0 && seen[slots[at]] != v) at = (at + 1) & (n_slots - 1);
        if (slots[at] < 0) {
            slots[at] = (int32_t)count;
            seen[count++] = v;
        }
        inverse[i] = slots[at];
    }
    Py_END_ALLOW_THREADS
    result = PyBytes_FromStringAndSize((const char *)seen, count * 8);
done:
    free(seen);
    free(slots);
    PyBuffer_Release(&values);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef module_methods[] = {
    {"snapshot_rows", snapshot_rows, METH_VARARGS, NULL},
    {"snapshot_dictionary", snapshot_dictionary, METH_VARARGS, NULL},
    {"distinct_u64", distinct_u64, METH_VARARGS, NULL},
    {NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", "The recording core in C (record/core/hooks.py).", -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&CapstoneType) < 0) return NULL;
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL) return NULL;
    Py_INCREF(&CoreType);
    if (PyModule_AddObject(module, "Core", (PyObject *)&CoreType) < 0) {
        Py_DECREF(&CoreType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&CapstoneType);
    if (PyModule_AddObject(module, "Capstone", (PyObject *)&CapstoneType) < 0) {
        Py_DECREF(&CapstoneType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
