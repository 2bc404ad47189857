"""Test-session settings: compiled kernels go to a private cache, not the user's."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("TDSL_CACHE_DIR", tempfile.mkdtemp(prefix="tdsl-test-cache-"))


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thr")
def on_threads(request):
    """Run the test with tdsl's thread count at 1, then at 2; the count is put back after."""
    from tdsl.runtime import threads

    before = threads.num_threads()
    threads.set_num_threads(request.param)
    yield request.param
    threads.set_num_threads(before)
