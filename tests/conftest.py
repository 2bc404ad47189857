"""Test-session settings: compiled kernels go to a private cache, not the user's."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TDSL_CACHE_DIR", tempfile.mkdtemp(prefix="tdsl-test-cache-"))
