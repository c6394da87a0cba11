"""The memory a demo backend uses or pretends to use, and its vLLM-like sleep state.

``--gpu-memory`` is what it pretends to hold on GPU ``--gpu`` while awake (``--gpu-memory-asleep``
while asleep), published for the fake ``nvidia-smi`` in the fake GPU state directory; with
``--cuda`` it really allocates that much with ``cuMemAlloc`` through ``libcuda.so.1`` (no
compiler, no packages: ctypes only) and frees it while asleep, for checks on a real GPU.
``--ram`` really allocates and touches that much RAM, so /proc sees it.
"""

from __future__ import annotations

import ctypes
import os
import threading

from llamaswap.demo import fake_nvidia_smi


class CudaError(RuntimeError):
    pass


class CudaBlock:
    """One device allocation through the CUDA driver API."""

    def __init__(self, device: int):
        self._cuda = ctypes.CDLL("libcuda.so.1")
        self._check("cuInit", self._cuda.cuInit(0))
        dev = ctypes.c_int()
        self._check("cuDeviceGet", self._cuda.cuDeviceGet(ctypes.byref(dev), device))
        self._ctx = ctypes.c_void_p()
        self._check("cuCtxCreate", self._cuda.cuCtxCreate_v2(ctypes.byref(self._ctx), 0, dev))
        self._ptr: ctypes.c_uint64 | None = None

    def _check(self, what: str, code: int) -> None:
        if code != 0:
            raise CudaError(f"{what} failed with CUDA error {code}")

    def alloc(self, nbytes: int) -> None:
        self.free()
        if nbytes <= 0:
            return
        self._check("cuCtxSetCurrent", self._cuda.cuCtxSetCurrent(self._ctx))
        ptr = ctypes.c_uint64()
        self._check("cuMemAlloc", self._cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(nbytes)))
        self._check("cuMemsetD8", self._cuda.cuMemsetD8_v2(ptr, ctypes.c_ubyte(1),
                                                           ctypes.c_size_t(nbytes)))
        self._ptr = ptr

    def free(self) -> None:
        if self._ptr is not None:
            self._check("cuCtxSetCurrent", self._cuda.cuCtxSetCurrent(self._ctx))
            self._check("cuMemFree", self._cuda.cuMemFree_v2(self._ptr))
            self._ptr = None


class PretendMemory:
    def __init__(self, *, gpu: int = 0, awake: int = 0, asleep: int = 0, ram: int = 0,
                 state_dir: str = "", cuda: bool = False):
        self.gpu = gpu
        self.awake = awake
        self.asleep_bytes = asleep
        self.state_dir = state_dir or os.environ.get(fake_nvidia_smi.ENV, "")
        self.asleep = False
        self.extra = 0  # grown by requests (the "grow_gpu" knob)
        self._lock = threading.Lock()
        self._ram = bytearray(ram)
        for i in range(0, ram, 4096):  # touch every page: resident, as weights would be
            self._ram[i] = 1
        self._cuda = CudaBlock(gpu) if cuda and awake else None
        self._publish()

    @property
    def gpu_used(self) -> int:
        return (self.asleep_bytes if self.asleep else self.awake) + self.extra

    def sleep(self) -> None:
        with self._lock:
            self.asleep = True
            self._publish()

    def wake(self) -> None:
        with self._lock:
            self.asleep = False
            self._publish()

    def grow(self, nbytes: int) -> None:
        with self._lock:
            self.extra += nbytes
            self._publish()

    def _publish(self) -> None:
        if self._cuda is not None:
            self._cuda.alloc(self.gpu_used)
        if self.state_dir and os.path.isdir(os.path.join(self.state_dir, "apps")):
            fake_nvidia_smi.write_json(
                os.path.join(self.state_dir, "apps", f"{os.getpid()}.json"),
                {"gpu": self.gpu, "used": self.gpu_used})

    def close(self) -> None:
        if self.state_dir:
            try:
                os.unlink(os.path.join(self.state_dir, "apps", f"{os.getpid()}.json"))
            except OSError:
                pass
        if self._cuda is not None:
            self._cuda.free()
