"""Celery's failure contract on the broker: plain failures fail at once, retries keep headers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from celery.exceptions import MaxRetriesExceededError

from kitty_tasks.core.topology import (
    CAD_TASKS,
    H_ATTEMPT,
    H_ATTEMPTS,
    H_ERROR_TYPE,
    H_ORIGINAL_QUEUE,
    RESEARCH_TASKS,
    dlq_name,
)
from tests.helpers import CeleryWorker, queue_counts, wait_for
from tests.integration import tasks_for_tests
from tests.integration.test_tasks import TEST_TASKS, drain, runs_in

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def research_queue(amqp_url: str) -> str:
    """An empty research.tasks and its DLQ."""
    for queue in (RESEARCH_TASKS, dlq_name(RESEARCH_TASKS)):
        drain(amqp_url, queue)
    return RESEARCH_TASKS


def test_a_task_without_autoretry_fails_at_once_runs_its_errback_and_is_dead_lettered(
    amqp_url: str, research_queue: str, tmp_path: Path
):
    log, errback_log = tmp_path / "runs.log", tmp_path / "errback.log"
    with CeleryWorker(amqp_url, [research_queue], include=[TEST_TASKS]):
        # Given a task that raises and declares no autoretry_for, with an errback
        errback = tasks_for_tests.record_order.si(str(errback_log), "errback")
        started = time.monotonic()
        result = tasks_for_tests.plain_fails.apply_async((str(log),), link_error=errback)

        # Then it fails on its first run, promptly, as in Celery
        with pytest.raises(ValueError, match="plain failure on run 1"):
            result.get(timeout=10)
        took = time.monotonic() - started
        assert result.state == "FAILURE"
        wait_for(errback_log.exists, 10, what="the errback's run")
        # And its message is in the DLQ with the reason, after one attempt
        wait_for(lambda: queue_counts(amqp_url, dlq_name(research_queue))[0] == 1, 10)

    assert took < 5, f"the failure took {took:.1f}s: was it retried?"
    assert [retries for _, retries in runs_in(log)] == [0]
    assert errback_log.read_text().split() == ["errback"]
    [dead] = drain(amqp_url, dlq_name(research_queue))
    assert dead.headers["id"] == result.id
    assert dead.headers[H_ERROR_TYPE] == "ValueError"
    assert dead.headers[H_ATTEMPTS] == 1
    assert dead.headers[H_ORIGINAL_QUEUE] == research_queue


def test_a_ladder_retry_keeps_the_custom_headers_and_adds_the_attempt(
    amqp_url: str, research_queue: str
):
    with CeleryWorker(amqp_url, [research_queue], include=[TEST_TASKS]):
        # Given a task sent with a custom header, which fails once under autoretry_for
        result = tasks_for_tests.headers_after_retry.apply_async(
            headers={"x-trace": "abc123"}, expires=120
        )

        # Then the retried delivery still carries it, beside the platform's attempt header
        headers = result.get(timeout=30)

    assert headers["x-trace"] == "abc123"
    assert headers[H_ATTEMPT] == 2
    assert queue_counts(amqp_url, dlq_name(research_queue))[0] == 0


def test_a_retry_to_another_queue_goes_there_and_runs_out_with_max_retries_exceeded(
    amqp_url: str, research_queue: str
):
    drain(amqp_url, dlq_name(CAD_TASKS))
    with CeleryWorker(amqp_url, [research_queue, CAD_TASKS], include=[TEST_TASKS]):
        # Given a task on research.tasks that retries with queue=cad.tasks, max_retries=1
        result = tasks_for_tests.retry_elsewhere.delay(CAD_TASKS)

        # Then its second run, in cad.tasks, has no retries left and no exc to raise
        with pytest.raises(MaxRetriesExceededError):
            result.get(timeout=30)
        wait_for(lambda: queue_counts(amqp_url, dlq_name(CAD_TASKS))[0] == 1, 10)

    # And it is dead-lettered from the queue it was retried into
    [dead] = drain(amqp_url, dlq_name(CAD_TASKS))
    assert dead.headers["id"] == result.id
    assert dead.headers[H_ERROR_TYPE] == "MaxRetriesExceededError"
    assert dead.headers[H_ATTEMPTS] == 2
    assert dead.headers[H_ORIGINAL_QUEUE] == CAD_TASKS
    assert queue_counts(amqp_url, dlq_name(research_queue))[0] == 0
