"""Shared fixtures; the modules under tests/support hold the real-input generators."""

from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import RunningServer, run_server

pytest_plugins = [
    "tests.support.images",
    "tests.support.speech",
]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The service with the default pipeline, on a real uvicorn server on 127.0.0.1."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with run_server({}, log_path) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
