"""The host's caches as the schedules see them (`tdsl.runtime.hostinfo`), and the contraction
tiles sized from them (`schedule_contraction.contraction_tiles`)."""

from pathlib import Path

import pytest

import tdsl.runtime.hostinfo as hostinfo
from tdsl.schedule_contraction import NC_MAX, contraction_tiles
from tdsl.schedule_ir import Host


def _cache(root: Path, index: int, level: int, kind: str, size: str, shared: str) -> None:
    entry = root / f"index{index}"
    entry.mkdir(parents=True)
    for name, text in (("level", str(level)), ("type", kind), ("size", size),
                       ("shared_cpu_list", shared)):
        (entry / name).write_text(text + "\n")


def test_sysfs_sizes_and_sharing(tmp_path, monkeypatch):
    _cache(tmp_path, 0, 1, "Data", "48K", "0")
    _cache(tmp_path, 1, 1, "Instruction", "32K", "0")
    _cache(tmp_path, 2, 2, "Unified", "2048K", "0")
    _cache(tmp_path, 3, 3, "Unified", "32M", "0-7,16-23")
    monkeypatch.setattr(hostinfo, "_CACHE_DIR", str(tmp_path))
    assert hostinfo.cache_sizes() == {"l1d": 48 * 1024, "l2": 2 * 1024 * 1024,
                                      "l3_share": 2 * 1024 * 1024}


def test_unreadable_caches_are_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(hostinfo, "_CACHE_DIR", str(tmp_path / "missing"))
    assert hostinfo.cache_sizes() == {}
    _cache(tmp_path, 0, 1, "Data", "32K", "0")
    _cache(tmp_path, 2, 2, "Unified", "garbage", "0")
    monkeypatch.setattr(hostinfo, "_CACHE_DIR", str(tmp_path))
    assert hostinfo.cache_sizes() == {"l1d": 32 * 1024}
    assert Host(**hostinfo.cache_sizes()).l2 == Host().l2  # the default stays


def test_usable_cores_is_positive():
    assert hostinfo.usable_cores() >= 1


@pytest.mark.parametrize("bits, nr", [(32, 16), (64, 8), (16, 32)])
def test_tiles_follow_the_caches(bits, nr):
    """KC: a KC x NR panel of B fills half of L1; NC: the KC x NC panel half of the core's
    share of L3, capped; both static and multiples of what the loops step by."""
    big = contraction_tiles(Host(256, 16, 2, 32 * 1024, 512 * 1024, 16 * 1024 * 1024), bits)
    assert (big.mr, big.nr, big.mc, big.kc) == (6, nr, 72, 256)
    assert big.nc == NC_MAX
    small = contraction_tiles(Host(256, 16, 2, 32 * 1024, 512 * 1024, 256 * 1024), bits)
    assert small.nc == max(256 * 1024 // (2 * 256 * bits // 8) // nr * nr, nr)
    assert small.nc % nr == 0 and small.nc < NC_MAX
    wide = contraction_tiles(Host(512, 32, 8, 48 * 1024, 2 * 1024 * 1024, 1536 * 1024), 32)
    assert (wide.mr, wide.nr, wide.kc) == (8, 32, 192)
