"""Start the real service with uvicorn on 127.0.0.1 for tests, and stop it afterwards."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """Return the server's resident memory, read from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")


@contextmanager
def run_server(
    env: Mapping[str, str], log_path: Path, wait_ready: bool = True, port: int | None = None
) -> Iterator[RunningServer]:
    """Run `uvicorn app.main:app` with extra MMS_* variables until the block ends."""
    port = port or free_port()
    # Tests stop servers often; the drain before shutdown only matters behind a balancer.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "MMS_SHUTDOWN_DRAIN_S": "0", **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if wait_ready:
            wait_until_ready(server)
        yield server
    finally:
        stop_server(server)


def wait_until_ready(server: RunningServer, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"server not ready after {timeout_s} s:\n{server.log()[-3000:]}")


def stop_server(server: RunningServer, timeout_s: float = 30.0) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
