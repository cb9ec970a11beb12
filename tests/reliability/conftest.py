"""Fixtures of the reliability suite: a throwaway RabbitMQ node per module, a vhost per test."""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from kitty_tasks.core.declarer import apply_topology
from kitty_tasks.core.topology import TOPOLOGY, Topology
from tests.reliability.helpers import WorkerProcess
from tests.reliability.node import ChrootNode, RabbitNode, free_port, rabbitmq_available

#: Every node name of this run starts with this, so leftovers are easy to spot.
NODE_PREFIX = f"kittyrel-{os.getpid()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here breaks a broker: mark it ``reliability`` (and ``slow``)."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.slow)


class NodeFactory:
    """Makes nodes under one tmp dir and stops every one of them at teardown."""

    def __init__(self, base: Path, node_class: type[RabbitNode] = RabbitNode) -> None:
        self.base = base
        self.node_class = node_class
        self.nodes: list[RabbitNode] = []

    def __call__(self, label: str, **kwargs: object) -> RabbitNode:
        node = self.node_class(
            base=self.base / label,
            name=f"{NODE_PREFIX}-{label}-{uuid.uuid4().hex[:4]}@localhost",
            **kwargs,  # type: ignore[arg-type]
        )
        self.nodes.append(node)
        # Also on an interrupted run (Ctrl-C, a timeout): no node outlives the tests.
        atexit.register(node.kill)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


def _require_rabbitmq() -> None:
    if not rabbitmq_available():
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is not installed and CI is set")
        pytest.skip("rabbitmq-server is not installed")


def _require_chroot() -> None:
    if not ChrootNode.available():
        reason = "the RabbitMQ 4.x chroot is not mounted: run scripts/rabbitmq4.sh start"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def node_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """Build extra nodes (clusters); every node it made is killed at module end."""
    _require_rabbitmq()
    factory = NodeFactory(tmp_path_factory.mktemp("nodes"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def rabbit_node(request: pytest.FixtureRequest, node_factory: NodeFactory) -> RabbitNode:
    """The module's own node, started once; a module sets ``NODE_CONFIG`` for rabbitmq.conf."""
    config = dict(getattr(request.module, "NODE_CONFIG", {}))
    management = bool(getattr(request.module, "NODE_MANAGEMENT", False))

    node = node_factory(
        request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"),
        config=config,
        management_port=free_port() if management else None,
    )
    return node.start()


def fresh_vhost(node: RabbitNode, topology: Topology = TOPOLOGY) -> str:
    """Create a vhost with the topology applied on ``node``; return its AMQP URL."""
    vhost = f"rel-{uuid.uuid4().hex[:8]}"
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = node.url(vhost=vhost)
    with Connection(url) as connection:
        apply_topology(connection, topology)
    return url


@pytest.fixture
def node_url(rabbit_node: RabbitNode) -> str:
    """AMQP URL of a fresh vhost (topology applied) on the module's node."""
    if not rabbit_node.running:
        # A test that left the node down must not take the next one with it.
        rabbit_node.start()
    return fresh_vhost(rabbit_node)


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Iterator[None]:
    """A test that fails midway leaves no worker process running."""
    yield
    while WorkerProcess.started:
        WorkerProcess.started.pop().kill()
