"""numba compilation of the codecs' integer kernels, when the `fast` extra is installed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def njit_or_none(fn: Callable[..., Any]) -> Callable[..., int] | None:
    """`fn` compiled by numba (nopython, GIL released, cached on disk next to its module, or in the user's
    or NUMBA_CACHE_DIR's cache), or None without numba; callers then run the plain-Python path, which gives
    the same results. Where numba finds no writable cache (a read-only install run by a user without a
    writable home, a hardened service) the kernel is compiled in memory each run instead: slower to start,
    never a crash."""
    try:
        import numba
    except ImportError:
        return None
    try:
        return cast(Callable[..., int], numba.njit(cache=True, nogil=True)(fn))
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        log.info("numba cannot cache %s (%s); compiling it in memory", fn.__name__, exc)
        return cast(Callable[..., int], numba.njit(cache=False, nogil=True)(fn))


def jitable(fn: F) -> F:
    """`fn` itself, which numba-compiled kernels may now call too: numba compiles it (nopython) into each
    kernel that calls it, while plain-Python callers keep calling the plain function. A kernel compiled
    with `njit_or_none` can call only such helpers and other compiled functions, so register the helpers
    before the kernel's first call. Does nothing without numba (the kernels then run as plain Python)."""
    try:
        from numba.extending import register_jitable
    except ImportError:
        return fn
    return cast(F, register_jitable(fn))
