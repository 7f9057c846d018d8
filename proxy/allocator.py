"""Keep large frame buffers on the C heap instead of fresh memory maps (glibc only).

A 1 MiB Fetch response is read in pieces, joined into one buffer and, when traced, its records are
copied out by kio. glibc serves every allocation above its mmap threshold (128 KiB until it adapts)
with a new memory map and unmaps it on free, so each such buffer costs a page fault per 4 KiB page
and the kernel work to unmap it: measured here, 1.5 ms per 1 MiB response instead of 0.15 ms
(`benchmarks/exchange_cost.py`, perf-fetch). Raising the threshold makes those buffers come from
the heap, where freed memory is reused; the trim threshold bounds how much freed memory the
process may keep.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

#: mallopt() parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Buffers up to this size come from the heap (glibc's largest allowed value is 32 MiB).
HEAP_BUFFERS_UP_TO = 16 * 1024 * 1024
#: Free memory at the top of the heap above this is given back to the system.
KEEP_FREE_UP_TO = 16 * 1024 * 1024


def keep_large_buffers_on_heap() -> bool:
    """Tune glibc's allocator for frame-sized buffers; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only (not musl)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, HEAP_BUFFERS_UP_TO) == 1
    done = mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_UP_TO) == 1 and done
    if not done:
        log.debug("glibc refused the allocator settings; keeping its defaults")
    return done
