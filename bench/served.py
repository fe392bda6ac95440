"""The served side: start the service, drive it with wrk, read its metrics and memory."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.inputs import Body

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
WRK_TIMEOUT_S = 30
"""wrk's per-request timeout; its default of 2 s would count slow batches under load as errors."""


@dataclass(slots=True)
class Server:
    url: str
    process: subprocess.Popen[bytes] | None
    log_path: Path | None
    ready_s: float | None
    """Seconds from process start to the first /readyz 200; None for a server given by URL."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(env: Mapping[str, str], log_path: Path) -> Server:
    """Start `uvicorn app.main:app` on 127.0.0.1, as `make serve` does, and wait for /readyz 200."""
    port = free_port()
    # The SIGTERM drain only matters behind a load balancer; the benchmark stops servers
    # often. The malloc arenas match `make serve` and the container, unless set outside.
    full_env = {"MALLOC_ARENA_MAX": "2", **os.environ, "PYTHONUNBUFFERED": "1", "MMS_SHUTDOWN_DRAIN_S": "0", **env}
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path, None)
    try:
        wait_until_ready(server)
    except BaseException:
        stop_server(server)
        raise
    server.ready_s = time.perf_counter() - started
    return server


def wait_until_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.process.returncode}; see {server.log_path}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the server was not ready after {timeout_s:g} s; see {server.log_path}")


def stop_server(server: Server) -> None:
    """Send SIGTERM and wait; send SIGKILL if the server is still running after 30 s."""
    if server.process is None or server.process.poll() is not None:
        return
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """Return VmRSS (or another size field, such as the peak VmHWM) of process `pid`, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field} line")


def check_body(url: str, body: Body) -> None:
    """POST `body` once and raise unless the response is 200, so wrk never measures error responses."""
    response = httpx.post(url, content=body.path.read_bytes(), headers={"Content-Type": body.content_type}, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"POST {url} with {body.path.name} returned {response.status_code}: {response.text[:500]}")


def run_wrk(url: str, body: Body, concurrency: int, duration_s: float, threads: int) -> dict[str, Any]:
    """Run wrk with the POST script for `duration_s` at `concurrency` connections; return its summary.

    `items_per_s` counts only 2xx/3xx responses, and `latency_ms` contains wrk's percentiles.
    """
    command = [
        "wrk",
        f"--threads={min(threads, concurrency)}",
        f"--connections={concurrency}",
        f"--duration={max(1, round(duration_s))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        f"--script={LUA_SCRIPT}",
        url,
        "--",
        str(body.path),
        body.content_type,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + WRK_TIMEOUT_S + 60)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk exited with code {completed.returncode}: {completed.stderr.strip()}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if not lines:
        raise RuntimeError(f"wrk printed no WRK_JSON line; output:\n{completed.stdout}\n{completed.stderr}")
    summary = json.loads(lines[-1].removeprefix("WRK_JSON "))
    seconds = summary["duration_us"] / 1e6
    succeeded = summary["requests"] - summary["errors"]["status"]
    latency = summary["latency_us"]
    return {
        "concurrency": concurrency,
        "duration_s": seconds,
        "requests": summary["requests"],
        "errors": summary["errors"],
        "items_per_s": succeeded / seconds if seconds > 0 else 0.0,
        "latency_ms": {key: value / 1000 for key, value in latency.items()},
    }


def scrape_encoder_metrics(url: str) -> dict[str, dict[str, float]]:
    """Return per-encoder sums and counts of mms_forward_seconds and mms_batch_items from /metrics.

    `batches` counts finished forward passes and `batches_taken` the batches formed, which
    differ by the batch in flight when the scrape happens.
    """
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = {
        "mms_forward_seconds_sum": "forward_s",
        "mms_forward_seconds_count": "batches",
        "mms_batch_items_sum": "items",
        "mms_batch_items_count": "batches_taken",
    }
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is not None:
                found.setdefault(sample.labels["encoder"], {})[key] = sample.value
    return found


def metrics_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Return `after - before` per encoder and value, for the encoders that ran in between."""
    delta: dict[str, dict[str, float]] = {}
    for encoder, values in after.items():
        previous = before.get(encoder, {})
        changed = {key: value - previous.get(key, 0.0) for key, value in values.items()}
        if changed.get("batches", 0) > 0:
            delta[encoder] = changed
    return delta
