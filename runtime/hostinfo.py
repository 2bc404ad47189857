"""What the host offers that compiled code depends on, read cheaply (no LLVM, no dataclasses):
the runtime's cache keys use it on every load, the schedules to size their tiles."""

from __future__ import annotations

import os

_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"


def _size(text: str) -> int:
    """Bytes of a sysfs cache size such as `32K` or `16M`."""
    scale = {"K": 1024, "M": 1024 * 1024, "G": 1024 ** 3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _shared_cpus(text: str) -> int:
    """How many CPUs a sysfs `shared_cpu_list` such as `0-3,8-11` names."""
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def cache_sizes() -> dict[str, int]:
    """The data caches of the first CPU from Linux's sysfs, as `Host` fields (`l1d`, `l2`,
    `l3_share`); those it cannot read are left out, and keep `Host`'s defaults."""
    sizes: dict[str, int] = {}
    try:
        entries = sorted(os.listdir(_CACHE_DIR))
    except OSError:
        return sizes
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            fields = {name: open(os.path.join(_CACHE_DIR, entry, name)).read().strip()
                      for name in ("level", "type", "size", "shared_cpu_list")}
            level, size = int(fields["level"]), _size(fields["size"])
            shared = _shared_cpus(fields["shared_cpu_list"])
        except (OSError, ValueError):
            continue
        if fields["type"] == "Instruction":
            continue
        if level == 1:
            sizes["l1d"] = size
        elif level == 2:
            sizes["l2"] = size
        elif level == 3:
            sizes["l3_share"] = size // max(shared, 1)
    return sizes


def usable_cores() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
