"""Running a test's work on several threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(work: Callable[[int], object], count: int) -> list[str]:
    """Call `work(index)` on `count` threads that start together (a barrier); return one line
    per thread whose call raised, empty when none did."""
    errors: list[str] = []
    barrier = threading.Barrier(count)

    def body(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(f"thread {index}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=body, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors
