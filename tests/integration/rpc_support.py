"""Helpers of the RPC integration tests: a server serving in a background thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from kitty_tasks.management import ManagementClient
from rpc import RPCServer
from tests.conftest import drop_connections


def service_name(label: str) -> str:
    """A service name of this test's own, so that tests never share a request queue."""
    return f"test.{label}.{uuid.uuid4().hex[:8]}.rpc"


@contextmanager
def serving(server: RPCServer, *, ready_timeout: float = 10.0) -> Iterator[RPCServer]:
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
    client: ManagementClient, vhost: str, *, at_least: int, timeout: float = 20.0
) -> int:
    """Drop ``vhost``'s connections once the management API lists ``at_least`` of them.

    The management API learns of new connections with its statistics interval (about 5 s),
    so a drop right after connecting would find nothing to close.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = [c for c in client.get("connections") or [] if c.get("vhost") == vhost]
        if len(listed) >= at_least:
            return drop_connections(client, vhost)
        time.sleep(0.2)
    raise AssertionError(f"the management API never listed {at_least} connections of {vhost}")
