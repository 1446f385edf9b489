"""glibc's allocator, set per process role (``mallopt``, ``malloc_trim``). Each call is a no-op
that returns False where the C library is not glibc.

The two roles want opposite things of a freed image-sized block:
- the API (``return_image_memory_promptly``) gives it back to the OS at once: an upload can be
  a 40-megapixel PNG, and requests come and go;
- the analysis worker (``keep_freed_memory_for_reuse``) keeps it for the next image: every
  image allocates the same few full-size buffers, and a block served by a fresh mapping, or
  trimmed off a heap after each free, is page-faulted and zeroed again by the kernel on
  every use (issue 27, round 9: 4.3 of its 11.1 ms kernel CPU per image was zeroing pages).
  It gives them back itself once its passes pause (``release_freed_memory``).
"""

from __future__ import annotations

import ctypes
from functools import cache

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold over HEAP_MAX_SIZE / 2: 32 MiB on 64-bit.
MMAP_THRESHOLD_MAX = 32 << 20


@cache
def _libc() -> ctypes.CDLL | None:
    """The C library the process already has loaded (``dlopen(NULL)``): no search for it, which
    ``ctypes.util.find_library`` does by running ``ldconfig`` in a subprocess."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def mallopt(parameter: int, value: int) -> bool:
    """glibc's ``mallopt``; whether the setting took."""
    libc = _libc()
    try:
        return libc is not None and bool(libc.mallopt(parameter, value))
    except AttributeError:
        return False


def return_image_memory_promptly(threshold: int = 1 << 20) -> bool:
    """Serve every allocation over ``threshold`` bytes (Pillow's 16 MiB image blocks) with its
    own mapping, so a decoded photo's memory goes back to the OS when it is freed. glibc
    otherwise raises its threshold after the first big free and keeps later images in the
    heap: measured, four 40-megapixel PNGs left the API 220 MiB larger for good."""
    return mallopt(M_MMAP_THRESHOLD, threshold)


def keep_freed_memory_for_reuse(mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = 256 << 20) -> bool:
    """Serve allocations up to ``mmap_threshold`` from the heap and leave up to
    ``trim_threshold`` of freed memory at a heap's top in place, so the next image reuses the
    last one's pages instead of faulting fresh ones. Setting either turns off glibc's own
    sliding thresholds, which still gave every thread arena's freed top back (and the kernel
    zeroed it again on the next image). Whoever calls this trims the heap itself
    (``release_freed_memory``) when it goes idle."""
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) and mallopt(M_TRIM_THRESHOLD, trim_threshold)


def release_freed_memory() -> bool:
    """Hand freed heap pages back to the OS. glibc keeps them for reuse, so without this a
    worker's RSS stays at its high-water mark (measured: ~150 MB after loading the models on
    OpenVINO at 512). Whether libc has ``malloc_trim``."""
    libc = _libc()
    try:
        if libc is None:
            return False
        libc.malloc_trim(0)
        return True
    except AttributeError:
        return False
