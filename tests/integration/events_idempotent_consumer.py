"""A consumer process for the restart test: handles events idempotently, then exits.

Usage: python -m tests.integration.events_idempotent_consumer URL SOURCE DB OUTPUT DELIVERIES
"""

from __future__ import annotations

import sys
from pathlib import Path

from events import Event, EventBus, SQLiteStore, idempotent


def main(url: str, source: str, db: str, output: str, deliveries: int) -> None:
    """Consume ``deliveries`` events, appending each one the handler really ran for."""
    bus = EventBus(url, source=source)
    bus.connect()
    seen = 0

    @idempotent(store=SQLiteStore(db))
    def record(event: Event) -> None:
        with Path(output).open("a") as out:
            out.write(event.event_id + "\n")

    def handler(event: Event) -> None:
        nonlocal seen
        record(event)
        seen += 1
        if seen >= deliveries:
            bus.stop()

    bus.subscribe("fabrication.print.started", handler)
    bus.start_consuming()
    bus.disconnect()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
