"""Pure ASGI middleware: request id, timing, metrics and the streaming body-size limit."""

import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.api.context import set_request_id
from app.api.problems import problem_response
from app.errors import PayloadTooLarge


class RequestContextMiddleware:
    """Set the request id, echo it, time the request and count it by route and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = set_request_id(Headers(scope=scope).get("x-request-id"))
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["Server-Timing"] = f"total;dur={1000 * (time.perf_counter() - started):.1f}"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = _route_template(scope)
            metrics.REQUESTS.labels(route, scope["method"], str(status)).inc()
            metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """Return the matched route's path template, so metrics labels stay few."""
    route = scope.get("route")
    return getattr(route, "path", "unmatched")


class BodySizeLimitMiddleware:
    """Reject bodies above `max_bytes`: from Content-Length at once, else while streaming.

    A streamed body (chunked, or with a false Content-Length) is counted as it is
    received. Past the limit, `receive` raises PayloadTooLarge, and the 413 replaces
    whatever response the app sends after that, because FastAPI turns an error raised
    while it reads a JSON body into its own 400.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await problem_response(self._error(int(declared)))(scope, receive, send)
            return

        received = 0
        exceeded: PayloadTooLarge | None = None
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = self._error(received, at_least=True)
                    raise exceeded
            return message

        replacing = False

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, replacing
            if message["type"] == "http.response.start":
                if exceeded is not None and not response_started:
                    # The rest of the app's response is dropped in favour of this one.
                    replacing = response_started = True
                    await problem_response(exceeded)(scope, receive, send)
                    return
                response_started = True
            if not replacing:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if exceeded is None or response_started:
                raise
            await problem_response(exceeded)(scope, receive, send)

    def _error(self, size: int, at_least: bool = False) -> PayloadTooLarge:
        amount = f"at least {size}" if at_least else str(size)
        return PayloadTooLarge(
            f"request body is {amount} bytes, above the limit of {self.max_bytes} bytes",
            field="body",
            value=size,
            limit=self.max_bytes,
        )
