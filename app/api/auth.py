"""Optional Bearer API keys for the /v1/* routes.

With MMS_API_KEYS empty the service is open. Otherwise every path under /v1/ needs
`Authorization: Bearer <key>` with one of the keys, while the probes, /metrics, /docs
and /openapi.json stay open so orchestrators and readers of the docs need no key.
Neither the key sent nor the expected keys are ever logged or echoed.
"""

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem_response
from app.errors import Unauthorized

PROTECTED_PREFIX = "/v1/"


class ApiKeyMiddleware:
    """Reject a /v1/* request without a valid key: 401 with `WWW-Authenticate: Bearer`."""

    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        error = self._check(Headers(scope=scope).get("authorization"))
        if error is None:
            await self.app(scope, receive, send)
            return
        response = problem_response(error)
        response.headers["WWW-Authenticate"] = 'Bearer realm="mms"'
        await response(scope, receive, send)

    def _check(self, authorization: str | None) -> Unauthorized | None:
        if not authorization:
            return Unauthorized(
                "missing Authorization header; send 'Authorization: Bearer <API key>'", field="authorization"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Unauthorized(
                "the Authorization header must use the Bearer scheme: 'Authorization: Bearer <API key>'",
                field="authorization",
            )
        if not self._is_known(token.strip().encode("latin-1")):
            return Unauthorized("invalid API key", field="authorization")
        return None

    def _is_known(self, token: bytes) -> bool:
        # Every key is compared, each in constant time, so the time taken does not tell
        # which key, or how much of one, matched.
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        return any(matches)
