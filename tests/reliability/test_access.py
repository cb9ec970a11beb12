"""Scenario 9: per-service permissions, no guest in compose, TLS on a test CA, all on loopback."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
from pathlib import Path

import amqp
import pytest
from kombu import Connection, Consumer, Queue

from events import EventBus
from kitty_tasks.core.topology import EVENTS_EXCHANGE
from tests.reliability.node import RabbitNode, free_port

REPO = Path(__file__).resolve().parents[2]
SERVICE_USER, SERVICE_PASSWORD = "fabrication-service", "s3rvice-only-pw"
#: A refused consume must fail this fast, not hang until a client timeout.
REFUSAL_BOUND = 5.0


def test_publish_only_user_can_publish_events_but_its_consume_is_refused(
    rabbit_node: RabbitNode, node_url: str
) -> None:
    """Guarantee: a publish-only service user gets AccessRefused at once when it consumes."""
    # Given a user allowed only to write to kitty.events, and a bound queue made by the admin
    vhost = node_url.rsplit("/", 1)[1]
    rabbit_node.add_user(
        SERVICE_USER, SERVICE_PASSWORD, vhost, ("^$", f"^{re.escape(EVENTS_EXCHANGE)}$", "^$")
    )
    with EventBus(node_url, source="admin") as admin:
        admin.declare_queue("reliability.access.events", pattern="fabrication.#")
    service_url = rabbit_node.url(SERVICE_USER, SERVICE_PASSWORD, vhost)
    # When it publishes an event (confirmed), it works
    with EventBus(service_url, source="fabrication-service", declare=False) as bus:
        event = bus.publish("fabrication.print.started", {"job": 1})
    assert event.event_id
    # When it tries to consume, Then the broker refuses with ACCESS_REFUSED, quickly
    started = time.monotonic()
    with Connection(service_url) as conn:
        queue = Queue("reliability.access.events", no_declare=True)
        consumer = Consumer(conn, [queue], callbacks=[lambda _b, _m: None], auto_declare=False)
        with pytest.raises(amqp.exceptions.AccessRefused, match="ACCESS_REFUSED") as caught:
            consumer.consume()
    elapsed = time.monotonic() - started
    assert elapsed < REFUSAL_BOUND
    assert SERVICE_USER in str(caught.value)
    # And the EventBus refuses to subscribe with a clear error naming the permission
    with (
        EventBus(service_url, source="fabrication-service") as bus,
        pytest.raises(Exception, match="ACCESS_REFUSED"),
    ):
        bus.subscribe("fabrication.#", lambda _e: None, queue="reliability.access.mine")
    print(f"access: publish confirmed=1, consume refused in {elapsed:.2f}s: {caught.value}")


def test_compose_definitions_hold_no_guest_user_and_no_default_password() -> None:
    """Guarantee: the deployable config ships no guest account and no default password."""
    # Given every compose and broker definition file
    compose = REPO / "compose"
    definitions = sorted(compose.glob("rabbitmq/definitions*.json"))
    assert definitions
    for path in definitions:
        users = json.loads(path.read_text()).get("users", [])
        # Then no definitions file creates guest (or any user with a password hash in git)
        assert all(u.get("name") != "guest" for u in users), path
        assert all(not u.get("password_hash") for u in users), path
    for path in [*compose.glob("*.yml"), *compose.glob("rabbitmq/*.conf")]:
        text = path.read_text()
        # and no file sets default_user/default_pass or a password fallback like ${X:-secret}
        assert not re.search(r"^\s*default_(user|pass)\s*=", text, re.MULTILINE), path
        assert not re.search(r"PASSWORD[A-Z_]*:-", text), path
        assert not re.search(r"amqp://guest:guest@", text), path
    env_example = compose / ".env.example"
    assert re.search(r"^RABBITMQ_PASSWORD=\s*$", env_example.read_text(), re.MULTILINE)


def make_test_ca(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost/127.0.0.1 made with openssl; returns paths."""
    paths = {k: directory / f"{k}.pem" for k in ("ca", "ca_key", "cert", "key")}
    csr, ext = directory / "server.csr", directory / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kitty-test-ca",
        "-keyout",
        str(paths["ca_key"]),
        "-out",
        str(paths["ca"]),
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(paths["key"]),
        "-out",
        str(csr),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(paths["ca"]),
        "-CAkey",
        str(paths["ca_key"]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(paths["cert"]),
    )
    return paths


def test_tls_listener_on_test_ca_works_and_untrusting_client_is_refused(
    rabbit_node: RabbitNode, tmp_path: Path
) -> None:
    """Guarantee: amqps:// works with the CA on loopback; a client not trusting it is refused."""
    # Given the node reconfigured with a TLS listener on loopback and a test CA
    certs = make_test_ca(tmp_path)
    tls_port = free_port()
    rabbit_node.reconfigure(
        **{
            "listeners.ssl.default": f"127.0.0.1:{tls_port}",
            "ssl_options.cacertfile": str(certs["ca"]),
            "ssl_options.certfile": str(certs["cert"]),
            "ssl_options.keyfile": str(certs["key"]),
            "ssl_options.verify": "verify_none",
            "ssl_options.fail_if_no_peer_cert": "false",
        }
    )
    url = f"amqps://guest:guest@localhost:{tls_port}//"
    # py-amqp takes ssl options as a dict (an SSLContext object is not accepted).
    trusting = {
        "ca_certs": str(certs["ca"]),
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "localhost",
    }
    # When a client that trusts the CA connects and round-trips a message, it works
    with Connection(url, ssl=trusting, connect_timeout=5) as conn:
        channel = conn.channel()
        queue, _, _ = channel.queue_declare("", exclusive=True)
        channel.basic_publish(amqp.Message(b"over tls"), "", queue)
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = channel.basic_get(queue, no_ack=True)
        assert message is not None
        assert message.body == b"over tls"
        cipher = conn.connection.transport.sock.version()
    # When a client with only the system CAs connects, Then the handshake fails on verification
    untrusting = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "localhost"}
    untrusting_conn = Connection(url, ssl=untrusting, connect_timeout=5)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting_conn.ensure_connection(max_retries=1)
    untrusting_conn.release()
    print(f"tls: {cipher} round trip ok; untrusting client refused (CERTIFICATE_VERIFY_FAILED)")
