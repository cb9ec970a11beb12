"""Helpers of the RPC integration tests: a server serving in a background thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from kitty_tasks.core.management import ManagementClient
from rpc import RPCServer


def service_name(label: str) -> str:
    """A service name of this test's own, so that tests never share a request queue."""
    return f"test.{label}.{uuid.uuid4().hex[:8]}.rpc"


@contextmanager
def serving(server: RPCServer, *, ready_timeout: float = 30.0) -> Iterator[RPCServer]:
    """Run ``server.start()`` in a thread until the block ends, then stop it cleanly."""
    thread = threading.Thread(target=server.start, name=f"serve-{server.service}", daemon=True)
    thread.start()
    try:
        assert server.wait_ready(ready_timeout), f"{server.service} did not start consuming"
        yield server
    finally:
        server.stop(timeout=10)
        thread.join(15)
        assert not thread.is_alive(), f"{server.service} did not stop"


def drop_when_visible(
    client: ManagementClient,
    vhost: str,
    *,
    at_least: int,
    opened_after: float,
    timeout: float = 60.0,
) -> int:
    """Drop ``vhost``'s connections opened after ``opened_after`` once ``at_least`` are listed.

    The management API learns of new connections with its statistics interval (about 5 s),
    so a drop right after connecting would find nothing to close; and it still lists a
    connection for a while after it closed, so older ones (the vhost's own setup) are
    left out by their ``connected_at``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = [
            c
            for c in client.get("connections") or []
            if c.get("vhost") == vhost and c.get("connected_at", 0) >= opened_after * 1000
        ]
        if len(listed) >= at_least:
            for connection in listed:
                client.request("DELETE", f"connections/{quote(connection['name'], safe='')}")
            return len(listed)
        time.sleep(0.2)
    raise AssertionError(f"the management API never listed {at_least} connections of {vhost}")
