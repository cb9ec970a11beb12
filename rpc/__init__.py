"""RPC over RabbitMQ direct reply-to: ``RPCClient`` calls, ``RPCServer`` answers."""

from __future__ import annotations

from rpc.client import DEFAULT_TIMEOUT, RPCClient
from rpc.errors import (
    BadReply,
    ConnectionLost,
    InvalidPayload,
    MalformedRequest,
    NoRoute,
    NotConnected,
    RemoteError,
    ReplyTooLarge,
    RequestTooLarge,
    RPCError,
    RPCTimeout,
    ServiceUnavailable,
    UnknownMethod,
    UnserializableResult,
)
from rpc.methods import MethodHandler
from rpc.protocol import REPLY_TO
from rpc.server import DEFAULT_CONCURRENCY, RPCServer

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "REPLY_TO",
    "BadReply",
    "ConnectionLost",
    "InvalidPayload",
    "MalformedRequest",
    "MethodHandler",
    "NoRoute",
    "NotConnected",
    "RPCClient",
    "RPCError",
    "RPCServer",
    "RPCTimeout",
    "RemoteError",
    "ReplyTooLarge",
    "RequestTooLarge",
    "ServiceUnavailable",
    "UnknownMethod",
    "UnserializableResult",
]
