"""Publishing for coroutines: events of many ``apublish`` calls confirmed in batches, one thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from events.envelope import Event
from events.errors import PublishRejected
from events.publishing import PublisherPool
from kitty_tasks.core.publisher import OutgoingMessage, unroutable

__all__ = ["MAX_BATCH", "ConfirmPipeline"]

logger = logging.getLogger(__name__)

#: Events sent in one batch at most (one confirm wait each).
MAX_BATCH = 256

LOG_BATCH = "publishing a batch of %d event(s) with one confirm wait"
LOG_FAILED = "the publishing thread failed on a batch of %d event(s)"


@dataclass(frozen=True)
class Pending:
    """One event handed over by ``apublish``, and the Future its caller awaits."""

    event: Event
    message: OutgoingMessage
    allow_unroutable: bool
    future: Future[Event]


class ConfirmPipeline:
    """Publishes events for coroutines on one thread: what queues up while a batch waits for
    its confirms goes out as the next batch, with one wait for all of it.

    Each event still gets its own answer: a nack, a return or a timeout fails only the
    events it concerns, with the errors ``EventBus.publish`` raises.
    """

    def __init__(
        self,
        pool: Callable[[], PublisherPool],
        *,
        timeout: float,
        on_unroutable: Callable[[int], None],
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._on_unroutable = on_unroutable
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Pending | None] | None = None

    def submit(
        self, event: Event, message: OutgoingMessage, allow_unroutable: bool
    ) -> Future[Event]:
        """Queue ``event`` for the next batch; the Future ends with its confirm or error."""
        future: Future[Event] = Future()
        with self._lock:
            if self._queue is None:
                self._queue = queue.SimpleQueue()
                threading.Thread(
                    target=self._run, args=(self._queue,), name="event-publish", daemon=True
                ).start()
            self._queue.put(Pending(event, message, allow_unroutable, future))
        return future

    def close(self) -> None:
        """Let the thread send what is queued (or fail it, once disconnected) and end."""
        with self._lock:
            pending, self._queue = self._queue, None
        if pending is not None:
            pending.put(None)

    def _run(self, pending: queue.SimpleQueue[Pending | None]) -> None:
        while (first := pending.get()) is not None:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    pending.put(None)  # end after this batch
                    break
                batch.append(item)
            # A caller that cancelled before its event was sent gets nothing sent.
            self._publish([p for p in batch if p.future.set_running_or_notify_cancel()])

    def _publish(self, batch: Sequence[Pending]) -> None:
        if not batch:
            return
        logger.debug(LOG_BATCH, len(batch))
        try:
            pool = self._pool()
            result = pool.publish(
                [p.message for p in batch],
                allow_unroutable=True,
                timeout=self._timeout,
                check=False,
            )
        except Exception as err:  # timeout, connection, not connected: every event in doubt
            for p in batch:
                p.future.set_exception(err)
            return
        try:
            self._answer(pool, batch, set(result.nacked), set(result.returned))
        except Exception as err:
            logger.exception(LOG_FAILED, len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)

    def _answer(
        self, pool: PublisherPool, batch: Sequence[Pending], nacked: set[str], returned: set[str]
    ) -> None:
        """Settle each event's Future as ``publish`` would have ended for it alone."""
        refusals: dict[str, PublishRejected] = {}
        sent: list[Pending] = []
        for p in batch:
            event_id = p.event.event_id
            if event_id in nacked:
                event_type = p.event.event_type
                if event_type not in refusals:
                    refusals[event_type] = pool.rejected(event_type)  # asks the broker once
                refusal = refusals[event_type]
                p.future.set_exception(PublishRejected(str(refusal), queue=refusal.queue))
            elif event_id in returned and not p.allow_unroutable:
                p.future.set_exception(unroutable(p.message, 1))
            else:
                sent.append(p)
        lost = {p.event.event_id for p in sent} & returned
        pool.count([p.event for p in sent], lost)
        if lost:
            self._on_unroutable(len(lost))
        for p in sent:
            p.future.set_result(p.event)
