"""Facts about the machine a benchmark ran on, and waiting for it to be quiet."""

import logging
import os
import platform
import re
import subprocess
import time
from typing import Any

import torch

logger = logging.getLogger("bench.machine")

LOAD_POLL_S = 30.0


def lscpu_model_name() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    match = re.search(r"^Model name:\s*(.+)$", output, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def memory_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def wrk_version() -> str:
    completed = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    first_line = (completed.stdout or completed.stderr).splitlines()[0]
    return first_line.split(" Copyright")[0].strip()


def machine_info() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "cpu_model": lscpu_model_name(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_total_bytes(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "wrk": wrk_version(),
        "kernel": platform.release(),
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def wait_for_quiet(threshold: float, max_wait_s: float) -> dict[str, Any]:
    """Sleep in 30 s steps until the 1-minute load average is at most `threshold`, for at most `max_wait_s`.

    Returns the load averages before and after, and the seconds waited. `quiet` is False
    when the load never dropped: the figures that follow then come from a busy machine.
    """
    before = load_average()
    started = time.monotonic()
    while os.getloadavg()[0] > threshold and time.monotonic() - started < max_wait_s:
        logger.info(
            "1-minute load average %.2f is above %.2f; waiting (%.0f of at most %.0f s)",
            os.getloadavg()[0],
            threshold,
            time.monotonic() - started,
            max_wait_s,
        )
        time.sleep(min(LOAD_POLL_S, max(1.0, max_wait_s - (time.monotonic() - started))))
    after = load_average()
    return {
        "threshold": threshold,
        "before": before,
        "after": after,
        "waited_s": round(time.monotonic() - started, 1),
        "quiet": after[0] <= threshold,
    }
