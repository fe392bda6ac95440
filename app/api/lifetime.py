"""Tie a request's work to its client and its deadline.

Starlette keeps running a handler after its client disconnects. Here the work runs as
a task that is cancelled when the client goes away, so its queued items are dropped
before any forward pass.
"""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from app.errors import ClientClosedRequest, InvalidInput

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"


def request_timeout(request: Request, default_s: float) -> float:
    """Return the request's deadline in seconds: the setting, or the shorter value that the header requests."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return default_s
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise InvalidInput(
            f"header X-Request-Timeout must be a positive number of seconds, got '{raw[:20]}'",
            field="X-Request-Timeout",
            value=raw[:20],
        )
    return min(value, default_s)


async def _wait_for_disconnect(request: Request) -> None:
    # Once the body has been read, the next message the server sends is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done and watcher.exception() is not None:
            # A failed receive() cannot report a disconnect, so only the work is awaited.
            await asyncio.wait({task})
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientClosedRequest("the client disconnected before the answer was ready")
    return task.result()
