"""Fixtures of the integration tests that several modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kitty_tasks.core.management import ManagementClient
from tests.integration.ops_support import own_vhost
from tests.integration.result_stores import (  # noqa: F401 - fixtures for the result tests
    postgres_store,
    redis_store,
    result_store,
)


@pytest.fixture
def ops_url(test_vhost: str, management_client: ManagementClient) -> Iterator[str]:
    """A vhost of this test's own, with the topology applied; deleted afterwards.

    The session vhost is shared: health, DLQ and gauge tests must see only their own
    queues, messages and consumers.
    """
    with own_vhost(management_client) as url:
        yield url
