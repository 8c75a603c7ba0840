"""A NumPy-backed stand-in for the part of CuPy that gpuloss uses, with kernels run by the host
emulator of :mod:`cuda_host`: the CuPy backend's whole path, on a machine without a GPU.

Installed for a test with ``monkeypatch.setitem(sys.modules, "cupy", fake_cupy)`` (see
:func:`install`), so ``import cupy`` anywhere in gpuloss finds it.

Arrays
    :class:`ndarray` wraps a NumPy array and is NOT a NumPy subclass (gpuloss tells host from
    device arrays by ``isinstance(x, numpy.ndarray)`` and by the type's module, here
    ``"cupy"``). As with CuPy: results of operations on it stay device arrays (NumPy's
    ``__array_ufunc__`` and ``__array_function__`` protocols; reductions and indexing give 0-d
    arrays, not scalars); mixing in NumPy arrays raises ``TypeError``; an implicit conversion
    to NumPy (``numpy.asarray(x)``) raises ``TypeError``; ``float()``, ``int()``, ``bool()``,
    ``.get()`` and :func:`asnumpy` are the explicit copies to the host (counted in
    :data:`STATE`, as the synchronisations they are on a GPU). Memory made by :func:`empty`,
    :func:`zeros`, :func:`asarray`, ``astype`` and ``copy`` starts 16-byte aligned (as the
    kernels' vector loads need; CuPy aligns to 256) and ends less than 16 bytes before an
    inaccessible page, so a kernel that reads or writes past the end of such a buffer fails
    its launch (:class:`cuda_host.LaunchError`); results of NumPy operations live in ordinary
    NumPy memory. ml_dtypes' bfloat16 arrays can be held (CuPy has no
    bfloat16; the kernels do).

Kernels
    ``RawModule(code=..., options=...)`` builds ``code`` with :func:`cuda_host.build` (the
    options are NVRTC's and are ignored); the parameters of its kernels come from the generator
    (:func:`cuda_host.kernels_of_source`), never from parsing the code. A kernel is called as
    CuPy's, ``kernel(grid, block, args, shared_mem=0)``, and checks each argument against its
    C parameter type as strictly as the GPU would read it: CuPy passes a NumPy scalar by its
    own size, so an ``int`` parameter takes ``numpy.int32`` only, ``long long``
    ``numpy.int64``, ``double`` ``numpy.float64``; a pointer takes an array of the pointee's
    dtype (any dtype for ``void*``) or ``numpy.uint64`` (0: the null pointer). Dynamic shared
    memory beyond ``max_dynamic_shared_size_bytes`` (by default 48 KiB less the kernel's static
    shared memory, read from NVRTC's ptxas report where NVRTC is installed) fails the launch,
    as CUDA refuses it. Every launch is recorded in :data:`STATE`.

Devices and streams
    :data:`DEVICE_COUNT` devices (1), each with :data:`SM_COUNT` (4) multiprocessors, so grids
    stay small but have several blocks; ``cuda.Device`` and ``cuda.Stream`` are context
    managers that change the current device and stream (``get_current_stream().ptr`` is 0 for
    the default stream).

Not modelled
    Asynchrony (a launch has finished when the call returns, so a missing synchronisation
    cannot show; the host copies are counted instead), memory pools, peer access between
    devices, DLPack imports (``from_dlpack`` raises), and CuPy's own kernels: elementwise
    operations and reductions on fake arrays are NumPy's.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import mmap
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

import cuda_host

__all__ = ["ndarray", "RawModule", "RawKernel", "asarray", "asnumpy", "empty", "zeros", "ones", "ascontiguousarray",
           "broadcast_to", "where", "stack", "sum", "trunc", "maximum", "exp", "log", "log1p", "isfinite",
           "isneginf", "nonzero", "abs", "arange", "cuda", "STATE", "install", "reset", "SM_COUNT"]

SM_COUNT = 4
DEVICE_COUNT = 1
#: CUDA's default limit of shared memory per block (static + dynamic) without the opt-in
DEFAULT_SHARED_PER_BLOCK = 48 * 1024
#: the opt-in maximum (cudaDevAttrMaxSharedMemoryPerBlockOptin) of an H100
OPTIN_SHARED_PER_BLOCK = 227 * 1024

bool_, int8, int16, int32, int64 = np.bool_, np.int8, np.int16, np.int32, np.int64
uint8, uint16, uint32, uint64 = np.uint8, np.uint16, np.uint32, np.uint64
float16, float32, float64 = np.float16, np.float32, np.float64
nan, inf = np.nan, np.inf


@dataclass
class LaunchRecord:
    kernel: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    shared_mem: int


@dataclass
class State:
    """What the fake saw since :func:`reset`: launches, and copies to the host (syncs)."""

    launches: list[LaunchRecord] = field(default_factory=list)
    host_copies: int = 0
    device: int = 0
    stream: "Stream | None" = None
    #: the order in which blocks run (None: blockIdx order), a function of the grid size: a
    #: result must not depend on which block finishes last
    block_order: Callable[[int], list[int]] | None = None


STATE = State()


def reset() -> None:
    STATE.__init__()  # in place: modules that imported STATE keep seeing the live one


# ---- device memory ------------------------------------------------------------------------------

_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int


def _guarded(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous array starting 16-byte aligned less than 16 bytes before an inaccessible
    page. The mapping is released when the last view of it goes (the mmap object is their base)."""
    dtype = np.dtype(dtype)
    count = 1
    for s in shape:
        count *= int(s)
    nbytes = count * dtype.itemsize
    span = -(-max(nbytes, 1) // _PAGE) * _PAGE
    m = mmap.mmap(-1, span + _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if _libc.mprotect(base + span, _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    start = span - (-(-nbytes // 16) * 16)
    return np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=start).view(dtype).reshape(shape)


def _device_copy(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    out = _guarded(a.shape, a.dtype if dtype is None else np.dtype(dtype))
    out[...] = a
    return out


class _Pointer:
    """``ndarray.data``: CuPy's MemoryPointer, of which gpuloss reads ``ptr``."""

    def __init__(self, ptr: int):
        self.ptr = ptr


# ---- arrays -------------------------------------------------------------------------------------

def _unwrap(x: Any, what: str = "operand") -> Any:
    """A NumPy view of a device array; host arrays are refused as CuPy refuses them."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)} ({what}): a NumPy array mixed with CuPy arrays")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, what) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, what) for k, v in x.items()}
    return x


def _wrap(x: Any) -> Any:
    """Results as device arrays (scalars as 0-d arrays, as CuPy returns them)."""
    if isinstance(x, np.ndarray):
        return ndarray(x)
    if isinstance(x, np.generic):
        return ndarray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


class ndarray(NDArrayOperatorsMixin):
    """A device array (see the module docstring)."""

    __module__ = "cupy"  # what gpuloss's sniffing looks at (type(x).__module__)
    __slots__ = ("_a", "device")

    def __init__(self, a: np.ndarray, device: int | None = None):
        self._a = a
        self.device = Device(STATE.device if device is None else device)

    # -- NumPy's protocols: results stay on the device
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o, "out") for o in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args, func.__name__), **_unwrap(kwargs, func.__name__)))

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a "
                        "NumPy array explicitly.")

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    data = property(lambda self: _Pointer(self._a.ctypes.data))

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Iterator["ndarray"]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"fake_cupy.ndarray({self._a!r})"

    # -- views and copies
    def reshape(self, *shape, order: str = "C") -> "ndarray":
        return ndarray(self._a.reshape(*shape, order=order))

    def ravel(self) -> "ndarray":
        return self.reshape(-1)

    def transpose(self, *axes) -> "ndarray":
        return ndarray(self._a.transpose(*axes))

    def squeeze(self, axis=None) -> "ndarray":
        return ndarray(self._a.squeeze(axis))

    def astype(self, dtype, copy: bool = True) -> "ndarray":
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return ndarray(_device_copy(self._a, dtype))

    def copy(self) -> "ndarray":
        return ndarray(_device_copy(self._a))

    def view(self, dtype) -> "ndarray":
        return ndarray(self._a.view(dtype))

    def __getitem__(self, index) -> "ndarray":
        return _wrap(self._a[_unwrap(index, "index")])

    def __setitem__(self, index, value) -> None:
        self._a[_unwrap(index, "index")] = value._a if isinstance(value, ndarray) else value

    # -- reductions (0-d device arrays)
    def sum(self, *args, **kwargs) -> "ndarray":
        return _wrap(self._a.sum(*args, **kwargs))

    def all(self, *args, **kwargs) -> "ndarray":
        return _wrap(self._a.all(*args, **kwargs))

    def any(self, *args, **kwargs) -> "ndarray":
        return _wrap(self._a.any(*args, **kwargs))

    def max(self, *args, **kwargs) -> "ndarray":
        return _wrap(self._a.max(*args, **kwargs))

    def min(self, *args, **kwargs) -> "ndarray":
        return _wrap(self._a.min(*args, **kwargs))

    # -- copies to the host (each one a synchronisation on a GPU)
    def get(self) -> np.ndarray:
        STATE.host_copies += 1
        return np.array(self._a)

    def item(self):
        STATE.host_copies += 1
        return self._a.item()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        return bool(self.item())

    def __index__(self) -> int:
        if self.dtype.kind not in "iub":
            raise TypeError("only integer arrays can be used as an index")
        return int(self)


def asarray(a: Any, dtype: Any = None, order: str | None = None) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return ndarray(_device_copy(np.asarray(a, dtype=dtype)))


def asnumpy(a: Any) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def empty(shape, dtype: Any = float) -> ndarray:
    return ndarray(_guarded(tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),), dtype))


def zeros(shape, dtype: Any = float) -> ndarray:
    out = empty(shape, dtype)
    out._a[...] = 0
    return out


def ones(shape, dtype: Any = float) -> ndarray:
    out = empty(shape, dtype)
    out._a[...] = 1
    return out


def ascontiguousarray(a: ndarray, dtype: Any = None) -> ndarray:
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return ndarray(_device_copy(np.ascontiguousarray(a._a), dtype))


def _lift(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A CuPy function from its NumPy namesake: device arrays in, device arrays out."""
    def device_fn(*args, **kwargs):
        return _wrap(fn(*_unwrap(args, fn.__name__), **_unwrap(kwargs, fn.__name__)))

    device_fn.__name__ = fn.__name__
    return device_fn


broadcast_to = _lift(np.broadcast_to)
where = _lift(np.where)
stack = _lift(np.stack)
sum = _lift(np.sum)  # noqa: A001 - CuPy's name
trunc = _lift(np.trunc)
# what Circle's pairwise rows use (gpuloss.losses.metric_learning: the same code on either library)
maximum, exp, log, log1p, isfinite, isneginf, nonzero = (
    _lift(f) for f in (np.maximum, np.exp, np.log, np.log1p, np.isfinite, np.isneginf, np.nonzero))
abs = _lift(np.abs)  # noqa: A001 - CuPy's name


def arange(*args, **kwargs) -> ndarray:
    return asarray(np.arange(*args, **kwargs))


def from_dlpack(x: Any) -> ndarray:
    raise NotImplementedError("fake_cupy does not import DLPack producers (torch/JAX device arrays)")


# ---- devices and streams --------------------------------------------------------------------------

class Device:
    def __init__(self, device: int | None = None):
        self.id = STATE.device if device is None else int(device)
        if not 0 <= self.id < DEVICE_COUNT:
            raise ValueError(f"invalid device ordinal {self.id} ({DEVICE_COUNT} fake devices)")
        self._previous: list[int] = []

    @property
    def attributes(self) -> dict[str, int]:
        return {"MultiProcessorCount": SM_COUNT, "MaxSharedMemoryPerBlock": DEFAULT_SHARED_PER_BLOCK,
                "MaxSharedMemoryPerBlockOptin": OPTIN_SHARED_PER_BLOCK, "WarpSize": 32,
                "MaxThreadsPerBlock": 1024}

    def use(self) -> None:
        STATE.device = self.id

    def __enter__(self) -> "Device":
        self._previous.append(STATE.device)
        STATE.device = self.id
        return self

    def __exit__(self, *exc) -> None:
        STATE.device = self._previous.pop()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<fake CUDA Device {self.id}>"


class Stream:
    _next_ptr = 0x1000

    def __init__(self, null: bool = False, non_blocking: bool = False):
        if null:
            self.ptr = 0
        else:
            Stream._next_ptr += 0x10
            self.ptr = Stream._next_ptr
        self._previous: list[Stream | None] = []

    def __enter__(self) -> "Stream":
        self._previous.append(STATE.stream)
        STATE.stream = self
        return self

    def __exit__(self, *exc) -> None:
        STATE.stream = self._previous.pop()

    def synchronize(self) -> None:
        pass


_NULL_STREAM = Stream(null=True)


def _get_current_stream() -> Stream:
    return STATE.stream or _NULL_STREAM


class _Runtime:
    @staticmethod
    def getDevice() -> int:  # noqa: N802 - CuPy's name
        return STATE.device

    @staticmethod
    def getDeviceCount() -> int:  # noqa: N802
        return DEVICE_COUNT

    @staticmethod
    def setDevice(i: int) -> None:  # noqa: N802
        Device(i).use()


class _CudaNamespace:
    runtime = _Runtime
    Device = Device
    Stream = Stream
    get_current_stream = staticmethod(_get_current_stream)


cuda = _CudaNamespace()


# ---- kernels -------------------------------------------------------------------------------------

class CUDADriverError(RuntimeError):
    """What CuPy raises for a launch the driver refuses."""


#: the NumPy scalar type CuPy must be handed for a C parameter type (it packs a scalar by its own size)
_SCALAR_ARGS = {"int": np.int32, "unsigned int": np.uint32, "long long": np.int64, "unsigned long long": np.uint64,
                "double": np.float64, "float": np.float32, "bool": np.bool_}
#: the dtype a pointer parameter's array must have (None: any)
_POINTEES = {"void": None, "float": "float32", "double": "float64", "__half": "float16", "__nv_bfloat16": "bfloat16",
             "int": "int32", "unsigned int": "uint32", "long long": "int64", "unsigned long long": "uint64",
             "signed char": "int8", "unsigned char": "uint8"}


def _pointee(ctype: str) -> str:
    return " ".join(w for w in ctype.replace("*", " ").split() if w not in ("const", "__restrict__", "__restrict"))


def _kernel_arg(ctype: str, name: str, value: Any) -> int | float | None:
    """The value the kernel reads for one argument; TypeError where a GPU would read garbage."""
    if cuda_host.is_pointer(ctype):
        if isinstance(value, ndarray):
            want = _POINTEES.get(_pointee(ctype), "?")
            if want is not None and value.dtype.name != want:
                raise TypeError(f"argument {name} ({ctype}) is an array of {value.dtype}: the kernel would read "
                                f"{want}")
            return value.data.ptr
        if isinstance(value, np.uint64):  # 8 bytes by value: a raw pointer (0: null)
            return int(value) or None
        raise TypeError(f"argument {name} ({ctype}) must be a device array or numpy.uint64, got "
                        f"{type(value).__name__}")
    want = _SCALAR_ARGS.get(ctype)
    if want is None:
        raise TypeError(f"argument {name}: the fake cannot pass a {ctype}")
    if type(value) is not want:
        raise TypeError(f"argument {name} ({ctype}) must be numpy.{want.__name__}, got {type(value).__name__} "
                        f"(CuPy passes it by its own size and type)")
    return value.item()


_SMEM = re.compile(r"Compiling entry function '([^']+)'|(\d+) bytes smem")


def _static_shared_bytes(code: str) -> dict[str, int] | None:
    """Static shared memory of each kernel from NVRTC's ptxas report (cached on disk), or None
    without NVRTC."""
    try:
        from gpuloss.kernels.cupy import nvrtc
    except ImportError:  # pragma: no cover
        return None
    if not nvrtc.available():
        return None
    d = cuda_host.work_dir("cuda-emulator")
    path = d / f"smem-{hashlib.sha256(code.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    log = nvrtc.compile(code, "sm_90").log
    out: dict[str, int] = {}
    current = None
    for entry, smem in _SMEM.findall(log):
        if entry:
            current = entry
            out[current] = 0
        elif current is not None:
            out[current] = int(smem)
    path.write_text(json.dumps(out))
    return out


class RawKernel:
    """A kernel of a :class:`RawModule`, called as CuPy's RawKernel."""

    def __init__(self, module: "RawModule", name: str, kernel: cuda_host.Kernel):
        self.module, self.name, self.kernel = module, name, kernel
        self._max_dynamic: int | None = None

    @property
    def shared_size_bytes(self) -> int:
        """Static shared memory (NVRTC's ptxas report; 0 where NVRTC is not installed)."""
        sizes = self.module.static_shared_bytes
        return 0 if sizes is None else sizes.get(self.name, 0)

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        if self._max_dynamic is not None:
            return self._max_dynamic
        return DEFAULT_SHARED_PER_BLOCK - self.shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        if value + self.shared_size_bytes > OPTIN_SHARED_PER_BLOCK:
            raise CUDADriverError("CUDA_ERROR_INVALID_VALUE: more shared memory than the device has")
        self._max_dynamic = int(value)

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...], *, shared_mem: int = 0,
                 stream: Any = None) -> None:
        grid, block = tuple(grid), tuple(block)
        if any(g != 1 for g in grid[1:]) or any(b != 1 for b in block[1:]):
            raise NotImplementedError("the emulator runs 1-D grids and blocks only")
        params = self.kernel.params
        if len(args) != len(params):
            raise TypeError(f"{self.name} takes {len(params)} arguments, got {len(args)}")
        values = [_kernel_arg(t, n, v) for (t, n), v in zip(params, args)]
        if shared_mem and shared_mem > self.max_dynamic_shared_size_bytes:
            raise CUDADriverError(f"CUDA_ERROR_INVALID_VALUE: {self.name} asks for {shared_mem} bytes of dynamic "
                                  f"shared memory; it may have {self.max_dynamic_shared_size_bytes} "
                                  f"({self.shared_size_bytes} bytes are static)")
        STATE.launches.append(LaunchRecord(self.name, grid, block, shared_mem))
        order = STATE.block_order(grid[0]) if STATE.block_order is not None else None
        self.kernel(grid[0], block[0], values, shared_mem, block_order=order)


class RawModule:
    """CuPy's RawModule over the emulator: ``code`` is built by :func:`cuda_host.build`."""

    def __init__(self, code: str, options: tuple[str, ...] = (), backend: str = "nvrtc", **kwargs: Any):
        self.code, self.options = code, tuple(options)
        self.kernel_params = cuda_host.kernels_of_source(code)
        self.library = cuda_host.build(code, self.kernel_params)

    @functools.cached_property
    def static_shared_bytes(self) -> dict[str, int] | None:
        """Kernel name → static shared memory (NVRTC's report; None without NVRTC), read once."""
        return _static_shared_bytes(self.code)

    def get_function(self, name: str) -> RawKernel:
        if name not in self.kernel_params:  # the library may be a batch's, with other modules' kernels
            raise KeyError(f"no kernel {name!r} in this module; it has {sorted(self.kernel_params)}")
        return RawKernel(self, name, self.library.kernel(name))


# ---- installing ----------------------------------------------------------------------------------

def install(monkeypatch) -> Any:
    """Make ``import cupy`` give this module for one test (a fresh :data:`STATE`)."""
    reset()
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module
