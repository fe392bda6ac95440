"""Per-request context: the request id, kept in a contextvar so logs and errors can carry it."""

import contextvars
import random

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

MAX_REQUEST_ID_LENGTH = 128


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(incoming: str | None) -> str:
    """Keep a well-formed incoming id, else make one; return the id now in force."""
    if incoming and len(incoming) <= MAX_REQUEST_ID_LENGTH and incoming.isprintable() and incoming.isascii():
        request_id = incoming
    else:
        # 128 random bits in uuid4's hex form. The ids need to be unique, not secret,
        # so they come from the process's PRNG without a system call.
        request_id = f"{random.getrandbits(128):032x}"
    _request_id.set(request_id)
    return request_id
