"""The device worker: one thread that runs every forward pass, one batch at a time.

A single thread owns the device, so batches from different encoders never compete for
it, and the asyncio lock in front of it decides whose batch runs next (FIFO).
"""

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from threadpoolctl import MKLController, threadpool_limits
from threadpoolctl import register as register_threadpool_controller

from app.engine.memory import release_free_heap

logger = logging.getLogger(__name__)

T = TypeVar("T")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _TorchMKLController(MKLController):
    """MKL as linked into libtorch_cpu, where threadpoolctl's own MKL controller does not look.

    Torch links MKL statically, so its per-thread count is reached only through the
    MKL_* functions that libtorch_cpu exports.
    """

    filename_prefixes = ("libtorch_cpu",)
    check_symbols = ("MKL_Get_Max_Threads", "MKL_Set_Num_Threads_Local")


register_threadpool_controller(_TorchMKLController)

# OpenMP and torch's MKL, each limited for the calling thread only. numpy's OpenBLAS
# keeps its own process-wide setting.
_ONE_THREAD_PER_CALLER = {"openmp": 1, "libtorch_cpu": 1}


def keep_torch_on_calling_thread() -> threadpool_limits:
    """Make torch operators on the calling thread run on that thread alone; return the limiter to undo it.

    Used on every thread but the device thread: the preprocessing pool and the event
    loop (fusion heads). libgomp keeps a team of worker threads for every thread that
    opens a parallel region. Once the process has more OpenMP threads than CPU cores,
    libgomp shortens the spinning of all of them. On 2 cores, one parallel operator on
    the event loop made every later forward pass of the device thread 2 to 3 times
    slower (GE2E at batch 1: 12 ms before, 40 ms after). The teams of the preprocessing
    threads slowed those passes by 1.3 to 4 times. torch.set_num_threads cannot help
    here, because it changes every thread's count.
    """
    # torch sets a thread's OpenMP and MKL counts on its first parallel operator. Let it
    # do that first, so that the limit below stays in force for this thread.
    torch.get_num_threads()
    return threadpool_limits(limits=_ONE_THREAD_PER_CALLER)


def _run_in_inference_mode(fn: Callable[..., T], *args: object) -> T:
    with torch.inference_mode():
        return fn(*args)


class DeviceWorker:
    """The device thread, and the lock that hands it to one batch at a time.

    After `idle_trim_s` seconds without a batch, the worker returns the heap's free
    memory to the OS (0 turns that off). It runs on the device thread, so it never
    overlaps a forward pass; a batch that arrives meanwhile waits for it (milliseconds).
    """

    def __init__(
        self, device: torch.device, idle_trim_s: float = 0.0, trim: Callable[[], bool] = release_free_heap
    ) -> None:
        self.device = device
        self.idle_trim_s = idle_trim_s
        self._trim = trim
        self._trim_timer: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")
        self.lock = asyncio.Lock()
        self.busy = False

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the device thread; the caller must hold `lock`."""
        loop = asyncio.get_running_loop()
        self.busy = True
        try:
            call = functools.partial(_run_in_inference_mode, fn, *args)
            return await loop.run_in_executor(self._executor, call)
        finally:
            self.busy = False
            self._rearm_trim(loop)

    def _rearm_trim(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.idle_trim_s <= 0:
            return
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = loop.call_later(self.idle_trim_s, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim_timer = None
        if self.lock.locked():  # a batch has the device or is waiting for it, so check again later
            self._rearm_trim(asyncio.get_running_loop())
            return
        self._executor.submit(self._trim_and_log)

    def _trim_and_log(self) -> None:
        started = time.perf_counter()
        if self._trim():
            logger.debug("returned free heap memory to the OS in %.1f ms", 1000 * (time.perf_counter() - started))

    async def run_setup(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the device thread outside inference mode, such as loading.

        Loading the models on the thread that runs them keeps every large torch
        operator on one thread, and so on one libgomp thread team.
        """
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def shutdown(self) -> None:
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
