"""Graceful shutdown: on SIGTERM readiness turns 503 at once and queued requests still finish."""

import asyncio
import signal
from pathlib import Path

import httpx

from tests.support.pipelines import write_text_pipeline
from tests.support.server import run_server


def test_sigterm_drains_queued_requests(tmp_path: Path) -> None:
    env = {
        **write_text_pipeline(tmp_path / "models"),
        "MMS_SHUTDOWN_DRAIN_S": "1.5",
        "MMS_MAX_BATCH_SIZE": "4",
    }
    with run_server(env, tmp_path / "server.log") as server:

        async def scenario() -> tuple[int, list[int | str]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                requests = [
                    asyncio.ensure_future(
                        client.post("/v1/embed", files={"text": (None, f"sentence {i} " * 40), "pipeline": (None, "text")})
                    )
                    for i in range(48)
                ]
                await asyncio.sleep(0.3)
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                ready = await client.get("/readyz")
                responses = await asyncio.gather(*requests, return_exceptions=True)
                return ready.status_code, [getattr(r, "status_code", type(r).__name__) for r in responses]

        ready_status, statuses = asyncio.run(scenario())
        exit_code = server.process.wait(timeout=60)
        log = server.log()

    assert ready_status == 503
    assert statuses == [200] * 48
    # uvicorn re-raises the captured SIGTERM after a clean shutdown, so the process ends by it.
    assert exit_code == -signal.SIGTERM
    assert "SIGTERM received" in log
    assert "Application shutdown complete" in log
