"""Compiling a program's kernels with CuPy, and how to launch them.

Not wired into gpuloss's dispatch yet: this module is what a CuPy backend builds on. CuPy is
imported on the first :func:`compile_program` call, never at import time.

Kernels (see :mod:`.templates` for what each computes; arguments in
``templates.kernel_params(program, dtype, kind)``):

``rows``  every program. Arguments: for each element array its pointer and its row and column
          strides in elements (broadcast inputs have stride 0); for sparse programs the labels
          (pointer, ``label_kind`` from ``templates.KINDS``, step), ``has_ignore``, ``ignore``;
          ``R``, ``C``; the program's parameters (``program.param_names()``, double, or a
          ``const double*`` of C values for a per-column parameter); ``G`` and ``stage_elems``
          from :func:`launch_plan`; then ``out``/``out_kind`` (per-row values, or the 0-d
          reduced value), ``nbad``, and the reduction arguments ``w``/``w_kind``/``w_step``
          (None = weight 1), ``partials`` (4 doubles per block; None = write per-row values),
          ``counter`` (one zeroed uint32 per stream, reset by the kernel), ``result``
          (5 doubles: value, Σw·ℓ, Σw, count, bad labels) and ``mode`` (0 sum,
          1 sum_over_batch_size, 2 mean_with_sample_weight).
``flat``  single-Sum elementwise programs on C-contiguous inputs: the element pointers, ``N``
          (all elements), ``C`` (row length), scalar parameters, ``out``/``out_kind`` and the
          same reduction arguments; ``partials`` None writes one value per element (C == 1).
          Per-element weights (``w_step`` 1) only with C == 1.

The counter must not be shared by launches that may run at the same time (one per stream).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from ...program import RowProgram
from . import nvrtc, templates

__all__ = ["compile_program", "CompiledProgram", "launch_plan", "LaunchPlan"]

_CACHE: dict[tuple, "CompiledProgram"] = {}
_LOCK = threading.Lock()


@dataclass
class CompiledProgram:
    program: RowProgram
    dtype: str
    column_params: tuple[str, ...]
    source: str
    module: Any
    kernels: dict[str, Any]  # kind ("rows", "flat") → cupy.RawKernel
    names: dict[str, str]


def _fingerprint(program: RowProgram) -> str:
    fp = getattr(program, "fingerprint")
    return fp() if callable(fp) else fp


def compile_program(program: RowProgram, dtype: str, column_params: tuple[str, ...] = ()) -> CompiledProgram:
    """The kernels of ``program`` for inputs of ``dtype`` (float16, bfloat16, float32, float64),
    compiled once per (program, dtype, column parameters, device) by CuPy's NVRTC path.

    The kernels are ``extern "C"``, so they are looked up by their plain names and need no
    ``name_expressions`` (which exist for C++ template kernels whose names are mangled)."""
    import cupy  # the first GPU call only

    dev = cupy.cuda.runtime.getDevice()
    key = (_fingerprint(program), dtype, tuple(column_params), dev)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        source = templates.program_source(program, dtype, tuple(column_params))
        names = templates.kernel_names(program, dtype, tuple(column_params))
        options = ("-std=c++17",) + tuple(f"-I{d}" for d in nvrtc.include_dirs())
        module = cupy.RawModule(code=source, options=options)
        kernels = {kind: module.get_function(name) for kind, name in names.items()}
        out = CompiledProgram(program, dtype, tuple(column_params), source, module, kernels, names)
        _CACHE[key] = out
        return out


@dataclass(frozen=True)
class LaunchPlan:
    grid: int
    block: int
    G: int  # lanes per row (1..32), 0 = one block per row
    stage_elems: int  # elements of each staged array in dynamic shared memory (0 = none)
    shared_bytes: int  # dynamic shared memory to launch with


def launch_plan(program: RowProgram, dtype: str, R: int, C: int, sm_count: int,
                max_dynamic_shared: int = 48 * 1024, column_params: tuple[str, ...] = ()) -> LaunchPlan:
    """Grid and group size of the ``rows`` kernel for R rows of C elements.

    A function of the shape and the device's SM count only, so a call's bits do not change
    from run to run. Rows up to 32 elements get 1..32 lanes (about one element per lane), rows
    up to 1024 elements a whole warp, longer rows a block; block rows read more than once are
    staged in shared memory when they fit ``max_dynamic_shared``: the dynamic shared memory a
    launch of the kernel may have, 48 KiB less the kernel's static shared memory
    (``RawKernel.shared_size_bytes``) unless it opted in to more."""
    block = templates.GL_BLOCK
    if C > 1024:
        G = 0
        groups_per_block = 1
    else:
        G = 1 << max(0, min(5, math.ceil(math.log2(max(C, 1)))))
        groups_per_block = block // G
    blocks_needed = max(1, -(-R // groups_per_block))
    grid = max(1, min(blocks_needed, 8 * max(sm_count, 1)))
    stage_elems, shared = 0, 0
    if G == 0:
        g = templates._gen(program, tuple(column_params))
        staged = g.staged()
        item = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype]
        elems = -(-C // 8) * 8  # keep each staged array 16-byte aligned
        # the rounded-up size is what the launch asks for: it must fit, not just the row
        if staged and len(staged) * elems * item <= max_dynamic_shared:
            stage_elems = elems
            shared = len(staged) * stage_elems * item
    return LaunchPlan(grid, block, G, stage_elems, shared)
