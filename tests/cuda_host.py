"""A host emulator for the generated CUDA kernels: compile a kernel source with g++ and launch
its ``extern "C" __global__`` kernels on the CPU with CUDA's execution model.

Building
    :func:`build` takes a CUDA source (``templates.program_source(...)``: the header and one
    program's namespace) and the kernels to expose with their parameter lists
    (``templates.kernel_params``), and compiles, as ONE translation unit::

        SHIM              the CUDA features the kernels use, as host C++ (below)
        source            with ``extern __shared__ ... name[];`` rewritten to a pointer to the
                          launch's dynamic shared memory (the only textual change)
        launchers         per kernel ``gl_emu_launch__<name>(grid, block, shared_mem, order,
                          args, err, errlen)``: unpacks ``args`` (an array of pointers to the
                          argument values, as cuLaunchKernel takes them) by the declared C
                          types and runs the kernel in every thread of the grid

    with ``__CUDACC__`` defined (by the shim) and an include folder whose ``cuda_fp16.h`` and
    ``cuda_bf16.h`` are empty: the shim's own ``__half`` and ``__nv_bfloat16`` are 16-bit
    storage structs with CUDA's round-to-nearest-even conversions (NaN becomes CUDA's canonical
    0x7fff). ``__forceinline__`` device functions become ordinary functions (one translation
    unit needs no ``inline``, and the static ``__shared__`` variables of inline functions would
    sit in COMDAT groups, which cannot share a section with the others). Libraries are cached
    on disk, keyed by a hash of the complete translation unit, the compiler and its flags
    (``GPULOSS_CACHE_DIR`` or the temp folder, never the repository); a file lock per key lets
    concurrent test processes share one build. :func:`build_many` builds batches: sources that
    begin with the same text (the generator's header) become one translation unit with that
    text once (a build costs 0.7 s for the shim and the header, most of it C++'s <cmath>, plus
    0.3 s per program), several batches at a time.

Threads
    The threads of a block are cooperative fibers on ONE OS thread: each gets a stack
    (128 KiB, with an inaccessible guard page below it) and a ``ucontext`` made by
    ``makecontext``; the first entry is a ``setcontext``, every later switch
    ``_setjmp``/``_longjmp`` (measured here: a ``swapcontext`` round trip costs 700 ns, as it
    changes the signal mask with a system call each way, a ``_longjmp`` round trip 27 ns;
    a reduced call switches a few hundred thousand times). The scheduler resumes the runnable
    fibers in thread order, round-robin, until each has exited; blocks run one after another
    in ``blockIdx`` order (or in a given permutation, to show that a result does not depend
    on which block finishes last). Everything is deterministic.

Barriers
    ``__syncthreads()`` waits for ALL threads of the block; the last one to arrive releases the
    others. A thread that has exited never arrives, so a barrier that it was needed for never
    completes: when no fiber is runnable and some have not exited, the launch fails with a
    deadlock report (who waits where) instead of hanging.

Warp shuffles
    ``__shfl_xor_sync``, ``__shfl_down_sync``, ``__shfl_up_sync`` and ``__shfl_sync`` exchange
    between exactly the lanes named in the mask, whatever the other lanes of the warp do (a warp
    whose groups of G lanes work on different rows reaches its shuffles at different times):
    each lane posts its value and waits until every lane of the mask has posted one with the
    same mask; the last to arrive computes every participant's result. Source lanes follow the
    PTX ``shfl.sync`` definition (``c = ((32 - width) << 8) | 31``; ``| 0`` for up): within a
    width segment, reads from later segments return the caller's own value. Errors, not
    silence: a mask that does not name the calling lane, a width that is not a power of two,
    reading a lane outside the mask, and lanes of one mask meeting at shuffles of different
    modes or operand sizes (PTX lets the lanes of a mask meet at different ``shfl.sync``
    instructions of one mode, and the width is each lane's own operand).

Memory
    Global memory is host memory. The dynamic shared memory of a launch is ``shared_mem``
    bytes, refilled with 0xFF bytes (NaN in every float format) before each block, with an
    inaccessible page right after it (and a launch with ``shared_mem = 0`` gets a pointer
    into an inaccessible page). Static ``__shared__`` variables are function-local statics
    in one linker section, also refilled with 0xFF before each block: blocks run one after
    another, so one copy serves as every block's shared memory, and nothing a block leaves
    there reaches the next as a plausible value. A segmentation fault or bus error during a
    launch (guard pages, a wild pointer) fails the launch with the address, the block and the
    thread, as CUDA reports an illegal memory access; it does not kill the process.
    ``atomicAdd`` is a plain read-modify-write; ``__threadfence``, ``__ldg`` and ``__ldcg``
    are plain accesses.

What is NOT modelled
    Memory ordering and visibility between blocks (they never run at the same time, so a
    missing ``__threadfence`` or a race between blocks cannot show; only the order in which
    blocks finish can be changed), real concurrency within a block (a data race between
    threads of a block gives the round-robin order's result, not garbage), warp divergence and
    its timing (an independent-thread-scheduling GPU may interleave lanes differently; code
    that is only correct for one interleaving is not caught), the limits of registers and
    shared memory (the fake CuPy of ``fake_cupy.py`` checks the 48 KiB of shared memory per
    block, with NVRTC's figure for the static part), ``__launch_bounds__`` (ignored; blocks
    are limited to 1024 threads),
    the y and z dimensions of grids and blocks, and the GPU's floating point: the host's libm
    in place of CUDA's math library, and no FMA contraction (NVRTC contracts ``a * b + c`` by
    default), so results agree with a GPU's to rounding, not to the bit.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

__all__ = ["CXX", "CompileError", "LaunchError", "Library", "Kernel", "build", "build_many", "compile_shared",
           "work_dir", "locked", "EMULATOR_FLAGS", "STACK_BYTES", "generated_programs", "column_variants",
           "program_kernels", "kernels_of_source"]

CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")

#: -O1: the kernels' own arithmetic is a small part of an emulated launch (the fiber switches
#: are most of it), and -O1 compiles a program's library in about half the time of -O2.
#: No FMA contraction and no fast-math: IEEE operations as written, as the CPU backend does.
EMULATOR_FLAGS = ("-std=c++20", "-O1", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-w")

#: bytes of stack per emulated thread (the kernels' frames are a few KiB at -O1)
STACK_BYTES = 128 * 1024


class CompileError(RuntimeError):
    """The host compiler rejected a source; ``log`` holds its messages."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + ("\n" + log if log else ""))
        self.log = log


class LaunchError(RuntimeError):
    """An emulated launch failed: a deadlock, a shuffle CUDA leaves undefined, an illegal
    memory access, an invalid configuration."""


# ---- building shared libraries ---------------------------------------------------------------

def work_dir(subdir: str) -> Path:
    """A cache folder for built test libraries, keyed by content, outside the repository: the
    test processes of one run (xdist workers) and later runs share them."""
    root = os.environ.get("GPULOSS_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"gpuloss-{os.getuid()}" if hasattr(os, "getuid") else "gpuloss")
    d = Path(root) / subdir
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive file lock (two processes wanting the same build: one builds, one waits)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, at worst a duplicate build
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def compile_shared(source: str, tag: str, flags: Sequence[str], subdir: str,
                   include_dirs: Sequence[Path] = ()) -> Path:
    """The shared library built from ``source`` with ``flags`` (cached by content); raises
    :class:`CompileError` with the compiler's messages."""
    if CXX is None:
        raise CompileError("no host C++ compiler (set CXX or install g++)")
    includes = [f"-I{d}" for d in include_dirs]
    key = hashlib.sha256((source + str(CXX) + " ".join(flags) + " ".join(includes)).encode()).hexdigest()[:16]
    d = work_dir(subdir)
    so = d / f"{tag}-{key}.so"
    if so.exists():
        return so
    with locked(d / f"{tag}-{key}.lock"):
        if not so.exists():
            cpp = d / f"{tag}-{key}.{os.getpid()}.{threading.get_ident()}.cpp"
            tmp = cpp.with_suffix(".so")
            cpp.write_text(source)
            try:
                proc = subprocess.run([CXX, *flags, *includes, str(cpp), "-o", str(tmp)],
                                      capture_output=True, text=True)
            finally:
                cpp.unlink()
            if proc.returncode != 0:
                raise CompileError(f"host C++ compile of {tag} failed", proc.stderr[:20000])
            os.replace(tmp, so)  # atomic: a reader sees no library or a whole one
    return so


def _stub_include_dir() -> Path:
    """``cuda_fp16.h`` and ``cuda_bf16.h`` that declare nothing: the shim defines the types."""
    d = work_dir("cuda-emulator") / "stub-include"
    d.mkdir(exist_ok=True)
    for name in ("cuda_fp16.h", "cuda_bf16.h"):
        f = d / name
        if not f.exists():
            f.write_text("// empty: tests/cuda_host.py's shim defines __half and __nv_bfloat16\n")
    return d


# ---- the emulation shim ----------------------------------------------------------------------

SHIM = r"""
// ---- CUDA features as host C++: the emulator of tests/cuda_host.py (see its docstring) -------
#undef _FORTIFY_SOURCE  // its checked longjmp rejects jumps between fiber stacks
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define __CUDACC__ 1
#define __global__
#define __device__
#define __host__
// not `inline`: the module is one translation unit, and the static __shared__ variables of
// inline functions would sit in COMDAT groups, which cannot share a section with the others
#define __forceinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// static shared memory: one copy (blocks run one after another), in a section the launcher
// can refill between blocks
#define __shared__ static __attribute__((section("gl_emu_shared")))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct __attribute__((aligned(16))) uint4 { unsigned int x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned int x, y; };

// ---- 16-bit floats: storage only, CUDA's conversions (round to nearest even) ----------------
struct __attribute__((aligned(2))) __half { unsigned short x; };
struct __attribute__((aligned(2))) __nv_bfloat16 { unsigned short x; };

static inline float gl_emu_bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t gl_emu_float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

inline float __half2float(__half h) {
    const uint32_t sign = (uint32_t)(h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu;
    if (e == 0x1fu) return gl_emu_bits_float(sign | 0x7f800000u | (m << 13));  // inf, NaN
    if (e != 0) return gl_emu_bits_float(sign | ((e + 112u) << 23) | (m << 13));  // rebias 15 -> 127
    const float sub = (float)m * 5.9604644775390625e-08f;  // subnormal: m * 2^-24, exact
    return sign ? -sub : sub;
}
inline __half __float2half(float f) {
    const uint32_t x = gl_emu_float_bits(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    __half h;
    if (a > 0x7f800000u) { h.x = 0x7fffu; return h; }               // NaN (CUDA's canonical NaN)
    if (a >= 0x477ff000u) { h.x = (unsigned short)(sign | 0x7c00u); return h; }  // >= 65520: inf
    uint32_t q, rem, half;
    if (a >= 0x38800000u) {                                        // a normal half
        const uint32_t m = a - 0x38000000u;                        // exponent rebias 127 -> 15
        q = m >> 13; rem = m & 0x1fffu; half = 0x1000u;
    } else if (a <= 0x33000000u) {                                 // <= 2^-25: +-0 (tie to even)
        h.x = (unsigned short)sign; return h;
    } else {                                                       // a subnormal half: units of 2^-24
        const uint32_t shift = 126u - (a >> 23), m = (a & 0x7fffffu) | 0x800000u;
        q = m >> shift; rem = m & ((1u << shift) - 1u); half = 1u << (shift - 1u);
    }
    q += (rem > half) || (rem == half && (q & 1u));                 // a carry moves into the exponent
    h.x = (unsigned short)(sign | q);
    return h;
}
inline float __bfloat162float(__nv_bfloat16 b) { return gl_emu_bits_float((uint32_t)b.x << 16); }
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u = gl_emu_float_bits(f);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) { b.x = 0x7fffu; return b; }  // NaN (CUDA's canonical NaN)
    u += 0x7fffu + ((u >> 16) & 1u);
    b.x = (unsigned short)(u >> 16);
    return b;
}

// ---- the scheduler ----------------------------------------------------------------------------
namespace gl_emu {

enum { RUNNABLE = 0, AT_SYNCTHREADS = 1, AT_SHUFFLE = 2, EXITED = 3 };
enum { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_XOR = 3 };
static const char* const SHFL_NAMES[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};

struct Fiber {
    jmp_buf ctx;
    ucontext_t start;
    bool started;
    int state;
    uint3 idx;
};
struct Lane {  // one thread's side of a warp shuffle
    bool waiting;
    unsigned mask;
    int mode, b, width, size;
    uint64_t value, result;
};
struct Launch {
    void (*body)(void*);
    void* ctx;
    unsigned nthreads;
    Fiber* fibers;
    Lane* lanes;
    unsigned waiting_lanes[32];  // per warp: the lanes waiting at a shuffle (one bit each)
    unsigned sync_arrived, sync_generation;
    bool failed;
    char* err;
    int errlen;
};

static Launch* g_launch;
static Fiber* g_cur;
static jmp_buf g_scheduler;
static uint3 g_block_idx;
static dim3 g_block_dim, g_grid_dim;
static unsigned char* g_dyn_shared;

__attribute__((noinline)) static void yield_to_scheduler() {
    if (!_setjmp(g_cur->ctx)) _longjmp(g_scheduler, 1);
}

static void report(const char* fmt, va_list ap) {
    Launch& L = *g_launch;
    if (L.failed) return;
    L.failed = true;
    vsnprintf(L.err, (size_t)L.errlen, fmt, ap);
}
static void report_f(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    report(fmt, ap);
    va_end(ap);
}
// an error in a thread: the launch stops (the other fibers are abandoned)
[[noreturn]] static void fail(const char* fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    report_f("block %u, thread %u: %s", g_block_idx.x, g_cur->idx.x, msg);
    g_cur->state = EXITED;
    _longjmp(g_scheduler, 1);
}

static void fiber_main() {
    for (;;) {
        g_launch->body(g_launch->ctx);
        g_cur->state = EXITED;
        yield_to_scheduler();  // the next block restarts the kernel from here
    }
}

__attribute__((noinline)) static void resume(Fiber* f) {
    g_cur = f;
    if (!_setjmp(g_scheduler)) {
        if (!f->started) {
            f->started = true;
            setcontext(&f->start);
        }
        _longjmp(f->ctx, 1);
    }
}

static void describe_deadlock(Launch& L) {
    char waits[512] = "";
    size_t used = 0;
    unsigned at_sync = 0, at_shfl = 0, exited = 0;
    for (unsigned i = 0; i < L.nthreads; ++i) {
        const int s = L.fibers[i].state;
        at_sync += s == AT_SYNCTHREADS;
        exited += s == EXITED;
        if (s == AT_SHUFFLE) {
            if (at_shfl < 6 && used < sizeof waits - 80) {
                const Lane& l = L.lanes[i];
                used += (size_t)snprintf(waits + used, sizeof waits - used, " thread %u at %s(mask 0x%08x);",
                                         i, SHFL_NAMES[l.mode], l.mask);
            }
            ++at_shfl;
        }
    }
    report_f("deadlock in block %u: %u threads wait at __syncthreads, %u at warp shuffles,%s %u have exited "
             "(a barrier waits for every thread of the block, a shuffle for every lane of its mask)",
             g_block_idx.x, at_sync, at_shfl, waits, exited);
}

// runs one block to completion; false on an error
static bool run_block(Launch& L) {
    for (unsigned i = 0; i < L.nthreads; ++i) {
        L.fibers[i].state = RUNNABLE;
        L.fibers[i].idx.x = i;
        L.fibers[i].idx.y = L.fibers[i].idx.z = 0;
        L.lanes[i].waiting = false;
    }
    memset(L.waiting_lanes, 0, sizeof L.waiting_lanes);
    L.sync_arrived = 0;
    for (;;) {
        bool ran = false;
        unsigned exited = 0;
        for (unsigned i = 0; i < L.nthreads; ++i) {
            Fiber* f = &L.fibers[i];
            if (f->state == RUNNABLE) {
                resume(f);
                ran = true;
                if (L.failed) return false;
            }
            exited += f->state == EXITED;
        }
        if (exited == L.nthreads) return true;
        if (!ran) {
            describe_deadlock(L);
            return false;
        }
    }
}

static void syncthreads() {
    Launch& L = *g_launch;
    const unsigned generation = L.sync_generation;
    if (++L.sync_arrived == L.nthreads) {  // the last to arrive releases the others
        L.sync_arrived = 0;
        ++L.sync_generation;
        for (unsigned i = 0; i < L.nthreads; ++i)
            if (L.fibers[i].state == AT_SYNCTHREADS) L.fibers[i].state = RUNNABLE;
        return;
    }
    g_cur->state = AT_SYNCTHREADS;
    while (L.sync_generation == generation) yield_to_scheduler();
}

// the source lane of `lane` in a shfl.sync (PTX ISA): c = ((32 - width) << 8) | (up ? 0 : 31)
static unsigned source_lane(unsigned lane, int mode, int b, int width) {
    const unsigned seg = 32u - (unsigned)width, bval = (unsigned)b & 31u;
    const unsigned cval = mode == SHFL_UP ? 0u : 31u;
    const int max_lane = (int)((lane & seg) | (cval & ~seg)), min_lane = (int)(lane & seg);
    int j;
    bool ok;
    switch (mode) {
        case SHFL_UP: j = (int)lane - (int)bval; ok = j >= max_lane; break;
        case SHFL_DOWN: j = (int)(lane + bval); ok = j <= max_lane; break;
        case SHFL_XOR: j = (int)(lane ^ bval); ok = j <= max_lane; break;
        default: j = min_lane | (int)(bval & ~seg); ok = j <= max_lane; break;
    }
    return ok ? (unsigned)j : lane;
}

static bool all_posted(const Launch& L, unsigned base, unsigned mask) {
    if ((L.waiting_lanes[base >> 5] & mask) != mask) return false;  // O(1) for all but the last
    for (unsigned m = mask; m; m &= m - 1) {
        const Lane& o = L.lanes[base + (unsigned)__builtin_ctz(m)];
        if (!o.waiting || o.mask != mask) return false;
    }
    return true;
}

template <class V> static V shuffle(unsigned mask, V var, int mode, int b, int width) {
    static_assert(sizeof(V) <= 8, "a shuffle moves at most 8 bytes");
    Launch& L = *g_launch;
    const unsigned tid = g_cur->idx.x, lane = tid & 31u, base = tid - lane;
    if (!((mask >> lane) & 1u))
        fail("%s with mask 0x%08x, which does not name the calling lane %u", SHFL_NAMES[mode], mask, lane);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s width %d is not a power of two in [1, 32]", SHFL_NAMES[mode], width);
    if (base + 32u - (unsigned)__builtin_clz(mask) > L.nthreads)
        fail("%s mask 0x%08x names lanes beyond the block's %u threads", SHFL_NAMES[mode], mask, L.nthreads);
    Lane& me = L.lanes[tid];
    me.waiting = true;
    me.mask = mask;
    me.mode = mode;
    me.b = b;
    me.width = width;
    me.size = (int)sizeof(V);
    me.value = 0;
    memcpy(&me.value, &var, sizeof(V));
    L.waiting_lanes[base >> 5] |= 1u << lane;
    if (!all_posted(L, base, mask)) {
        g_cur->state = AT_SHUFFLE;
        while (me.waiting) yield_to_scheduler();
    } else {  // the last lane of the mask to arrive: every participant's result
        for (unsigned m = mask; m; m &= m - 1) {
            const unsigned l = (unsigned)__builtin_ctz(m);
            Lane& o = L.lanes[base + l];
            // PTX: the lanes of the mask meet at shfl.sync instructions of the same mode (the
            // width is each lane's own operand); a 64-bit value is two 32-bit shuffles
            if (o.mode != mode || o.size != (int)sizeof(V))
                fail("lanes %u and %u of warp %u meet at different shuffles (mask 0x%08x: %s of %d bytes "
                     "and %s of %d bytes)", lane, l, tid / 32u, mask, SHFL_NAMES[mode], (int)sizeof(V),
                     SHFL_NAMES[o.mode], o.size);
            const unsigned src = source_lane(l, o.mode, o.b, o.width);
            if (!((mask >> src) & 1u))
                fail("lane %u of warp %u reads lane %u, which is not in the mask 0x%08x of its %s "
                     "(undefined in CUDA)", l, tid / 32u, src, mask, SHFL_NAMES[mode]);
            o.result = L.lanes[base + src].value;
        }
        for (unsigned m = mask; m; m &= m - 1) {
            const unsigned t = base + (unsigned)__builtin_ctz(m);
            L.lanes[t].waiting = false;
            if (t != tid) L.fibers[t].state = RUNNABLE;
        }
        L.waiting_lanes[base >> 5] &= ~mask;
    }
    V out;
    memcpy(&out, &me.result, sizeof(V));
    return out;
}

// ---- memory: fiber stacks with guard pages, dynamic shared memory, faults --------------------
static size_t page_size() { return (size_t)sysconf(_SC_PAGESIZE); }
static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static char* g_stacks;  // kept between launches: [guard page | stack] per thread
static unsigned g_stacks_n;

static bool ensure_stacks(unsigned n) {
    if (g_stacks_n >= n) return true;
    const size_t page = page_size(), each = page + STACK_BYTES;
    if (g_stacks) munmap(g_stacks, each * g_stacks_n);
    g_stacks_n = 0;
    void* p = mmap(nullptr, each * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    g_stacks = (char*)p;
    for (unsigned i = 0; i < n; ++i) mprotect(g_stacks + i * each, page, PROT_NONE);
    g_stacks_n = n;
    return true;
}

extern "C" __attribute__((weak)) unsigned char __start_gl_emu_shared[];
extern "C" __attribute__((weak)) unsigned char __stop_gl_emu_shared[];

static sigjmp_buf g_fault;
static void* volatile g_fault_addr;
static volatile int g_fault_signal;

static void on_fault(int sig, siginfo_t* info, void*) {
    g_fault_addr = info->si_addr;
    g_fault_signal = sig;
    siglongjmp(g_fault, 1);
}

static int launch_impl(unsigned grid, unsigned block, unsigned long long shared_bytes, const unsigned* order,
                       void (*body)(void*), void* ctx, char* err, int errlen) {
    if (grid == 0 || block == 0 || block > 1024) {
        snprintf(err, (size_t)errlen, "invalid configuration: grid %u, block %u (1..1024 threads)", grid, block);
        return 1;
    }
    const size_t page = page_size(), dyn_span = round_up((size_t)shared_bytes, page);
    if (!ensure_stacks(block)) {
        snprintf(err, (size_t)errlen, "cannot map %u fiber stacks", block);
        return 1;
    }
    // dynamic shared memory ends where an inaccessible page begins
    char* dyn_map = (char*)mmap(nullptr, dyn_span + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dyn_map == (char*)MAP_FAILED) {
        snprintf(err, (size_t)errlen, "cannot map %llu bytes of shared memory", shared_bytes);
        return 1;
    }
    mprotect(dyn_map + dyn_span, page, PROT_NONE);
    g_dyn_shared = (unsigned char*)(dyn_map + dyn_span - round_up((size_t)shared_bytes, 16));
    Fiber* fibers = new Fiber[block];
    Lane* lanes = new Lane[block];
    Launch L;
    memset(&L, 0, sizeof L);
    L.body = body;
    L.ctx = ctx;
    L.nthreads = block;
    L.fibers = fibers;
    L.lanes = lanes;
    L.err = err;
    L.errlen = errlen;
    const size_t each = page + STACK_BYTES;
    for (unsigned i = 0; i < block; ++i) {
        Fiber& f = fibers[i];
        f.started = false;
        getcontext(&f.start);
        f.start.uc_stack.ss_sp = g_stacks + i * each + page;
        f.start.uc_stack.ss_size = STACK_BYTES;
        f.start.uc_link = nullptr;
        makecontext(&f.start, fiber_main, 0);
    }
    g_launch = &L;
    g_grid_dim.x = grid; g_grid_dim.y = g_grid_dim.z = 1;
    g_block_dim.x = block; g_block_dim.y = g_block_dim.z = 1;
    // faults become launch errors: a handler on its own stack (a fiber may have overflowed)
    static char alt_stack[64 * 1024];
    stack_t alt, old_alt;
    alt.ss_sp = alt_stack;
    alt.ss_size = sizeof alt_stack;
    alt.ss_flags = 0;
    sigaltstack(&alt, &old_alt);
    struct sigaction sa, old_segv, old_bus;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    if (sigsetjmp(g_fault, 1) == 0) {
        for (unsigned k = 0; k < grid && !L.failed; ++k) {
            const unsigned b = order ? order[k] : k;
            g_block_idx.x = b; g_block_idx.y = g_block_idx.z = 0;
            memset(g_dyn_shared, 0xff, (size_t)shared_bytes);
            if (__start_gl_emu_shared && __stop_gl_emu_shared > __start_gl_emu_shared)
                memset(__start_gl_emu_shared, 0xff, (size_t)(__stop_gl_emu_shared - __start_gl_emu_shared));
            run_block(L);
        }
    } else {
        const char* where = "";
        char* a = (char*)g_fault_addr;
        if (a >= dyn_map + dyn_span && a < dyn_map + dyn_span + page) where = " (past the end of the dynamic shared memory)";
        else if (a >= g_stacks && a < g_stacks + each * g_stacks_n && (size_t)(a - g_stacks) % each < page)
            where = " (a fiber's stack overflowed)";
        report_f("illegal memory access (%s) at address %p%s, block %u, thread %u",
                 g_fault_signal == SIGBUS ? "bus error" : "segmentation fault", (void*)a, where,
                 g_block_idx.x, g_cur ? g_cur->idx.x : 0u);
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_alt, nullptr);
    g_launch = nullptr;
    g_cur = nullptr;
    delete[] fibers;
    delete[] lanes;
    munmap(dyn_map, dyn_span + page);
    return L.failed ? 1 : 0;
}

template <class F> static void call_body(void* p) { (*static_cast<F*>(p))(); }

template <class F>
static int launch(unsigned grid, unsigned block, unsigned long long shared_bytes, const unsigned* order, F& body,
                  char* err, int errlen) {
    return launch_impl(grid, block, shared_bytes, order, &call_body<F>, &body, err, errlen);
}

}  // namespace gl_emu

// ---- the CUDA names the kernels use ------------------------------------------------------------
#define threadIdx (gl_emu::g_cur->idx)
#define blockIdx (gl_emu::g_block_idx)
#define blockDim (gl_emu::g_block_dim)
#define gridDim (gl_emu::g_grid_dim)
#define warpSize 32

inline void __syncthreads() { gl_emu::syncthreads(); }
inline void __threadfence() {}
template <class V> V __shfl_sync(unsigned mask, V var, int src, int width = 32) {
    return gl_emu::shuffle(mask, var, gl_emu::SHFL_IDX, src, width);
}
template <class V> V __shfl_up_sync(unsigned mask, V var, unsigned delta, int width = 32) {
    return gl_emu::shuffle(mask, var, gl_emu::SHFL_UP, (int)delta, width);
}
template <class V> V __shfl_down_sync(unsigned mask, V var, unsigned delta, int width = 32) {
    return gl_emu::shuffle(mask, var, gl_emu::SHFL_DOWN, (int)delta, width);
}
template <class V> V __shfl_xor_sync(unsigned mask, V var, int lane_mask, int width = 32) {
    return gl_emu::shuffle(mask, var, gl_emu::SHFL_XOR, lane_mask, width);
}
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { const unsigned int old = *p; *p = old + v; return old; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    const unsigned long long old = *p;
    *p = old + v;
    return old;
}
template <class V> inline V __ldg(const V* p) { return *p; }
template <class V> inline V __ldcg(const V* p) { return *p; }
inline double __longlong_as_double(long long x) { double d; memcpy(&d, &x, 8); return d; }
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
// ---- end of the shim ----------------------------------------------------------------------------
""".replace("STACK_BYTES", str(STACK_BYTES))

#: ``extern __shared__ [__align__(n)] <type> <name>[];`` → a pointer to the launch's buffer
_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w ]*?)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*;")


def _rewrite_dynamic_shared(source: str) -> str:
    out = _DYNAMIC_SHARED.sub(lambda m: f"{m.group(1)}* const {m.group(2)} = "
                                        f"reinterpret_cast<{m.group(1)}*>(gl_emu::g_dyn_shared);", source)
    if re.search(r"extern\s+__shared__", out):
        raise CompileError("an extern __shared__ declaration the emulator cannot rewrite "
                           "(expected `extern __shared__ [__align__(n)] <type> <name>[];`)")
    return out


def _launcher(name: str, params: Sequence[tuple[str, str]]) -> str:
    decl = ", ".join(f"{t} {n}" for t, n in params)
    unpack = "\n".join(f"    {t} a{i};\n    memcpy(&a{i}, args[{i}], sizeof a{i});" for i, (t, _) in enumerate(params))
    call = ", ".join(f"a{i}" for i in range(len(params)))
    return (f'extern "C" void {name}({decl});\n'
            f'extern "C" int gl_emu_launch__{name}(unsigned grid, unsigned block, unsigned long long shared_bytes,\n'
            f"        const unsigned* order, void** args, char* err, int errlen) {{\n"
            f"{unpack}\n"
            f"    auto body = [&]() {{ {name}({call}); }};\n"
            f"    return gl_emu::launch(grid, block, shared_bytes, order, body, err, errlen);\n}}\n")


def translation_unit(source: str, kernels: Mapping[str, Sequence[tuple[str, str]]]) -> str:
    """The complete host C++ of an emulated module: shim, source, launchers."""
    return "\n".join([SHIM, "#line 1 \"kernel.cu\"", _rewrite_dynamic_shared(source),
                      "// ---- launchers", *(_launcher(n, p) for n, p in kernels.items())])


# ---- launching ---------------------------------------------------------------------------------

_SCALAR_CTYPES = {
    "bool": ctypes.c_bool, "char": ctypes.c_char, "signed char": ctypes.c_byte, "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short, "unsigned short": ctypes.c_ushort, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "unsigned long": ctypes.c_ulong, "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong, "float": ctypes.c_float, "double": ctypes.c_double,
}


def is_pointer(ctype: str) -> bool:
    return "*" in ctype


def _ctype_of(ctype: str):
    if is_pointer(ctype):
        return ctypes.c_void_p
    base = " ".join(w for w in ctype.replace("const", " ").split())
    if base not in _SCALAR_CTYPES:
        raise TypeError(f"the emulator cannot pass a kernel parameter of C type {ctype!r}")
    return _SCALAR_CTYPES[base]


@dataclass
class Kernel:
    """One kernel of a :class:`Library`; call it with (grid, block, args, shared_mem)."""

    library: "Library"
    name: str
    params: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        self._types = [_ctype_of(t) for t, _ in self.params]
        fn = getattr(self.library.cdll, f"gl_emu_launch__{self.name}")
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_char_p, ctypes.c_int]
        self._fn = fn

    def __call__(self, grid: int, block: int, args: Sequence[int | float | None], shared_mem: int = 0,
                 block_order: Sequence[int] | None = None) -> None:
        """Run the kernel: ``args`` in parameter order, pointers as addresses (None: null),
        scalars as Python numbers (converted to the parameter's C type)."""
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        values = [ct(0 if v is None else v) for ct, v in zip(self._types, args)]
        slots = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        order = None
        if block_order is not None:
            if sorted(block_order) != list(range(grid)):
                raise ValueError("block_order must be a permutation of range(grid)")
            order = (ctypes.c_uint * grid)(*block_order)
        err = ctypes.create_string_buffer(2048)
        with self.library.lock:  # the scheduler's state is global to the library
            rc = self._fn(grid, block, shared_mem, order, slots, err, len(err))
        if rc != 0:
            raise LaunchError(f"{self.name}<<<{grid}, {block}, {shared_mem}>>>: {err.value.decode(errors='replace')}")


class Library:
    """A built emulator library and its kernels."""

    def __init__(self, path: Path, kernels: Mapping[str, Sequence[tuple[str, str]]]):
        self.path = path
        self.cdll = ctypes.CDLL(str(path))
        self.lock = threading.Lock()
        self.kernels = {n: Kernel(self, n, tuple(tuple(p) for p in ps)) for n, ps in kernels.items()}

    def kernel(self, name: str) -> Kernel:
        try:
            return self.kernels[name]
        except KeyError:
            raise KeyError(f"no kernel {name!r} in this module; it has {sorted(self.kernels)}") from None


_LOADED: dict[str, Library] = {}
_LOADED_LOCK = threading.Lock()

Job = tuple[str, Mapping[str, Sequence[tuple[str, str]]]]  # (source, kernel name -> parameters)


def _job_key(source: str, kernels: Mapping[str, Sequence[tuple[str, str]]]) -> str:
    return hashlib.sha256((source + repr(sorted((n, list(map(tuple, p))) for n, p in kernels.items()))).encode()
                          ).hexdigest()


def _merge(jobs: Sequence[Job]) -> Job:
    """One source for several that begin with the same text (the generator's header): the
    common prefix once, up to a line end, then each source's own part. The parts must define
    different names (the generator's programs live in namespaces of their own, and one dtype's
    kernels of a program in one part)."""
    if len(jobs) == 1:
        return jobs[0]
    sources = [src for src, _ in jobs]
    prefix = os.path.commonprefix(sources)
    prefix = prefix[:prefix.rfind("\n") + 1]
    kernels: dict[str, Sequence[tuple[str, str]]] = {}
    for _, ks in jobs:
        for name, params in ks.items():
            if name in kernels:
                raise ValueError(f"kernel {name} appears in two sources of one batch")
            kernels[name] = params
    return prefix + "".join(src[len(prefix):] for src in sources), kernels


def build(source: str, kernels: Mapping[str, Sequence[tuple[str, str]]]) -> Library:
    """The emulator library of ``source`` exposing ``kernels`` (name → [(C type, name)]): one
    this process built or loaded before (also as part of a batch of :func:`build_many`), else
    from the disk cache, else compiled now."""
    key = _job_key(source, kernels)
    lib = _LOADED.get(key)
    if lib is None:
        lib = _load(key, source, kernels)
    return lib


def _load(key: str, source: str, kernels: Mapping[str, Sequence[tuple[str, str]]]) -> Library:
    path = compile_shared(translation_unit(source, kernels), "emu", EMULATOR_FLAGS, "cuda-emulator",
                          include_dirs=[_stub_include_dir()])
    with _LOADED_LOCK:
        lib = _LOADED.get(key)
        if lib is None:
            lib = _LOADED[key] = Library(path, kernels)
    return lib


def build_many(batches: Sequence[Sequence[Job]], workers: int | None = None) -> list[Library]:
    """One library per batch of (source, kernels) jobs (see :func:`_merge` and, for what it
    saves, the module docstring), built up to ``workers`` (default: the CPU count) at a time
    (g++ runs as a subprocess: threads suffice). Afterwards :func:`build` of any member job
    returns its batch's library without compiling."""
    def one(batch: Sequence[Job]) -> Library:
        keys = [_job_key(*job) for job in batch]
        if all(k in _LOADED for k in keys):
            return _LOADED[keys[0]]
        merged = _merge(batch)
        lib = build(*merged)
        with _LOADED_LOCK:
            for k in keys:
                _LOADED.setdefault(k, lib)
        return lib

    workers = workers or os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, batches))


# ---- gpuloss's generated kernels -------------------------------------------------------------

def generated_programs() -> list:
    """Every row program the registered losses define (the kernels' programs), each once."""
    import gpuloss.losses as fam
    from gpuloss.program import RowProgram

    seen: dict[int, RowProgram] = {}
    for mod in (fam.regression, fam.probabilistic, fam.hinge, fam.similarity, fam.segmentation,
                fam.metric_learning):
        for v in vars(mod).values():
            for it in (v.values() if isinstance(v, dict) else [v]):
                if isinstance(it, RowProgram):
                    seen[id(it)] = it
    return list(seen.values())


def column_variants(program) -> list[tuple[str, ...]]:
    """() for every program; plus a per-column ``alpha`` where the program has one (CFCE)."""
    elem_params = set()
    for stats in program.passes:
        for _, st in stats:
            elem_params.update(a for t in st.term.callees() + [st.term] for a in t.args)
    out: list[tuple[str, ...]] = [()]
    if "alpha" in program.param_names() and "alpha" in elem_params and "alpha" not in program.finish.args:
        out.append(("alpha",))
    return out


def program_kernels(program, dtype: str, column_params: tuple[str, ...] = ()) -> dict[str, list[tuple[str, str]]]:
    """Kernel name → parameters, for ``templates.program_source(program, dtype, column_params)``."""
    from gpuloss.kernels.cupy import templates

    names = templates.kernel_names(program, dtype, column_params)
    return {name: templates.kernel_params(program, dtype, kind, column_params) for kind, name in names.items()}


_NAMESPACE = re.compile(r"^namespace glp_(\w+) \{$", re.M)
_VARIANTS_BY_ID: dict[str, list] = {}


def kernels_of_source(source: str) -> dict[str, list[tuple[str, str]]]:
    """The kernels of a source made by ``templates.program_source`` (what a RawModule is handed),
    from the generator's own ``kernel_params``: the namespace names the candidate programs, and
    the source must equal the generator's output for one of them exactly."""
    from gpuloss.kernels.cupy import templates

    if not _VARIANTS_BY_ID:
        for p in generated_programs():
            for colp in column_variants(p):
                _VARIANTS_BY_ID.setdefault(templates._prog_id(p, colp), []).append((p, colp))
    for pid in _NAMESPACE.findall(source):
        for p, colp in _VARIANTS_BY_ID.get(pid, ()):
            for dtype in templates.DTYPES:
                if templates.program_source(p, dtype, colp) == source:
                    return program_kernels(p, dtype, colp)
    raise KeyError("not a source made by gpuloss.kernels.cupy.templates.program_source for a registered program")
