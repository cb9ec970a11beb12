"""The other side of the async load test, in a process of its own: an RPC server and a subscriber.

Usage: python -m tests.integration.async_peer URL SERVICE EVENT_TYPE SEEN_FILE

The server answers ``{"n": n}`` with ``{"n": 2 n}``; the subscriber appends each event's id
to SEEN_FILE, one a line. Prints ``ready`` once both consume; runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from events import Event, EventBus
from rpc import RPCServer

READY = "ready"


def announce_when_ready(server: RPCServer) -> None:
    """Print ``ready`` once the server consumes (the subscriber does already)."""
    if server.wait_ready(30):
        print(READY, flush=True)


def main(url: str, service: str, event_type: str, seen_file: str) -> None:
    """Serve ``service`` and record ``event_type`` events until told to stop."""
    seen = open(seen_file, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def double(request: dict[str, Any]) -> dict[str, Any]:
        return {"n": request["n"] * 2}

    def record(event: Event) -> None:
        seen.write(event.event_id + "\n")

    server = RPCServer(url, service, concurrency=4)
    server.register_handler(double)
    bus = EventBus(url, source="async-peer").connect()
    bus.subscribe(event_type, record)
    bus.start_consuming(block=False)
    try:
        if not bus.wait_until_consuming(30):
            raise SystemExit("the subscriber did not start consuming")
        announce = threading.Thread(target=announce_when_ready, args=(server,), daemon=True)
        announce.start()
        server.start()  # in the main thread, which gets SIGINT/SIGTERM; returns on either
    finally:
        bus.disconnect()
        seen.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
