"""The schema registry: registration, validation on publish and on consume, versions."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from events import Event, SchemaError, SchemaRegistry, UnreadableVersion


class PrintStartedV1(BaseModel):
    job_id: str
    printer_id: str


class PrintStartedV2(BaseModel):
    job_id: str
    printer_id: str
    material_id: str


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: str


TYPE = "fabrication.print.started"


def started(version: int, **data: object) -> Event:
    return Event(event_type=TYPE, version=version, data=data)


@pytest.fixture
def registry() -> SchemaRegistry:
    registry = SchemaRegistry()
    registry.register(TYPE, PrintStartedV1, version=1)
    return registry


def test_registered_versions_and_latest(registry: SchemaRegistry) -> None:
    registry.register(TYPE, PrintStartedV2, version=2)
    assert registry.versions(TYPE) == (1, 2)
    assert registry.latest(TYPE) == 2
    assert registry.latest("other.thing.done") is None


@pytest.mark.parametrize(
    ("event_type", "model", "version", "message"),
    [
        ("Bad Type", PrintStartedV1, 1, "lower-case dotted"),
        (TYPE, dict, 1, "pydantic model class"),
        (TYPE, PrintStartedV1, 0, "int >= 1"),
        (TYPE, PrintStartedV1, "1", "int >= 1"),
    ],
)
def test_bad_registrations_are_refused(
    event_type: str, model: type, version: object, message: str
) -> None:
    with pytest.raises(SchemaError, match=message):
        SchemaRegistry().register(event_type, model, version)  # type: ignore[arg-type]


def test_a_version_cannot_silently_change_its_model(registry: SchemaRegistry) -> None:
    registry.register(TYPE, PrintStartedV1, version=1)  # the same again is fine
    with pytest.raises(SchemaError, match="already has schema PrintStartedV1"):
        registry.register(TYPE, PrintStartedV2, version=1)
    registry.register(TYPE, PrintStartedV2, version=1, replace=True)
    assert registry.model_for(TYPE, 1) is PrintStartedV2


def test_outgoing_data_must_match(registry: SchemaRegistry) -> None:
    registry.validate_outgoing(started(1, job_id="j", printer_id="p"))
    with pytest.raises(SchemaError, match="printer_id: Field required"):
        registry.validate_outgoing(started(1, job_id="j"))


def test_outgoing_version_must_be_registered(registry: SchemaRegistry) -> None:
    with pytest.raises(SchemaError, match="no schema version 3"):
        registry.validate_outgoing(started(3, job_id="j", printer_id="p"))


def test_unregistered_types_pass_unless_schemas_are_required(registry: SchemaRegistry) -> None:
    event = Event(event_type="cad.model.generated", data={"anything": 1})
    registry.validate_outgoing(event)
    registry.validate_incoming(event)
    with pytest.raises(SchemaError, match="no schema registered"):
        registry.validate_incoming(event, require=True)


def test_incoming_newer_version_is_read_with_the_newest_model(registry: SchemaRegistry) -> None:
    # Given a consumer that knows v1, when v2 arrives with extra fields, then it is readable
    registry.validate_incoming(started(2, job_id="j", printer_id="p", material_id="pla"))


def test_incoming_newer_version_that_v1_cannot_read_is_unreadable(
    registry: SchemaRegistry,
) -> None:
    with pytest.raises(UnreadableVersion, match="v2 is newer than the newest registered v1"):
        registry.validate_incoming(started(2, job_id="j"))


def test_newer_version_against_a_strict_model_is_unreadable() -> None:
    registry = SchemaRegistry()
    registry.register(TYPE, Strict, version=1)
    with pytest.raises(UnreadableVersion, match="Extra inputs are not permitted"):
        registry.validate_incoming(started(2, job_id="j", printer_id="p"))


def test_incoming_older_than_every_schema_is_unreadable() -> None:
    registry = SchemaRegistry()
    registry.register(TYPE, PrintStartedV2, version=2)
    with pytest.raises(UnreadableVersion, match="older than every registered"):
        registry.validate_incoming(started(1, job_id="j", printer_id="p"))


def test_incoming_invalid_data_of_a_known_version_is_a_schema_error(
    registry: SchemaRegistry,
) -> None:
    with pytest.raises(SchemaError, match="does not match PrintStartedV1"):
        registry.validate_incoming(started(1, job_id=5, printer_id="p"))


def test_parse_uses_the_registry_for_the_events_version(registry: SchemaRegistry) -> None:
    registry.register(TYPE, PrintStartedV2, version=2)
    event = started(2, job_id="j", printer_id="p", material_id="pla")
    assert event.parse(registry=registry) == PrintStartedV2(
        job_id="j", printer_id="p", material_id="pla"
    )
    v1 = started(1, job_id="j", printer_id="p")
    assert isinstance(v1.parse(registry=registry), PrintStartedV1)


def test_unregister_forgets(registry: SchemaRegistry) -> None:
    registry.unregister(TYPE)
    assert registry.versions(TYPE) == ()
