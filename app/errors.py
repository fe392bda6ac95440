"""Domain errors raised below the HTTP layer and mapped to status codes in one place.

Every error carries the facts a client needs to fix the request: the field, the value
that was rejected and the limit it broke. The HTTP layer turns them into RFC 9457
problem details (see app/api/problems.py).
"""

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error that is reported to the client as it is."""

    status: ClassVar[int] = 500
    kind: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        field: str | None = None,
        value: Any = None,
        limit: Any = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.value = value
        self.limit = limit

    def with_field_prefix(self, prefix: str) -> "ServiceError":
        """Prefix the field path, so `image` raised by a decoder becomes `input[3].image`."""
        self.field = f"{prefix}.{self.field}" if self.field else prefix
        return self


class MalformedRequest(ServiceError):
    status = 400
    kind = "malformed-request"
    title = "Malformed request"


class Unauthorized(ServiceError):
    status = 401
    kind = "unauthorized"
    title = "Missing or invalid API key"


class NotFound(ServiceError):
    status = 404
    kind = "not-found"
    title = "Not found"


class PayloadTooLarge(ServiceError):
    status = 413
    kind = "payload-too-large"
    title = "Payload too large"


class UnsupportedMedia(ServiceError):
    status = 415
    kind = "unsupported-media-type"
    title = "Unsupported media type"


class InvalidInput(ServiceError):
    status = 422
    kind = "invalid-input"
    title = "Invalid input"


class Overloaded(ServiceError):
    status = 429
    kind = "overloaded"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after_s = retry_after_s


class NotReady(ServiceError):
    status = 503
    kind = "not-ready"
    title = "Service not ready"


class TimedOut(ServiceError):
    status = 504
    kind = "timed-out"
    title = "Request timed out"


class ClientClosedRequest(ServiceError):
    """The client went away before the answer; nobody reads this status but the logs."""

    status = 499
    kind = "client-closed-request"
    title = "Client closed request"
