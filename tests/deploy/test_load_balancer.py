"""Two replicas behind Debian's nginx on 127.0.0.1: rolling stops lose no request.

Under steady load for at least 20 s, one replica gets SIGTERM (it drains and exits),
is restarted, and then gets SIGKILL. Clients must see no error in either case, because
the drain finishes what the replica accepted and nginx retries a failed attempt on the
other replica. The figures are written to the test's log for docs/deploy.md.
"""

import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from app.settings import PROJECT_ROOT
from tests.support.pipelines import write_text_pipeline
from tests.support.server import free_port, run_server, wait_until_ready

NGINX_CONF = PROJECT_ROOT / "deploy" / "nginx" / "nginx.conf"
LOAD_SECONDS = 24.0
CLIENTS = 6


def start_nginx(folder: Path, listen_port: int, upstream_ports: list[int]) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.fail("nginx is not installed; install Debian's nginx-light (make setup-test does)")
    shutil.copy(NGINX_CONF, folder / "nginx.conf")
    (folder / "listen.conf").write_text(f"listen 127.0.0.1:{listen_port};\n")
    servers = "".join(f"server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;\n" for port in upstream_ports)
    (folder / "upstreams.conf").write_text(servers)
    log = (folder / "nginx.log").open("wb")
    process = subprocess.Popen(
        [nginx, "-c", str(folder / "nginx.conf"), "-p", str(folder), "-e", "stderr"], stdout=log, stderr=log
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{listen_port}/healthz", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"nginx did not start:\n{(folder / 'nginx.log').read_text()}")


class LoadGenerator:
    """Clients sending embed requests in a loop until stopped, counting outcomes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(CLIENTS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _loop(self, client_index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            count = 0
            while not self._stop.is_set():
                text = f"client {client_index} request {count} about load balancing"
                try:
                    response = client.post("/v1/embed", files={"text": (None, text), "pipeline": (None, "text")})
                    outcome = str(response.status_code)
                    if response.status_code != 200:
                        self._record_failure(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                    self._record_failure(repr(exc))
                with self._lock:
                    self.outcomes[outcome] += 1
                count += 1

    def _record_failure(self, message: str) -> None:
        with self._lock:
            self.failures.append(message)


@pytest.fixture
def nginx_prefix() -> Iterator[Path]:
    """A prefix folder that nginx's workers, running as nobody, can write request bodies to."""
    folder = Path(tempfile.mkdtemp(prefix="mms-nginx-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_rolling_stops_lose_no_request(tmp_path: Path, nginx_prefix: Path) -> None:
    env = {**write_text_pipeline(tmp_path / "models"), "MMS_SHUTDOWN_DRAIN_S": "2"}
    ports = [free_port(), free_port()]
    listen_port = free_port()
    with ExitStack() as stack:
        first = stack.enter_context(run_server(env, tmp_path / "replica-a.log", port=ports[0]))
        stack.enter_context(run_server(env, tmp_path / "replica-b.log", port=ports[1]))
        nginx = start_nginx(nginx_prefix, listen_port, ports)
        stack.callback(nginx.wait, 10)
        stack.callback(nginx.terminate)

        load = LoadGenerator(f"http://127.0.0.1:{listen_port}")
        started = time.monotonic()
        load.start()
        time.sleep(4)
        first.process.send_signal(signal.SIGTERM)
        first.process.wait(timeout=60)
        after_sigterm = sum(load.outcomes.values())
        restarted = stack.enter_context(
            run_server(env, tmp_path / "replica-a-restarted.log", wait_ready=False, port=ports[0])
        )
        wait_until_ready(restarted)
        time.sleep(3)
        restarted.process.send_signal(signal.SIGKILL)
        restarted.process.wait(timeout=30)
        time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
        load.stop()
        elapsed = time.monotonic() - started

        oversized = httpx.post(
            f"http://127.0.0.1:{listen_port}/v1/embed",
            files={"image": ("big.bin", b"\0" * (33 * 1024 * 1024), "application/octet-stream")},
            timeout=60,
        )

    total = sum(load.outcomes.values())
    access_log = [json.loads(line) for line in (nginx_prefix / "nginx.log").read_text().splitlines() if line.startswith("{")]
    retried = [entry for entry in access_log if "," in entry["upstream_addr"]]
    figures = {
        "seconds": round(elapsed, 1),
        "requests": total,
        "outcomes": dict(load.outcomes),
        "requests_before_sigterm_exit": after_sigterm,
        "retried_by_nginx": len(retried),
    }
    print(json.dumps(figures))
    assert elapsed >= 20
    assert load.failures == []
    assert load.outcomes["200"] == total
    assert total > 100
    # The killed replica failed at least one attempt, which nginx sent to the other one.
    assert len(retried) >= 1
    assert all(entry["status"] == 200 for entry in retried)
    assert oversized.status_code == 413
    assert oversized.headers["content-type"] == "application/problem+json"
    problem = oversized.json()
    assert problem["status"] == 413
    assert problem["limit"] == 32 * 1024 * 1024
    assert problem["request_id"] == oversized.headers["x-request-id"]
