"""Exceptions of the RPC layer: what a caller catches, and the error types a server replies with."""

from __future__ import annotations

from kitty_tasks.core.errors import KittyError, PayloadTooLarge
from kitty_tasks.core.errors import NotConnected as CoreNotConnected

__all__ = [
    "BadReply",
    "ConnectionLost",
    "InvalidPayload",
    "MalformedRequest",
    "NoRoute",
    "NotConnected",
    "RPCError",
    "RPCTimeout",
    "RemoteError",
    "ReplyTooLarge",
    "RequestTooLarge",
    "ServiceUnavailable",
    "UnknownMethod",
    "UnserializableResult",
]


class RPCError(KittyError):
    """Base class of every error the RPC layer raises."""


class RPCTimeout(RPCError, TimeoutError):
    """No reply came within the call's timeout; the request may or may not have run."""

    def __init__(self, message: str, *, service: str = "", method: str | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.method = method


class ServiceUnavailable(RPCError):
    """No server consumes the service's request queue: the call was not sent, or was abandoned."""

    def __init__(self, message: str, *, service: str = "") -> None:
        super().__init__(message)
        self.service = service


class NoRoute(ServiceUnavailable):
    """No server queue is bound for the service (basic.return); nothing ran."""


class RemoteError(RPCError):
    """The server answered with an error; ``.type`` and ``.message`` say which."""

    def __init__(
        self, type_: str, message: str, *, service: str = "", method: str | None = None
    ) -> None:
        where = f"{service}.{method}" if method else service
        super().__init__(f"{type_}: {message}" + (f" (from {where})" if where else ""))
        self.type = type_
        self.message = message
        self.service = service
        self.method = method


class ConnectionLost(RPCError, ConnectionError):
    """The broker connection dropped before the reply came; the request may or may not have run."""


# The core's NotConnected too, so that one ``except`` catches it from every layer.
class NotConnected(RPCError, CoreNotConnected, ConnectionError):
    """No broker connection: not connected yet, closed, or still reconnecting."""


class BadReply(RPCError):
    """A reply arrived that is not the RPC wire format."""


class InvalidPayload(RPCError, ValueError):
    """The payload is not a JSON object; nothing was sent."""


class RequestTooLarge(InvalidPayload, PayloadTooLarge):
    """The encoded payload is over KITTY_MAX_MESSAGE_BYTES; nothing was sent."""


# Raised inside a server; their class names are the error types callers see in RemoteError.


class MalformedRequest(RPCError):
    """A request body is not a JSON object (server side)."""


class UnknownMethod(RPCError):
    """The request names a method the server does not have (server side)."""


class UnserializableResult(RPCError):
    """A handler returned something that cannot be encoded as JSON (server side)."""


class ReplyTooLarge(RPCError):
    """A handler's encoded result is over KITTY_MAX_MESSAGE_BYTES (server side)."""
