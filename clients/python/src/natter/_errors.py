"""Errors the SDK raises."""

from __future__ import annotations


class NatterError(Exception):
    """Base of the SDK's errors."""


class ApiError(NatterError):
    """The server answered with an error: `status` (HTTP, or 0 for a socket `error`
    frame), and the envelope's `code`, `message` and `field`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class ConnectionLost(NatterError):
    """The socket closed before the server answered a frame that is not re-sent
    (`typing`, `read_upto`)."""


class ClosedError(NatterError):
    """The client was closed (by `close()`, or because a fixed token expired)."""
