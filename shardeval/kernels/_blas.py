"""BLAS ``?syrk`` called without the GIL.

SciPy's f2py wrappers (``scipy.linalg.blas.ssyrk``) hold the GIL for the whole update, so Dask
threads cannot read the next shard, or run another update, while one runs. SciPy also exports
the raw Fortran BLAS symbols for Cython (``scipy.linalg.cython_blas``, a public API); calling
them through ``ctypes`` releases the GIL for the duration of the call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
from scipy.linalg import cython_blas

_ptr = ctypes.POINTER
_c_int = ctypes.c_int


def _fortran_function(name: str, real: type) -> Callable[..., None]:
    capsule = cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    # uplo, trans, n, k, alpha, a, lda, beta, c, ldc — Fortran passes everything by reference.
    prototype = ctypes.CFUNCTYPE(
        None,
        ctypes.c_char_p,
        ctypes.c_char_p,
        _ptr(_c_int),
        _ptr(_c_int),
        _ptr(real),
        ctypes.c_void_p,
        _ptr(_c_int),
        _ptr(real),
        ctypes.c_void_p,
        _ptr(_c_int),
    )
    return prototype(address)


_SYRK = {
    np.dtype(np.float32): (_fortran_function("ssyrk", ctypes.c_float), ctypes.c_float),
    np.dtype(np.float64): (_fortran_function("dsyrk", ctypes.c_double), ctypes.c_double),
}


def syrk_upper(a: np.ndarray, c: np.ndarray, beta: float) -> None:
    """In place: upper triangle of ``c`` ← a @ a.T + beta·c. The strictly-lower part is untouched.

    Args:
        a: (d, k) Fortran-ordered (e.g. the transpose of a C-ordered (k, d) block).
        c: (d, d) Fortran-ordered, same dtype (float32 or float64).
        beta: scale of the existing ``c``.
    """
    fn, real = _SYRK[a.dtype]
    d, k = a.shape
    if c.dtype != a.dtype or c.shape != (d, d) or not c.flags.f_contiguous:
        raise ValueError(f"c must be a ({d}, {d}) Fortran-ordered {a.dtype} array")
    if not a.flags.f_contiguous:
        raise ValueError("a must be Fortran-ordered (pass the transpose of a C-ordered block)")
    if d == 0 or k == 0:
        return
    n_, k_, lda, ldc = _c_int(d), _c_int(k), _c_int(d), _c_int(d)
    fn(
        b"U",
        b"N",
        ctypes.byref(n_),
        ctypes.byref(k_),
        ctypes.byref(real(1.0)),
        a.ctypes.data,
        ctypes.byref(lda),
        ctypes.byref(real(beta)),
        c.ctypes.data,
        ctypes.byref(ldc),
    )
