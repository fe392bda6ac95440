"""Shared fixtures; the modules under tests/support hold the real-input generators."""

from collections.abc import Iterator

import httpx
import pytest

from app.settings import PROJECT_ROOT
from tests.support.pipelines import write_text_pipeline
from tests.support.server import RunningServer, run_server

pytest_plugins = [
    "tests.support.images",
    "tests.support.speech",
]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The service on a real uvicorn server on 127.0.0.1.

    It serves the default pipeline and `text`, the default text encoder alone with no
    head, for the cases that need a pipeline without a head or without some modality.
    """
    folder = tmp_path_factory.mktemp("server")
    env = write_text_pipeline(folder / "models")
    (folder / "models" / "default").symlink_to(PROJECT_ROOT / "models" / "default")
    env["MMS_PIPELINES"] = '["default", "text"]'
    with run_server(env, folder / "server.log") as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
