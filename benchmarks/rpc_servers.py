"""RPC echo servers for the RPC cases, run as subprocesses: ``python -m benchmarks.rpc_servers``."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pika

from kitty_tasks.core.settings import DEFAULT_RABBITMQ_URL

__all__ = ["PLATFORM_SERVICE", "RAW_QUEUE", "main"]

#: The platform server's service name (routing key on ``kitty.rpc``).
PLATFORM_SERVICE = "bench.rpc"
#: The raw pika server's queue, reached through the default exchange.
RAW_QUEUE = "bench.raw.rpc"


def _echo(request: Any) -> Any:
    return request


def serve_platform(url: str) -> None:
    """``RPCServer`` with its defaults, echoing the payload."""
    from rpc import RPCServer

    server = RPCServer(url, PLATFORM_SERVICE)
    server.register_handler(_echo)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(timeout=5))
    server.connect()
    print("ready", flush=True)
    server.start()


def serve_raw(url: str) -> None:
    """The least a server can do: consume, reply to ``reply_to`` with the body, ack."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(RAW_QUEUE, durable=True)
    channel.basic_qos(prefetch_count=16)

    def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
        ch.basic_publish(
            "",
            props.reply_to,
            body,
            pika.BasicProperties(correlation_id=props.correlation_id),
        )
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(RAW_QUEUE, on_request)
    signal.signal(
        signal.SIGTERM, lambda *_: connection.add_callback_threadsafe(channel.stop_consuming)
    )
    print("ready", flush=True)
    channel.start_consuming()
    connection.close()


def main(argv: list[str]) -> int:
    """Run the server named by ``argv[0]``: ``platform`` or ``raw``."""
    url = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    {"platform": serve_platform, "raw": serve_raw}[argv[0]](url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
