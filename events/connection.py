"""The bus's connections to RabbitMQ: the reconnect backoff they share, URLs fit to print."""

from __future__ import annotations

from kombu.connection import Connection
from kombu.exceptions import OperationalError

from events.errors import EventError

__all__ = ["RECONNECT_MAX", "RECONNECT_START", "RECONNECT_STEP", "open_connection", "safe_url"]

#: Reconnect backoff of consumers and publishers: first wait, growth per try, ceiling (seconds).
RECONNECT_START = 0.5
RECONNECT_STEP = 1.0
RECONNECT_MAX = 10.0


def open_connection(url: str, *, max_retries: int | None) -> Connection:
    """A connection to ``url``, retried with backoff; ``EventError`` when it cannot be made."""
    connection = Connection(url)
    try:
        connection.ensure_connection(
            max_retries=max_retries,
            interval_start=RECONNECT_START,
            interval_step=RECONNECT_STEP,
            interval_max=RECONNECT_MAX,
        )
    except (OperationalError, *connection.connection_errors) as err:
        connection.release()
        raise EventError(f"cannot connect to RabbitMQ at {safe_url(url)}: {err}") from err
    return connection


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    return str(Connection(url).as_uri(include_password=False))
