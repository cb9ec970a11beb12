"""The platform's properties encoder writes exactly the bytes py-amqp writes, repeats included."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from enum import IntEnum
from typing import Any

import amqp
import pytest
from amqp.exceptions import FrameSyntaxError
from hypothesis import given, settings
from hypothesis import strategies as st

from kitty_tasks.core.amqp_encoding import PropertiesEncoder


class Level(IntEnum):
    HIGH = 7


class Name(str):
    pass


def py_amqp(properties: dict[str, Any]) -> bytes:
    return bytes(amqp.Message(b"", **properties)._serialize_properties())


def celery_headers(task_id: str, **changed: Any) -> dict[str, Any]:
    """Protocol-2 headers as Celery's ``as_task_v2`` writes them, plus the platform's own."""
    headers = {
        "lang": "py", "task": "bench.noop", "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": "g-1", "group_index": 3, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": "(1, -1, {})", "kwargsrepr": "{}", "origin": "gen1@host",
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {}, "x-kitty-max-retries": 5,
    }  # fmt: skip
    headers.update(changed)
    return headers


ODD_TABLES: list[dict[Any, Any]] = [
    {},
    {"a": None, "b": True, "c": False, "d": 0, "e": 1},
    {"int32 edge": 2147483647, "int32 low": -2147483647, "int64": 2147483648},
    {"int64 low": -2147483648, "int64 edge": 2**63 - 1, "int64 min": -(2**63)},
    {"f": 1.5, "neg zero": -0.0, "nan": float("nan"), "inf": float("inf")},
    {"dec": Decimal("12.345"), "neg dec": Decimal("-0.5")},
    {"when": datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc), "naive": datetime(2020, 1, 1)},
    {"bytes": b"\x00\xff", "text": "kitty \u00e9\u4e2d \U0001f431", "surrogate": "\udc80"},
    {"nested": {"deeper": {"list": [1, "two", None, [3.0, {"x": b"y"}]]}}},
    {"tuple": (1, 2), "empty list": [], "empty table": {}},
    {"enum": Level.HIGH, "str subclass": Name("n"), "in list": [Level.HIGH, Name("m")]},
    {b"bytes key": 1, "k\u00e9y": "v"},
    {"long string": "x" * 70_000},
]


@pytest.mark.parametrize("table", ODD_TABLES, ids=range(len(ODD_TABLES)))
def test_odd_tables_encode_as_py_amqp_encodes_them(table: dict[Any, Any]) -> None:
    encoder = PropertiesEncoder()
    properties = {"application_headers": table, "content_type": "application/json"}
    # Twice: the second time from the repeated values' kept encodings.
    assert encoder.properties(properties) == py_amqp(properties)
    assert encoder.properties(properties) == py_amqp(properties)


def test_every_property_encodes_as_py_amqp_encodes_it() -> None:
    properties = {
        "content_type": "application/json", "content_encoding": "utf-8",
        "application_headers": celery_headers("t-1"), "delivery_mode": 2, "priority": 9,
        "correlation_id": "t-1", "reply_to": "r\u00e9ply", "expiration": "1000",
        "message_id": b"m-1", "timestamp": 1_764_500_000, "type": "task", "user_id": "guest",
        "app_id": "kitty", "cluster_id": "", "not a property": "ignored",
    }  # fmt: skip
    assert PropertiesEncoder().properties(properties) == py_amqp(properties)


@pytest.mark.parametrize(
    "properties",
    [
        {"priority": True},  # a bool where py-amqp packs an octet
        {"delivery_mode": Level.HIGH},
        {"timestamp": datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp().__int__()},
        {"correlation_id": 0},  # falsy: an empty shortstr, as py-amqp writes it
        {"content_type": Name("text/plain")},
    ],
)
def test_unusual_property_values_go_through_py_amqp(properties: dict[str, Any]) -> None:
    assert PropertiesEncoder().properties(properties) == py_amqp(properties)


def test_a_repeated_key_with_a_value_equal_but_of_another_type_is_encoded_anew() -> None:
    # 1 == True == 1.0 and 0.0 == -0.0, yet each has bytes of its own.
    encoder = PropertiesEncoder()
    for value in (1, True, 1.0, 0.0, -0.0, 0, False, "1", b"1", None):
        properties = {"application_headers": {"retries": value}}
        assert encoder.properties(properties) == py_amqp(properties), value


def test_a_batch_of_task_headers_encodes_as_py_amqp_encodes_it() -> None:
    encoder = PropertiesEncoder(max_keys=8)  # fewer than the headers: some are not kept
    for i in range(50):
        headers = celery_headers(
            f"id-{i}", group_index=i, retries=i % 3, eta=None if i % 2 else "x"
        )
        properties = {"application_headers": headers, "priority": i % 10, "message_id": f"id-{i}"}
        assert encoder.properties(properties) == py_amqp(properties)


def test_a_table_py_amqp_refuses_raises_py_amqps_error() -> None:
    properties = {"application_headers": {"ok": 1, "bad": object()}}
    with pytest.raises(FrameSyntaxError):
        py_amqp(properties)
    with pytest.raises(FrameSyntaxError):
        PropertiesEncoder().properties(properties)


def _tables(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists, tuples and tables of ``inner``."""
    return (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    )


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.decimals(places=2, min_value=-1000, max_value=1000)
    | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
    _tables,
    max_leaves=10,
)
HEADERS = st.dictionaries(st.sampled_from(["a", "b", "task", "id", "retries"]), VALUES)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(HEADERS, min_size=1, max_size=6))
def test_any_sequence_of_tables_encodes_as_py_amqp_encodes_it(tables: list[dict[str, Any]]) -> None:
    encoder = PropertiesEncoder()
    for table in tables:
        properties = {"application_headers": table, "delivery_mode": 2}
        assert encoder.properties(properties) == py_amqp(properties)
