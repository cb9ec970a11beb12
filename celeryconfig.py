"""Celery settings of the kitty_tasks app, read from the environment (kitty_tasks.core.settings)."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from kitty_tasks.core.settings import get_settings
from kitty_tasks.core.topology import BRAIN_COMMANDS, MAX_PRIORITY, TASKS_EXCHANGE, TOPOLOGY
from kitty_tasks.runtime.backend import result_backend_setting
from kitty_tasks.runtime.routing import TASK_ROUTES
from kitty_tasks.runtime.routing import task_queues as _task_queues

_settings = get_settings()

broker_url = _settings.rabbitmq_url
# A store any process can read (default: an SQLite file); rpc:// as KittyRPCBackend.
result_backend = result_backend_setting(_settings.result_backend)
# Task name, queue and retries stored with each result: readers report attempts.
result_extended = True
# 0 keeps results for ever (Celery's None).
result_expires = _settings.result_expires or None
# SQLite: WAL and a busy timeout, so prefork children write without "database is locked".
database_engine_callback = "kitty_tasks.runtime.backend:tune_sqlite"
broker_connection_retry_on_startup = True
# Every publish waits for the broker's confirm; a nack raises at the caller.
# The socket timeouts bound every blocking read/write of py-amqp: without them a publish
# on a connection the broker blocked (memory/disk alarm) waits for its confirm, and then
# for channel.close-ok, forever. KittyTask.apply_async turns the timeout into PublishTimeout.
broker_transport_options = {
    "confirm_publish": True,
    "read_timeout": _settings.publish_timeout,
    "write_timeout": _settings.publish_timeout,
}
broker_pool_limit = 10

# JSON only: pickle is refused by the worker, never executed.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# Ack after the task ran; a worker that dies mid-task gets its message redelivered.
task_acks_late = True
task_reject_on_worker_lost = True
task_acks_on_failure = True
task_acks_on_timeout = True
worker_cancel_long_running_tasks_on_connection_loss = True

# One unacked message per process: a higher priority task that arrives later is
# not stuck behind a prefetched low one (RabbitMQ orders only what it still holds).
worker_prefetch_multiplier = _settings.prefetch_multiplier
# The classic profile's queues carry x-max-priority already; a quorum queue refuses one.
task_queue_max_priority = MAX_PRIORITY if TOPOLOGY.profile == "classic" else None
task_default_priority = 0

task_queues = _task_queues()
task_routes = TASK_ROUTES
task_default_queue = BRAIN_COMMANDS
task_default_exchange = TASKS_EXCHANGE
task_default_exchange_type = "direct"
task_default_routing_key = BRAIN_COMMANDS
task_create_missing_queues = False

worker_consumer = "kitty_tasks.runtime.worker:KittyConsumer"
# Task events off by default: each one is a confirmed publish (confirm_publish covers every
# connection), and on the worker's event loop they took ~40% of the consumer's time, draining
# at 0.12x Dramatiq (benchmarks/RESULTS.md). Flower still shows tasks: it broadcasts
# enable_events every 5 s while it runs, so the cost is paid only while someone watches.
worker_send_task_events = False
# No "task-sent" event: it doubled the confirmed round trips of every enqueue. Flower lists
# a task from "received" on instead of "sent".
task_send_sent_event = False
task_time_limit = _settings.task_time_limit

# Periodic work, sent by `celery -A kitty_tasks beat` (`make run` starts it); KITT adds its
# entries here. Expired results are deleted every hour (SQL stores; Redis expires keys itself,
# for which Celery's cleanup does nothing).
beat_schedule: dict[str, dict[str, Any]] = {}
if result_expires:
    beat_schedule["celery.backend_cleanup"] = {
        "task": "celery.backend_cleanup",
        "schedule": crontab(minute="0"),
        "options": {"queue": BRAIN_COMMANDS, "expires": 3000},
    }
