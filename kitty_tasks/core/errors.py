"""The platform's error tree, shared by tasks, events and RPC (each adds its own below it)."""

from __future__ import annotations

__all__ = [
    "BatchRejected",
    "BatchTimeout",
    "BrokerUnavailable",
    "ConfigurationError",
    "InvalidInput",
    "KittyError",
    "MessageTooLarge",
    "NotConnected",
    "PayloadTooLarge",
    "Permanent",
    "PublishError",
    "PublishRejected",
    "PublishTimeout",
    "TaskFailed",
    "TopologyError",
    "Unroutable",
]


class KittyError(Exception):
    """Base class of every error the platform raises."""


class ConfigurationError(KittyError, ValueError):
    """Settings that cannot work together; raised at start, before any message is taken."""


class NotConnected(KittyError, RuntimeError):
    """A client was used before ``connect()`` (or after ``disconnect()``)."""


class BrokerUnavailable(KittyError):
    """The broker cannot be reached at the given URL, or the URL is not a usable AMQP URL."""


class TopologyError(KittyError):
    """The broker's exchanges or queues differ from the topology in code."""


class PublishError(KittyError):
    """A message could not be handed to the broker safely."""


class PublishRejected(PublishError):
    """The broker nacked the publish (typically a full reject-publish queue)."""

    def __init__(self, message: str, *, queue: str | None = None) -> None:
        super().__init__(message)
        self.queue = queue


class BatchRejected(PublishRejected):
    """Some messages of a batch were nacked or returned; says which, and which were confirmed.

    ``refused``: ids the broker nacked; ``unroutable``: ids no queue took;
    ``confirmed``: ids the broker confirmed and kept (only these were sent).
    """

    def __init__(
        self,
        message: str,
        *,
        refused: list[str],
        unroutable: list[str],
        confirmed: list[str],
        queue: str | None = None,
    ) -> None:
        super().__init__(message, queue=queue)
        self.refused = refused
        self.unroutable = unroutable
        self.confirmed = confirmed


class Unroutable(PublishError):
    """No queue is bound for the message's routing key (basic.return)."""

    def __init__(self, message: str, *, exchange: str = "", routing_key: str = "") -> None:
        super().__init__(message)
        self.exchange = exchange
        self.routing_key = routing_key


class PayloadTooLarge(PublishError, ValueError):
    """The encoded body is over KITTY_MAX_MESSAGE_BYTES; nothing was sent."""


class PublishTimeout(PublishError, TimeoutError):
    """The broker did not confirm in time (e.g. a memory or disk alarm blocks publishers)."""


class BatchTimeout(PublishTimeout):
    """Confirms of a batch did not all come in time; says which messages were confirmed."""

    def __init__(self, message: str, *, unconfirmed: list[str], confirmed: list[str]) -> None:
        super().__init__(message)
        self.unconfirmed = unconfirmed
        self.confirmed = confirmed


class Permanent(KittyError):
    """Raise from a task or handler to dead-letter at once, without retries."""


class InvalidInput(Permanent, ValueError):
    """A message's data failed validation; retrying cannot fix it."""


class MessageTooLarge(Permanent, ValueError):
    """A consumed body is over KITTY_MAX_MESSAGE_BYTES: dead-lettered before it is decoded."""


class TaskFailed(KittyError):
    """A task ended without a result: it failed, was dead-lettered or was revoked."""

    def __init__(
        self,
        task_id: str,
        *,
        state: str,
        error_type: str,
        error_message: str,
        attempts: int | None = None,
    ) -> None:
        tries = f" after {attempts} attempt{'s' * (attempts != 1)}" if attempts else ""
        super().__init__(f"task {task_id} {state}{tries}: {error_type}: {error_message}")
        self.task_id = task_id
        self.state = state
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts
