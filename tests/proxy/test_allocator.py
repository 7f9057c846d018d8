"""KTP_TUNE_ALLOCATOR: frame-sized buffers are reused from the heap, not mapped afresh each time.

The effect is measured the way it shows up in production: page faults while the process joins
and frees 1 MiB buffers, as it does for every Fetch response it holds. Each case runs in its
own interpreter, since the allocator's settings are process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from proxy.allocator import keep_large_buffers_on_heap

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the tuning is for glibc on Linux"
)

_PAGE_FAULTS = textwrap.dedent(
    """
    import os, resource, sys
    from proxy.allocator import keep_large_buffers_on_heap
    if sys.argv[1] == "tuned":
        assert keep_large_buffers_on_heap()
    pieces = [os.urandom(256 * 1024) for _ in range(4)]
    b"".join(pieces)  # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        frame = b"".join(pieces)  # a 1 MiB held frame, as the frame scanner builds it
        records = frame[100:]  # and the copy of its records kio makes
        del frame, records
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PAGE_FAULTS, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


def test_tuning_is_available_here() -> None:
    assert keep_large_buffers_on_heap() is True


def test_tuned_allocator_reuses_large_buffers_instead_of_faulting_in_new_pages() -> None:
    default, tuned = _page_faults("default"), _page_faults("tuned")
    # 200 rounds of two 1 MiB buffers: ~100k faults when every buffer is a new mapping.
    assert default > 20_000, f"the default allocator no longer maps large buffers ({default})"
    assert tuned < default / 20, f"tuned {tuned} vs default {default} page faults"
