"""Schema registry: which pydantic model validates ``data`` of an event type, by version."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from events.errors import SchemaError, UnreadableVersion, validation_summary
from events.routing import check_event_type

__all__ = ["SchemaRegistry", "VersionedData", "default_registry", "register_schema"]


class VersionedData(Protocol):
    """What the registry reads of an event (``events.Event`` is one): type, version, data."""

    @property
    def event_type(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def data(self) -> dict[str, Any]: ...


class SchemaRegistry:
    """Models by (event_type, version); publish and consume validate ``data`` against them.

    A consumer reads the version it has a model for; a newer version is read with
    the newest model older than it (additive changes stay readable) and is
    unreadable only if its data fails that model. Older versions than any model
    are unreadable.
    """

    def __init__(self) -> None:
        self._models: dict[str, dict[int, type[BaseModel]]] = {}
        self._lock = threading.Lock()

    def register(
        self, event_type: str, model: type[BaseModel], version: int = 1, *, replace: bool = False
    ) -> None:
        """Validate ``data`` of ``event_type`` at ``version`` with ``model``."""
        try:
            check_event_type(event_type)
        except ValueError as err:
            raise SchemaError(str(err)) from err
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise SchemaError(
                f"schema of {event_type!r} must be a pydantic model class, got {model!r}"
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SchemaError(f"schema version must be an int >= 1, got {version!r}")
        with self._lock:
            versions = self._models.setdefault(event_type, {})
            known = versions.get(version)
            if known is not None and known is not model and not replace:
                raise SchemaError(
                    f"{event_type!r} v{version} already has schema {known.__name__}; "
                    "register a new version, or pass replace=True"
                )
            versions[version] = model

    def unregister(self, event_type: str, version: int | None = None) -> None:
        """Forget one version of ``event_type``, or all of them."""
        with self._lock:
            if version is None:
                self._models.pop(event_type, None)
            else:
                self._models.get(event_type, {}).pop(version, None)

    def versions(self, event_type: str) -> tuple[int, ...]:
        """Registered versions of ``event_type``, oldest first."""
        if not self._models.get(event_type):
            # Most types have no schema: answered without the lock (a dict read is atomic).
            return ()
        with self._lock:
            return tuple(sorted(self._models.get(event_type, {})))

    def latest(self, event_type: str) -> int | None:
        """The newest registered version of ``event_type``, or None."""
        versions = self.versions(event_type)
        return versions[-1] if versions else None

    def model_for(self, event_type: str, version: int) -> type[BaseModel] | None:
        """The model that reads ``version``: its own, else the newest older one, else None."""
        with self._lock:
            models = self._models.get(event_type, {})
            if version in models:
                return models[version]
            older = [v for v in models if v < version]
            return models[max(older)] if older else None

    def validate_outgoing(self, event: VersionedData) -> None:
        """Raise ``SchemaError`` unless ``event.data`` matches its own version's model."""
        versions = self.versions(event.event_type)
        if not versions:
            return
        with self._lock:
            model = self._models[event.event_type].get(event.version)
        if model is None:
            raise SchemaError(
                f"{event.event_type!r} has no schema version {event.version} "
                f"(registered: {', '.join(map(str, versions))})"
            )
        self._validate(event, model)

    def validate_incoming(self, event: VersionedData, *, require: bool = False) -> None:
        """Raise ``SchemaError``/``UnreadableVersion`` unless this consumer can read ``event``."""
        versions = self.versions(event.event_type)
        if not versions:
            if require:
                raise SchemaError(f"no schema registered for event type {event.event_type!r}")
            return
        model = self.model_for(event.event_type, event.version)
        if model is None:
            raise UnreadableVersion(
                f"{event.event_type!r} v{event.version} is older than every registered "
                f"schema version ({', '.join(map(str, versions))})"
            )
        if event.version > versions[-1]:
            try:
                self._validate(event, model)
            except SchemaError as err:
                raise UnreadableVersion(
                    f"{event.event_type!r} v{event.version} is newer than the newest "
                    f"registered v{versions[-1]} and {model.__name__} cannot read it: {err}"
                ) from err
            return
        self._validate(event, model)

    @staticmethod
    def _validate(event: VersionedData, model: type[BaseModel]) -> None:
        try:
            model.model_validate(event.data)
        except ValidationError as err:
            raise SchemaError(
                f"data of {event.event_type!r} v{event.version} does not match "
                f"{model.__name__}: {validation_summary(err)}"
            ) from err


#: The registry ``register_schema`` writes to and every bus reads unless given its own.
default_registry = SchemaRegistry()


def register_schema(event_type: str, model: type[BaseModel], version: int = 1) -> None:
    """Validate ``data`` of ``event_type`` at ``version`` with ``model`` on publish and consume."""
    default_registry.register(event_type, model, version)
