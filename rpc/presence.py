"""Whether a service has a server: passive declares of its request queue, on the reader thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, InvalidStateError
from typing import NamedTuple

import amqp

__all__ = ["FRESH_FOR", "RECLAIM_LIMIT", "WATCH_INTERVAL", "QueueStat", "ServicePresence"]

logger = logging.getLogger(__name__)

#: Seconds a check that found a consumer stays good for new calls to the same service.
#: Checking before every call would add a broker round trip to each one (a third of an RPC's
#: latency here); once a second costs nothing measurable, and a server that stops inside that
#: second is still noticed by the watch on calls in flight, which also takes their requests back.
FRESH_FOR = 1.0
#: Seconds between checks of the services that calls in flight wait for (and the age a call
#: reaches before its service is checked, so that fast calls never cost a check).
WATCH_INTERVAL = 0.25
#: Messages one reclaim looks at, at most: a request queue without consumers holds only the
#: abandoned requests of its callers, so this is a safety bound, not a working limit.
RECLAIM_LIMIT = 10_000

LOG_CHECK_FAILED = "could not check RPC service %r (%s: %s); assuming it is served"


class QueueStat(NamedTuple):
    """What a passive declare says of a request queue."""

    consumers: int
    ready: int


#: What a check found; None when the queue does not exist.
Stat = QueueStat | None
#: Counted as served when the broker refuses a check for a reason other than a missing queue.
ASSUMED_SERVED = QueueStat(consumers=1, ready=0)


class ServicePresence:
    """Checks services' request queues for consumers on a channel of its own; not thread-safe.

    Every method but ``fresh``, ``request`` and ``fail_pending`` runs on the one thread that
    reads the connection: a passive declare of a missing queue closes its channel (404), so
    the checks never use the channel replies arrive on.
    """

    def __init__(self, open_channel: Callable[[], amqp.Channel]) -> None:
        self._open_channel = open_channel
        self._channel: amqp.Channel | None = None
        self._served_at: dict[str, float] = {}
        self._lock = threading.Lock()  # guards _pending: callers add, the reader takes
        self._pending: list[tuple[str, Future[Stat]]] = []

    def fresh(self, service: str, now: float) -> bool:
        """True when ``service`` had a consumer less than ``FRESH_FOR`` seconds ago."""
        return now - self._served_at.get(service, float("-inf")) < FRESH_FOR

    def request(self, service: str) -> Future[Stat]:
        """Ask the reader thread to check ``service``; the caller wakes it and waits."""
        future: Future[Stat] = Future()
        with self._lock:
            self._pending.append((service, future))
        return future

    def run_pending(self) -> None:
        """Answer the checks callers asked for (reader thread)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for service, future in pending:
            _settle(future, self.stat(service))

    def fail_pending(self, error: BaseException) -> None:
        """Fail every check still asked for, and forget the channel (its connection is gone)."""
        with self._lock:
            pending, self._pending = self._pending, []
        self._channel = None
        for _, future in pending:
            _settle(future, error=error)

    def stat(self, service: str) -> Stat:
        """Consumers and ready requests of ``service``'s queue; None if it is missing (reader).

        A check the broker refuses for another reason (access, say) counts as served: the
        call then goes ahead and fails, if at all, the way it always did.
        """
        try:
            _, ready, consumers = self._checker().queue_declare(service, passive=True)
        except amqp.exceptions.NotFound:
            self._channel = None  # the broker closed it
            return None
        except amqp.exceptions.ChannelError as err:
            self._channel = None
            logger.warning(LOG_CHECK_FAILED, service, type(err).__name__, err)
            return ASSUMED_SERVED
        if consumers:
            self._served_at[service] = time.monotonic()
        return QueueStat(int(consumers), int(ready))

    def reclaim(self, service: str, correlation_ids: Collection[str]) -> set[str]:
        """Remove the requests with ``correlation_ids`` from ``service``'s queue; return the found.

        Requests nobody serves would otherwise expire into the service's DLQ. Other callers'
        requests are taken too, then all put back at once (unacked gets, one multiple nack).
        """
        channel = self._checker()
        removed: set[str] = set()
        keep: int | None = None
        try:
            for _ in range(RECLAIM_LIMIT):
                message = channel.basic_get(service, no_ack=False)
                if message is None:
                    break
                tag = message.delivery_info["delivery_tag"]
                correlation_id = message.properties.get("correlation_id")
                if correlation_id in correlation_ids:
                    channel.basic_ack(tag)
                    removed.add(correlation_id)
                else:
                    keep = tag
            if keep is not None:
                channel.basic_nack(keep, multiple=True, requeue=True)
        except amqp.exceptions.ChannelError as err:
            self._channel = None  # unacked gets go back to the queue with the channel
            logger.warning("could not reclaim requests from %r (%s)", service, err)
        return removed

    def _checker(self) -> amqp.Channel:
        if self._channel is None:
            self._channel = self._open_channel()
        return self._channel


def _settle(
    future: Future[Stat], result: Stat = None, *, error: BaseException | None = None
) -> None:
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass  # the caller gave up waiting
