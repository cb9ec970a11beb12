"""RPC after a dropped connection: in-flight calls fail clearly, client and server recover."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kitty_tasks.core.connection import vhost_of
from kitty_tasks.core.management import ManagementClient
from rpc import ConnectionLost, RPCClient, RPCServer
from tests.integration.rpc_support import drop_when_visible, service_name, serving

pytestmark = pytest.mark.rabbitmq

#: Seconds the management API gets to list the new connections (it refreshes every ~5 s).
DROP_DEADLINE = 60.0


@pytest.mark.slow
def test_a_call_in_flight_at_a_drop_fails_and_later_calls_succeed(
    ops_url: str, management_client: ManagementClient
) -> None:
    # A vhost of the test's own, and only connections opened from here on count: the
    # management API keeps listing the vhost's closed setup connection for a while.
    amqp_url = ops_url
    # Given a call in flight to a slow handler
    service = service_name("drop")
    opened_after = time.time()
    server = RPCServer(amqp_url, service, concurrency=2)
    release = threading.Event()

    def slow(request: dict[str, Any]) -> str:
        # Held until the drop is done, however long the management API takes to list
        # the connections: a handler that answered first would leave nothing in flight.
        release.wait()
        return "slow"

    server.add_method("slow", slow)
    server.add_method("ping", lambda request: "pong")
    with serving(server), RPCClient(amqp_url) as client:
        try:
            assert client.call(service, {}, method="ping", timeout=5) == "pong"
            in_flight = client.call_async(service, {}, method="slow", timeout=DROP_DEADLINE + 20)
            # When the broker drops every connection of the vhost (client's and server's)
            dropped = drop_when_visible(
                management_client,
                vhost_of(amqp_url),
                at_least=2,
                opened_after=opened_after,
                timeout=DROP_DEADLINE,
            )
            # Then the call in flight fails with a clear error, long before its timeout
            # (the wait below is a quarter of it; the failure itself follows the drop at once)
            with pytest.raises(ConnectionLost, match="may or may not have run"):
                in_flight.result(timeout=20)
        finally:
            release.set()
        # And the client and the server both come back: later calls succeed
        assert client.call(service, {}, method="ping", timeout=10) == "pong"
        assert [client.call(service, {}, method="ping", timeout=5) for _ in range(3)] == [
            "pong"
        ] * 3
        assert client.connected
        assert server.wait_ready(5)
        # A fresh client reaches the reconnected server too
        with RPCClient(amqp_url) as fresh:
            assert fresh.call(service, {}, method="ping", timeout=5) == "pong"
    assert dropped >= 2
