"""Stage processes tune glibc's allocator so per-frame buffers are reused, not mapped afresh on every frame."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamer.pipeline.runtime import tune_allocator

# Allocates and fills four 1 MiB buffers and frees them, 200 times over (as a stage does with a frame's flow
# buffers or patches), and prints the page faults that took: memory returned to the system after each
# round faults in again, 256 pages a buffer. By default glibc maps the first buffers of this size by
# themselves and then, its threshold raised, takes them from the heap, but trims the heap's free top
# (beyond twice that size) back to the system every round.
FAULTS = """
import resource, sys
import numpy as np
from streamer.pipeline.runtime import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
def one_round():
    buffers = [np.ones(1 << 20, np.uint8) for _ in range(4)]
    del buffers
one_round()  # the first round faults in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_tuned_allocator_reuses_freed_buffers():
    if not tune_allocator():
        pytest.skip("this C library has no mallopt to tune")
    assert page_faults("default") > 200 * 500  # most of the 4 x 256 pages of every round
    assert page_faults("tuned") < 200  # kept in the heap and reused
