"""``celery -A kitty_tasks flower`` with Flower's Broker tab limited to the platform's vhost."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from celery.bin.celery import main as celery_main
from flower.utils import broker as flower_broker

__all__ = ["VhostRabbitMQ", "install", "main"]


class VhostRabbitMQ(flower_broker.RabbitMQ):  # type: ignore[misc]
    """Flower's RabbitMQ client, asking the management API for its own vhost's queues only."""

    def __init__(self, broker_url: str, http_api: str | None, **kwargs: Any) -> None:
        super().__init__(broker_url, http_api, **kwargs)
        # Flower (2.x) leaves the vhost "/" unquoted, and urljoin turns its "queues//" into
        # "queues/": the queues of every vhost, each name once per vhost. "%2F" is the API's
        # name for "/"; no --broker-api value can change what Flower appends to it.
        vhost = unquote(urlsplit(broker_url).path[1:]) or "/"
        self.vhost = quote(vhost, safe="")


def install() -> None:
    """Make Flower's broker factory build ``VhostRabbitMQ`` for amqp:// brokers."""
    flower_broker.RabbitMQ = VhostRabbitMQ


def main(argv: list[str] | None = None) -> None:
    """Run Celery's command line (``-A kitty_tasks flower ...``) with the fix installed."""
    install()
    sys.argv = ["celery", *(sys.argv[1:] if argv is None else argv)]
    celery_main()


if __name__ == "__main__":
    main()
