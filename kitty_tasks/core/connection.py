"""Connections to RabbitMQ: one reconnect backoff, one way to open them, one URL redactor."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection
from kombu.utils.functional import fxrange
from kombu.utils.url import sanitize_url

from kitty_tasks.core.errors import BrokerUnavailable

__all__ = [
    "CONNECT_TIMEOUT",
    "RECONNECT",
    "RECONNECT_MAX",
    "RECONNECT_START",
    "RECONNECT_STEP",
    "connected",
    "open_connection",
    "reconnect_delays",
    "safe_url",
    "user_of",
    "vhost_of",
]

#: The reconnect backoff of every publisher and consumer (seconds): the first wait, its growth
#: per failed try, and its ceiling. A restarted broker is back within a second of answering.
RECONNECT_START = 0.2
RECONNECT_STEP = 0.5
RECONNECT_MAX = 5.0
#: The same backoff as keyword arguments of Kombu's ``ensure_connection``/``ensure``.
RECONNECT: dict[str, float] = {
    "interval_start": RECONNECT_START,
    "interval_step": RECONNECT_STEP,
    "interval_max": RECONNECT_MAX,
}
#: Seconds allowed for the TCP and AMQP handshake of one attempt.
CONNECT_TIMEOUT = 5.0


def reconnect_delays() -> Iterator[float]:
    """The waits between reconnect attempts, for loops that reconnect by hand (endless)."""
    return iter(fxrange(RECONNECT_START, RECONNECT_MAX, RECONNECT_STEP, repeatlast=True))


def safe_url(url: str) -> str:
    """``url`` without its password, fit for logs and error messages."""
    if "://" not in url:
        # Not a URL at all (Kombu's sanitiser would mangle it); drop any credentials.
        return url.rpartition("@")[2]
    try:
        return str(sanitize_url(url))
    except ValueError:
        return "<unparsable URL>"


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names (``/`` when it names none)."""
    path = urllib.parse.urlsplit(amqp_url).path
    if not path or path == "/":
        return "/"
    return urllib.parse.unquote(path[1:])


def user_of(amqp_url: str) -> str | None:
    """The broker user an AMQP URL logs in as; None when it names none (the broker's default)."""
    if "://" not in amqp_url:
        return None
    first = amqp_url.partition(";")[0]  # a failover list: every URL logs in as one user
    return urllib.parse.unquote(urllib.parse.urlsplit(first).username or "") or None


def open_connection(
    url: str,
    *,
    max_retries: int | None = 3,
    connect_timeout: float = CONNECT_TIMEOUT,
    **options: Any,
) -> Connection:
    """A connected Kombu ``Connection``, retried with the backoff; else ``BrokerUnavailable``.

    ``max_retries`` counts retries after the first attempt (Kombu's meaning): ``0`` tries
    once, ``1`` once more after ``RECONNECT_START`` (an operator's command wants the error
    now); ``None`` retries forever. ``options`` go to ``Connection`` (e.g. ``heartbeat``).
    """
    if "://" not in url:
        raise BrokerUnavailable(
            f"not an AMQP URL: {safe_url(url)!r} (expected amqp://user:pass@host:port/vhost)"
        )
    connection = Connection(url, connect_timeout=connect_timeout, **options)
    try:
        connection.ensure_connection(max_retries=max_retries, **RECONNECT)
    except Exception as err:
        connection.release()
        reason = str(err) or type(err).__name__
        raise BrokerUnavailable(
            f"cannot connect to the broker at {safe_url(url)}: {reason}"
        ) from err
    return connection


@contextmanager
def connected(url: str, *, max_retries: int | None = 1) -> Iterator[Connection]:
    """``open_connection`` as a context manager that releases the connection at the end."""
    connection = open_connection(url, max_retries=max_retries)
    try:
        yield connection
    finally:
        connection.release()
