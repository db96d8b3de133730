"""Giving the CPU memory that torch has freed back to the operating system.

A long loop of large CPU tensors whose sizes change from pass to pass (importance sampling with K =
5000 particles one image at a time: a VampPrior's [K, 500] float64 matrices beside the decoder's [K,
784] logits) fragments glibc's heap: the freed blocks stay with the process, which grew to 24 GB and
was killed in a 10k-image evaluation that needs about 1 GB. ``malloc_trim(0)`` after each pass
returns the free pages.
"""

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory():
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``); True when it could, else
    a no-op (False)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
