"""The driver keeps freed device memory in its pool between calls (`Driver._keep_pool_memory`),
checked against a stand-in for libcuda that records the calls."""

from __future__ import annotations

import pytest

from tdsl.runtime import cuda_driver

TOTAL = 80 << 30


class FakeLibcuda:
    """Answers every driver call with success; records the pool attribute set."""

    def __init__(self, refuse_pool: bool = False):
        self.refuse_pool = refuse_pool
        self.threshold: tuple[int, int] | None = None

    def cuDeviceGetCount(self, count):
        count._obj.value = 1
        return 0

    def cuDeviceTotalMem_v2(self, total, device):
        total._obj.value = TOTAL
        return 0

    def cuDeviceGetDefaultMemPool(self, pool, device):
        pool._obj.value = 1234
        return 100 if self.refuse_pool else 0

    def cuMemPoolSetAttribute(self, pool, attribute, value):
        self.threshold = (attribute, value._obj.value)
        return 0

    def cuMemAllocAsync(self, *args):
        return 0

    def __getattr__(self, name):
        if not name.startswith("cu"):
            raise AttributeError(name)
        return lambda *args: 0


def test_pool_keeps_half_the_memory_by_default(monkeypatch):
    monkeypatch.delenv("TDSL_CUDA_POOL_KEEP_BYTES", raising=False)
    lib = FakeLibcuda()
    drv = cuda_driver.Driver(lib, 0)
    assert drv.pool_keep_bytes == TOTAL // 2
    assert lib.threshold == (cuda_driver._CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, TOTAL // 2)


@pytest.mark.parametrize("setting,kept", [("0", 0), ("1048576", 1 << 20)])
def test_pool_threshold_follows_the_environment(monkeypatch, setting, kept):
    monkeypatch.setenv("TDSL_CUDA_POOL_KEEP_BYTES", setting)
    lib = FakeLibcuda()
    assert cuda_driver.Driver(lib, 0).pool_keep_bytes == kept
    assert lib.threshold[1] == kept


def test_a_refused_pool_is_not_an_error():
    assert cuda_driver.Driver(FakeLibcuda(refuse_pool=True), 0).pool_keep_bytes == 0
