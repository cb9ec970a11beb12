"""Worker customisations: nothing undecodable is acked away; it goes to the DLQ instead."""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

__all__ = ["KittyConsumer"]

logger = logging.getLogger(__name__)

LOG_UNDECODABLE = "undecodable message (%s, content-type %r) rejected to its dead-letter queue: %s"


class KittyConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, but a body it cannot decode is rejected (dead-lettered), not acked."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery's default acks the message, which silently drops it; rejecting
        # without requeue hands it to the queue's dead-letter exchange with x-death.
        logger.error(LOG_UNDECODABLE, type(exc).__name__, message.content_type, exc)
        message.reject_log_error(logger, self.connection_errors, requeue=False)
