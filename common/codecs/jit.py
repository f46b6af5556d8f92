"""numba compilation of the codecs' integer kernels, when the `fast` extra is installed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast


def njit_or_none(fn: Callable[..., Any]) -> Callable[..., int] | None:
    """`fn` compiled by numba (nopython, GIL released, cached on disk next to its module), or None
    without numba; callers then run the plain-Python path, which gives the same results."""
    try:
        import numba
    except ImportError:
        return None
    return cast(Callable[..., int], numba.njit(cache=True, nogil=True)(fn))
