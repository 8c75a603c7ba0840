"""GPU backend machinery: the row programs' terms translated to CUDA, and kernel templates.

``translate``   Term → ``__device__`` functions (``e_<name>`` over T, ``f_<name>`` in double),
                and the vocabulary as CUDA device functions
``templates``   per program and dtype, the ``extern "C"`` kernels (row kernels with groups of
                lanes or blocks per row, flat elementwise sweeps, deterministic grid reduction)
``nvrtc``       NVRTC through ctypes: compile the sources without a GPU (CI checks every kernel)
``backend``     ``compile_program(program, dtype)`` with CuPy's RawModule, imported lazily

Importing this package imports neither CuPy nor NVRTC.
"""
