"""Arrays on the GPU and the CUDA device, for kernels loaded with `target="cuda"`.

    import tdsl, tdsl.cuda
    mod = tdsl.load("softmax.tdsl", target="cuda")
    if tdsl.cuda.is_available():
        dx = tdsl.cuda.to_device(x)          # a DeviceArray: a copy of x in GPU memory
        dy = mod.softmax(dx)                 # stays on the GPU: dy is a DeviceArray
        y = dy.copy_to_host()                # (or np.asarray(dy))

Kernels also take, in place, any object with `__cuda_array_interface__` or with `__dlpack__`
on a CUDA device (CuPy, PyTorch, JAX), and `DeviceArray` exports itself through DLPack
(`torch.from_dlpack(dy)`). Importing this module needs neither CUDA nor the compiler.
"""

from __future__ import annotations

from tdsl.runtime.cuda import CudaError, CudaUnavailableError, DeviceArray, to_device
from tdsl.runtime.cuda_driver import DeviceInfo, driver, system_driver
from tdsl.runtime.device_array import DeviceView, device_view, is_device_array

__all__ = ["CudaError", "CudaUnavailableError", "DeviceArray", "DeviceInfo", "DeviceView",
           "device_info", "device_name", "device_view", "is_available", "is_device_array",
           "to_device"]


def is_available() -> bool:
    """True when this machine's CUDA driver loads and has the device tdsl would use (device 0
    or `$TDSL_CUDA_DEVICE`). Initializes the driver on the first call; never raises. A driver
    installed with `tdsl.runtime.cuda_driver.set_driver` (the test emulator) does not count."""
    try:
        system_driver()
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False
    return True


def device_info() -> DeviceInfo:
    """The device kernels run on: name, compute capability, SM count, memory bandwidth.
    Raises `CudaUnavailableError` (naming what is missing) where there is none."""
    return driver().info


def device_name() -> str | None:
    """The name of this machine's CUDA device (as `is_available` finds it), or None where
    there is none; never raises."""
    try:
        return system_driver().info.name
    except Exception:  # noqa: BLE001 - any failure means: no device
        return None
