"""Dead-lettering of deliveries that no retry can fix, through the core's failure policy."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import amqp

from kitty_tasks.core.connection import open_connection
from kitty_tasks.core.errors import MessageTooLarge, PublishError
from kitty_tasks.core.failure import FailurePolicy, Outcome
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage

__all__ = ["QueueDeadLetters", "oversized"]


def oversized(body: bytes | str, limit: int) -> MessageTooLarge | None:
    """The error for a consumed body over ``limit`` bytes (checked before decoding), or None."""
    size = len(body)
    if size <= limit:
        return None
    return MessageTooLarge(
        f"message body is {size:,} bytes, over the {limit:,}-byte limit "
        "(KITTY_MAX_MESSAGE_BYTES); dead-lettered without decoding"
    )


class QueueDeadLetters:
    """Copies deliveries into their queue's DLQ, confirmed, with why; never retries; thread-safe.

    For consumers whose own channel cannot confirm a copy (RPC requests: the link's
    channel has no confirms; Celery's consumer: its connection belongs to the worker's
    event loop), so copies go through a confirming publisher on a connection of their
    own, opened at the first dead letter.
    """

    def __init__(self, url: str, queue: str = "") -> None:
        self.url = url
        self.queue = queue
        self._lock = threading.Lock()
        self._publisher: ConfirmedPublisher | None = None
        self._policy = FailurePolicy(self._publish, max_retries=0)

    def dead_letter(
        self, message: amqp.Message, exc: BaseException, *, queue: str | None = None
    ) -> Outcome:
        """Copy ``message`` to ``dlx``; the outcome's ``ack`` says how to settle the original."""
        target = queue or self.queue
        outcome, _ = self._policy.handle(message, exc, queue=target, retryable=False)
        return outcome

    def close(self) -> None:
        """Close the dead letters' connection, if one was opened; a later copy opens another."""
        with self._lock:
            self._discard()

    def _publish(self, copies: Sequence[OutgoingMessage]) -> None:
        with self._lock:
            try:
                if self._publisher is None:
                    connection = open_connection(self.url, max_retries=0)
                    self._publisher = ConfirmedPublisher(connection)
                self._publisher.publish_batch(copies)
            except PublishError:
                raise
            except Exception as err:
                # A broken connection is dropped, so the next dead letter starts afresh.
                self._discard()
                raise PublishError(f"cannot publish to the dead-letter exchange: {err}") from err

    def _discard(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
            with contextlib.suppress(Exception):  # best effort on a connection we give up on
                publisher.connection.release()
