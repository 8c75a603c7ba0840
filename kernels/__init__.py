"""Backend kernel machinery of gpuloss, installed as ``gpuloss.kernels``.

``numba/`` generates fused CPU kernels from the row programs; ``cupy/`` translates the same
terms to CUDA. Nothing here holds per-loss code, and nothing here is imported by
``import gpuloss``: each backend is imported on its first call.
"""
