"""A server's methods: each name's function and models, looked up per request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from rpc.errors import UnknownMethod
from rpc.protocol import DEFAULT_METHOD_LABEL

__all__ = ["UNKNOWN_METHOD_LABEL", "MethodHandler", "MethodRegistry"]

#: The metrics' method label of requests for a method the server does not have.
UNKNOWN_METHOD_LABEL = "unknown"


@dataclass(frozen=True)
class MethodHandler:
    """A method's function and its optional pydantic request and response models."""

    fn: Callable[[Any], Any]
    request_model: type[BaseModel] | None = None
    response_model: type[BaseModel] | None = None

    def invoke(self, payload: dict[str, Any]) -> Any:
        """Validate ``payload``, run the function, validate and dump its result."""
        request: Any = payload
        if self.request_model is not None:
            request = self.request_model.model_validate(payload)
        result = self.fn(request)
        if self.response_model is not None:
            if not isinstance(result, self.response_model):
                result = self.response_model.model_validate(result)
            return result.model_dump(mode="json")
        return result


class MethodRegistry:
    """The methods of one service by name; the name ``None`` is the default handler."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._handlers: dict[str | None, MethodHandler] = {}

    def add(self, name: str | None, handler: MethodHandler) -> None:
        """Serve ``handler`` for calls naming ``name`` (None: calls that name no method)."""
        self._handlers[name] = handler

    def find(self, name: object) -> MethodHandler:
        """The handler for a request's method header; ``UnknownMethod`` when there is none."""
        if name is None or isinstance(name, str):
            handler = self._handlers.get(name)
            if handler is not None:
                return handler
        if name is None:
            raise UnknownMethod(f"service {self.service!r} has no default handler; name a method")
        known = sorted(str(key) for key in self._handlers if key is not None)
        raise UnknownMethod(
            f"service {self.service!r} has no method {name!r}"
            + (f" (it has: {', '.join(known)})" if known else "")
        )

    def label(self, name: object) -> str:
        """The metrics label of a request's method; unknown names share one, to bound series."""
        if not (name is None or isinstance(name, str)) or name not in self._handlers:
            return UNKNOWN_METHOD_LABEL
        return DEFAULT_METHOD_LABEL if name is None else name
