"""Find each encoder's best batch size on the current device, and cache it on disk.

Throughput per item usually rises with the batch size until the device is saturated,
then stays flat or falls: on a CPU, larger image batches can run slower per image.
The search times batches of 1, 2, 4, ... rows of the encoder's example input, up to the
largest batch the limits allow, and keeps the knee: the smallest size that no larger
size beats by more than KNEE_GAIN.
"""

import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from app.encoders.base import Encoder

logger = logging.getLogger(__name__)

# A larger batch must raise items/s by this fraction to replace a smaller one.
KNEE_GAIN = 0.05
TIMED_PASSES = 5
# Passes at the largest batch before any timing. On the CPU the first passes run
# slower at every size, until the allocator's heap has grown to the peak. With
# glibc's dynamic mmap threshold, EfficientNet-Lite0 at batch 1 ran up to 3 times
# slower for its first 20 or so passes when no larger batch had run yet.
HEAP_WARMUP_PASSES = 3


def device_label(device: torch.device) -> str:
    """Name the hardware that a measured batch size belongs to."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()} cores:{torch.get_num_threads()} threads"


def measure_best_batch(encoder: Encoder, largest: int) -> tuple[int, dict[int, float]]:
    """Time forward passes at 1, 2, 4, ... rows up to `largest`; return the knee and items/s per size."""
    prepared = encoder.preprocess(encoder.example_payload())
    sizes = [1 << power for power in range(largest.bit_length()) if 1 << power <= largest]
    rates: dict[int, float] = {}
    best = 1
    with torch.inference_mode():
        for _ in range(HEAP_WARMUP_PASSES):
            encoder.forward([prepared] * sizes[-1])
        for size in sizes:
            batch = [prepared] * size
            encoder.forward(batch)  # the first pass at a new shape pays one-off costs
            timings = []
            for _ in range(TIMED_PASSES):
                started = time.perf_counter()
                encoder.forward(batch)
                timings.append(time.perf_counter() - started)
            rates[size] = size / statistics.median(timings)
            if rates[size] > rates[best] * (1 + KNEE_GAIN):
                best = size
    return best, rates


class BatchSizeCache:
    """Best batch sizes in a JSON file, keyed by device, encoder and the largest allowed batch.

    A missing or unreadable file is an empty cache, and a failed write only logs a
    warning: the cache saves start-up time and is never needed for correctness.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> int | None:
        value = self._read().get(key)
        return value if isinstance(value, int) and value >= 1 else None

    def put(self, key: str, value: int) -> None:
        entries = {**self._read(), key: value}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as file:
                json.dump(entries, file, indent=1, sort_keys=True)
            os.replace(file.name, self.path)
        except OSError as exc:
            logger.warning("could not write the batch-size cache %s: %s", self.path, exc)

    def _read(self) -> dict[str, object]:
        try:
            entries = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the unreadable batch-size cache %s: %s", self.path, exc)
            return {}
        return entries if isinstance(entries, dict) else {}


def best_batch_size(encoder: Encoder, largest: int, device: torch.device, cache: BatchSizeCache) -> int:
    """Return the encoder's best batch size from the cache, measuring and caching it when missing."""
    key = f"{device_label(device)}|{encoder.model_id}@{encoder.revision}|max {largest}"
    cached = cache.get(key)
    if cached is not None:
        logger.info("batch size %d for %s from the cache %s", cached, encoder.model_id, cache.path)
        return min(cached, largest)
    best, rates = measure_best_batch(encoder, largest)
    summary = ", ".join(f"{size}: {rate:.1f}" for size, rate in rates.items())
    logger.info("batch size %d for %s, measured in items/s per batch size: %s", best, encoder.model_id, summary)
    cache.put(key, best)
    return best
