"""Compute kernels for minidl, one module per backend with the same functions and contracts.

``numpy_ref`` is the readable reference; ``cpu`` (Numba) and ``cuda`` (numba.cuda) are the same
functions made fast and are tested against it.  This package never imports ``minidl``.
"""
