"""NVRTC through ctypes: compile CUDA sources to PTX or cubin without a GPU or a driver.

NVRTC is a plain shared library (``libnvrtc.so.13`` / ``.so.12``, ``nvrtc64_*.dll``) that
needs no device, so CI compiles every generated kernel with it. It comes from the
``nvidia-cuda-nvrtc`` wheel (CUDA 13; ``nvidia-cuda-nvrtc-cu12`` for CUDA 12), a CUDA
toolkit, or ``GPULOSS_NVRTC`` (a path to the library). float16/bfloat16 kernels include
``cuda_fp16.h``/``cuda_bf16.h``, which NVRTC does not carry: they come from the
``nvidia-cuda-runtime`` wheel (``nvidia/cu13/include``; ``nvidia/cuda_runtime/include`` for
CUDA 12), a toolkit's ``include``, or ``GPULOSS_CUDA_INCLUDE``.

``compile(src, arch="sm_90")`` compiles straight to a cubin (NVRTC runs ptxas inside), and with
``-Xptxas=-v`` reports registers and spills per kernel; ``arch="compute_90"`` gives PTX. PTX made
by a newer NVRTC may be rejected by an older driver's JIT, so a PTX is checked with the NVRTC
that made it (cubins are final).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NVRTCError", "NVRTCUnavailable", "CompileResult", "load", "available", "compile",
           "include_dirs", "version"]


class NVRTCUnavailable(RuntimeError):
    """No NVRTC library could be loaded."""


class NVRTCError(RuntimeError):
    """A compilation failed; ``log`` holds NVRTC's messages."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + ("\n" + log if log else ""))
        self.log = log


@dataclass
class KernelInfo:
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None


@dataclass
class CompileResult:
    arch: str
    binary: bytes  # cubin for sm_XX, PTX text (NUL-terminated bytes) for compute_XX
    kind: str  # "cubin" or "ptx"
    log: str
    seconds: float
    kernels: dict[str, KernelInfo] = field(default_factory=dict)


def _site_dirs() -> list[Path]:
    out = []
    for p in sys.path:
        d = Path(p) / "nvidia"
        if d.is_dir():
            out.append(d)
    return out


def _library_candidates() -> list[str]:
    env = os.environ.get("GPULOSS_NVRTC")
    out = [env] if env else []
    for d in _site_dirs():
        for sub in ("cu13/lib", "cu13/bin", "cu13/bin/x86_64", "cuda_nvrtc/lib", "cuda_nvrtc/bin"):
            for pat in ("libnvrtc.so.*", "nvrtc64_*.dll"):
                out += sorted(glob.glob(str(d / sub / pat)), reverse=True)
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            out += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")), reverse=True)
            out += sorted(glob.glob(os.path.join(root, "bin", "nvrtc64_*.dll")), reverse=True)
    found = ctypes.util.find_library("nvrtc")
    if found:
        out.append(found)
    # builtins libraries (libnvrtc-builtins) are not NVRTC itself
    return [c for c in out if "builtins" not in os.path.basename(c)]


def include_dirs() -> list[str]:
    """Folders holding cuda_fp16.h (for the float16/bfloat16 kernels)."""
    env = os.environ.get("GPULOSS_CUDA_INCLUDE")
    cands = [env] if env else []
    for d in _site_dirs():
        cands += [str(d / "cu13" / "include"), str(d / "cuda_runtime" / "include"),
                  str(d / "cuda_nvrtc" / "include")]
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            cands.append(os.path.join(root, "include"))
    out = []
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "cuda_fp16.h")) and c not in out:
            out.append(c)
    return out[:1]


_LIB: list = []
_LOCK = threading.Lock()


def load():
    """The NVRTC library (loaded once); raises NVRTCUnavailable."""
    if _LIB:
        return _LIB[0]
    with _LOCK:
        if _LIB:
            return _LIB[0]
        errors = []
        for cand in _library_candidates():
            try:
                lib = ctypes.CDLL(cand)
                lib.nvrtcVersion  # noqa: B018 - check it is NVRTC
            except (OSError, AttributeError) as exc:
                errors.append(f"{cand}: {exc}")
                continue
            _declare(lib)
            lib._gl_path = cand
            _LIB.append(lib)
            return lib
        raise NVRTCUnavailable("no NVRTC library found (pip install nvidia-cuda-nvrtc, or set GPULOSS_NVRTC)"
                               + ("; tried: " + "; ".join(errors) if errors else ""))


def _declare(lib) -> None:
    P = ctypes.c_void_p
    lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(P), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                       ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcCompileProgram.argtypes = [P, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(P)]
    lib.nvrtcGetProgramLogSize.argtypes = [P, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetProgramLog.argtypes = [P, ctypes.c_char_p]
    lib.nvrtcGetPTXSize.argtypes = [P, ctypes.POINTER(ctypes.c_size_t)]
    lib.nvrtcGetPTX.argtypes = [P, ctypes.c_char_p]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    if hasattr(lib, "nvrtcGetCUBIN"):
        lib.nvrtcGetCUBINSize.argtypes = [P, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetCUBIN.argtypes = [P, ctypes.c_char_p]


def available() -> bool:
    try:
        load()
        return True
    except NVRTCUnavailable:
        return False


def version() -> tuple[int, int]:
    lib = load()
    a, b = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b))
    return a.value, b.value


def _check(lib, rc: int, what: str) -> None:
    if rc != 0:
        raise NVRTCError(f"{what}: {lib.nvrtcGetErrorString(rc).decode()}")


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _parse_ptxas(log: str) -> dict[str, KernelInfo]:
    out: dict[str, KernelInfo] = {}
    cur = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = out.setdefault(m.group(1), KernelInfo())
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            cur.stack, cur.spill_stores, cur.spill_loads = (int(x) for x in m.groups())
        m = _REGS.search(line)
        if m:
            cur.registers = int(m.group(1))
    return out


def compile(source: str, arch: str = "sm_90", options: tuple[str, ...] = (), name: str = "gpuloss.cu",
            verbose: bool = True) -> CompileResult:
    """Compile ``source`` for ``arch`` ("sm_XX" → cubin, "compute_XX" → PTX).

    Raises NVRTCError with the log when NVRTC reports an error."""
    import time

    lib = load()
    opts = [f"-arch={arch}", "-std=c++17"]
    opts += [f"-I{d}" for d in include_dirs()]
    kind = "cubin" if arch.startswith("sm_") else "ptx"
    if kind == "cubin" and verbose:
        opts.append("-Xptxas=-v")
    opts += list(options)
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        t0 = time.perf_counter()
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        seconds = time.perf_counter() - t0
        n = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value + 1)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if rc != 0:
            raise NVRTCError(f"NVRTC {arch}: {lib.nvrtcGetErrorString(rc).decode()} (options {' '.join(opts)})", log)
        if kind == "cubin":
            if not hasattr(lib, "nvrtcGetCUBIN"):
                raise NVRTCError("this NVRTC cannot emit cubins; use arch='compute_XX'")
            _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(n)), "nvrtcGetCUBINSize")
            out = ctypes.create_string_buffer(n.value)
            _check(lib, lib.nvrtcGetCUBIN(prog, out), "nvrtcGetCUBIN")
        else:
            _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(n)), "nvrtcGetPTXSize")
            out = ctypes.create_string_buffer(n.value)
            _check(lib, lib.nvrtcGetPTX(prog, out), "nvrtcGetPTX")
        return CompileResult(arch, out.raw, kind, log, seconds, _parse_ptxas(log))
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
