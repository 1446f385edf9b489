"""The analysis worker's allocator setting (``shared.memory``, issue 27 round 9): the next
image reuses the last one's freed buffers instead of the kernel faulting in and zeroing fresh
pages for it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A pass's worth of full-size buffers (four 1024 x 768 RGB images), allocated and written in a
# thread (the engine's host lanes are threads, each with its own malloc arena) and freed, 30
# times; the page faults of the whole loop, counted by the process itself.
_PASSES = 30
_BUFFERS = 4
_PAGES_PER_BUFFER = 768 * 1024 * 3 // 4096
_PROBE = f"""
import json, resource, sys, threading
import numpy as np
from shared import memory
took = memory.keep_freed_memory_for_reuse() if sys.argv[1] == "keep" else None
faults = {{}}
def passes():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range({_PASSES}):
        buffers = [np.full((768, 1024, 3), i, np.uint8) for _ in range({_BUFFERS})]
        del buffers
    faults["n"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
thread = threading.Thread(target=passes)
thread.start()
thread.join()
print(json.dumps({{"took": took, "faults": faults["n"]}}))
"""


def _faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120,
                          check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")
def test_freed_image_buffers_are_reused_by_the_next_pass_not_faulted_in_again():
    one_pass = _BUFFERS * _PAGES_PER_BUFFER
    default, kept = _faults("default"), _faults("keep")
    if not kept["took"]:
        pytest.skip("this C library is not glibc: mallopt is not there")
    # Only the first pass faults its buffers in; every later one reuses them.
    assert kept["faults"] < 2 * one_pass, kept
    # glibc's own sliding thresholds give a thread arena's freed top back after each pass, so
    # without the setting each pass faults (and the kernel zeroes) its buffers again.
    assert default["faults"] > 10 * one_pass, default
