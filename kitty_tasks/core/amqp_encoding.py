"""AMQP basic properties encoded byte for byte as py-amqp encodes them, repeated headers once.

A Celery task message carries ~20 protocol-2 headers, most of them the same in every
message of a batch (task name, lang, retries 0, eta None, origin ...). py-amqp encodes the
table anew per message through a ``BytesIO`` and an ``isinstance`` chain per value: a third
of a group's client CPU (benchmarks/RESULTS.md, issue 15). ``PropertiesEncoder`` keeps, per
header key, the last plain value and its encoded bytes, and encodes the common types
directly. Anything else (a subclass, ``Decimal``, ``datetime``, an oversized string, a value
py-amqp refuses) goes through ``amqp.serialization.dumps``, so the wire format is py-amqp's
own; ``tests/unit/test_amqp_encoding.py`` compares the two on many tables.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from amqp.basic_message import Message
from amqp.serialization import dumps

__all__ = ["PROPERTIES", "PropertiesEncoder"]

_U8, _U16, _U32 = Struct("B"), Struct(">H"), Struct(">I")
_INT, _LONG, _DOUBLE, _U64 = Struct(">ci"), Struct(">cq"), Struct(">cd"), Struct(">Q")
#: Header values whose equality implies equal bytes (not float: 0.0 == -0.0; not bool vs int:
#: the type is compared too), so a repeat can reuse the last encoding.
_REPEATABLE = frozenset({str, bytes, int, bool, type(None)})
#: Header keys whose last value is kept; beyond, headers are still encoded, just not kept.
MAX_KEYS = 256
#: Encodings longer than this are not kept: a large value would stay alive for its key.
MAX_KEPT = 512


class _Refused(Exception):
    """A value the fast path does not encode: py-amqp encodes (or refuses) it instead."""


def _short(value: Any) -> bytes:
    """An AMQP shortstr, as ``dumps('s', ...)``."""
    value = value or ""
    data: bytes
    if type(value) is str:
        data = value.encode("utf-8", "surrogatepass")
    elif type(value) is bytes:
        data = value
    else:
        raise _Refused
    if len(data) > 255:
        raise _Refused
    return _U8.pack(len(data)) + data


def _octet(value: Any) -> bytes:
    if type(value) is not int or not 0 <= value <= 255:
        raise _Refused
    return _U8.pack(value)


def _long_long(value: Any) -> bytes:
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise _Refused
    return _U64.pack(value)


def _item(value: Any) -> bytes:
    """One table or array value (type octet and data), as py-amqp's table writer."""
    kind = type(value)
    data: bytes
    if kind is str:
        data = value.encode("utf-8", "surrogatepass")
        return b"S" + _U32.pack(len(data)) + data
    if value is None:
        return b"V"
    if kind is bool:
        return b"t\x01" if value else b"t\x00"
    if kind is int:
        if -2147483647 <= value <= 2147483647:
            return _INT.pack(b"I", value)
        if -(1 << 63) <= value < 1 << 63:
            return _LONG.pack(b"L", value)
        raise _Refused
    if kind is bytes:
        data = value
        return b"S" + _U32.pack(len(data)) + data
    if kind is float:
        return _DOUBLE.pack(b"d", value)
    if kind is dict:
        return b"F" + _table(value)
    if kind is list or kind is tuple:
        data = b"".join([_item(v) for v in value])
        return b"A" + _U32.pack(len(data)) + data
    raise _Refused


#: Encoded header keys (a key is a short string: its length octet and UTF-8 bytes).
_KEYS: dict[str, bytes] = {}


def _key(key: Any) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is not None and type(key) is str:
        return encoded
    if type(key) is not str:
        raise _Refused
    data = key.encode("utf-8", "surrogatepass")
    if len(data) > 255:
        raise _Refused
    encoded = _U8.pack(len(data)) + data
    if len(_KEYS) < MAX_KEYS:
        _KEYS[key] = encoded
    return encoded


def _table(table: dict[Any, Any]) -> bytes:
    data = b"".join([_key(k) + _item(v) for k, v in table.items()])
    return _U32.pack(len(data)) + data


class PropertiesEncoder:
    """Encodes basic properties as py-amqp does; a value that repeats under a name is encoded once.

    Thread-safe: the per-name entries are replaced whole, each consistent on its own.
    """

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        #: Header key -> (value type, value, encoded key and value) of its last plain value.
        self._last: dict[str, tuple[type, Any, bytes]] = {}
        #: Property name -> (value type, value, encoded value) of its last plain value.
        self._last_property: dict[str, tuple[type, Any, bytes]] = {}

    def headers(self, table: dict[Any, Any]) -> bytes:
        """``table`` as an AMQP field table (length-prefixed), as ``dumps('F', [table])``."""
        try:
            return self._headers(table)
        except Exception:  # py-amqp encodes it, or raises its own error
            return bytes(dumps("F", [table]))

    def _headers(self, table: dict[Any, Any]) -> bytes:
        last = self._last
        parts: list[bytes] = []
        append, get, repeatable = parts.append, last.get, _REPEATABLE
        for key, value in table.items():
            kind = type(value)
            if kind in repeatable:
                hit = get(key)
                if hit is not None and hit[1] == value and hit[0] is kind:
                    append(hit[2])
                    continue
                encoded = _key(key) + _item(value)
                if len(encoded) <= MAX_KEPT and (hit is not None or len(last) < self.max_keys):
                    last[key] = (kind, value, encoded)
                append(encoded)
            else:
                append(_key(key) + _item(value))
        data = b"".join(parts)
        return _U32.pack(len(data)) + data

    def properties(self, properties: dict[str, Any]) -> bytes:
        """Property flags and list, as py-amqp writes them in a content header frame."""
        flags, last = 0, self._last_property
        parts: list[bytes] = []
        for bit, name, kind in _LAYOUT:
            value = properties.get(name)
            if value is None:
                continue
            flags |= bit
            if kind == "F":
                parts.append(self.headers(value))
                continue
            hit = last.get(name)
            if hit is not None and hit[1] == value and hit[0] is type(value):
                parts.append(hit[2])
                continue
            try:
                encoded = _PROPERTY[kind](value)
            except (_Refused, KeyError):
                encoded = bytes(dumps(kind, [value]))
            if type(value) in _REPEATABLE and len(encoded) <= MAX_KEPT:
                last[name] = (type(value), value, encoded)
            parts.append(encoded)
        return _U16.pack(flags) + b"".join(parts)


#: Encoders of the property types other than tables, as ``dumps(kind, [value])``.
_PROPERTY = {"s": _short, "o": _octet, "L": _long_long}


#: (flag bit, property, AMQP type) in py-amqp's order: AMQP 0-9-1's 14, one flag word.
_LAYOUT = [(1 << (15 - i), name, kind) for i, (name, kind) in enumerate(Message.PROPERTIES)]
if len(_LAYOUT) > 15:  # a second flag word: this encoder would write another format
    raise ImportError("py-amqp's basic properties no longer fit one flag word")

#: The process's encoder: the headers of every publisher's messages share its entries.
PROPERTIES = PropertiesEncoder()
