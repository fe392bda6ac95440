"""The device worker: one thread that runs every forward pass, one batch at a time.

A single thread owns the device, so batches from different encoders never compete for
it, and the asyncio lock in front of it decides whose batch runs next (FIFO).
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _run_in_inference_mode(fn: Callable[..., T], *args: object) -> T:
    with torch.inference_mode():
        return fn(*args)


class DeviceWorker:
    def __init__(self, device: torch.device) -> None:
        self.device = device
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

    def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on the device thread from synchronous code, such as warm-up."""
        return self._executor.submit(_run_in_inference_mode, fn, *args).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
