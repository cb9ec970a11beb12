"""Dead-lettering of requests no caller can be told about, through the core's failure policy."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import amqp

from kitty_tasks.core.connection import open_connection
from kitty_tasks.core.errors import PublishError
from kitty_tasks.core.failure import FailurePolicy, Outcome
from kitty_tasks.core.publisher import ConfirmedPublisher, OutgoingMessage

__all__ = ["RequestDeadLetters"]


class RequestDeadLetters:
    """Copies failed requests of one queue into its DLQ, confirmed, with why; thread-safe."""

    # The request link's channel has no publisher confirms (replies need none), so the
    # copies go through a confirming publisher on a connection of their own, opened at
    # the first dead letter.

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self._lock = threading.Lock()
        self._publisher: ConfirmedPublisher | None = None
        # A request is never retried: its caller waits for a reply, not for a later attempt.
        self._policy = FailurePolicy(self._publish, max_retries=0)

    def dead_letter(self, message: amqp.Message, exc: BaseException) -> Outcome:
        """Copy ``message`` to ``dlx``; the outcome's ``ack`` says how to settle the original."""
        outcome, _ = self._policy.handle(message, exc, queue=self.queue, retryable=False)
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
