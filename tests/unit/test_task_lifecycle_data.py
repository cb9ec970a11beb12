"""The pure parts of the task lifecycle events: domains, summaries, errors, options, switches."""

from __future__ import annotations

import pytest
from celery import Celery

from events import Event, TaskCompleted, TaskFailed, default_registry, task_event_type
from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.settings import get_settings
from kitty_tasks.runtime.lifecycle_data import (
    ERROR_MESSAGE_CHARS,
    INLINE_RESULT_BYTES,
    check_lifecycle_options,
    error_data,
    summarise_result,
    task_domain,
)
from kitty_tasks.runtime.task import KittyTask

UNREACHABLE = "amqp://guest:guest@127.0.0.1:1//"


@pytest.mark.parametrize(
    ("task", "queue", "domain"),
    [
        ("research.paper", "research.tasks", "research"),
        ("cad.generate", "cad.tasks", "cad"),
        ("brain.command", "brain.commands", "brain"),
        ("kitty.dispatch", "research.tasks", "research"),  # TaskQueue: the queue's domain wins
        ("kitty.dispatch", "cad.tasks", "cad"),
        ("cad.generate", "celery", "cad"),  # a dotless queue gives way to a dotted name
        ("add", "celery", "celery"),
        ("Fab.Print", "GPU Jobs", "fab"),
        ("", "", "kitty"),
    ],
)
def test_the_domain_comes_from_the_queue_then_the_task_name(
    task: str, queue: str, domain: str
) -> None:
    assert task_domain(task, queue) == domain


def test_an_explicit_domain_wins() -> None:
    assert task_domain("kitty.dispatch", "research.tasks", "fabrication") == "fabrication"


def test_a_small_result_rides_in_the_event_as_json() -> None:
    assert summarise_result({"hits": [1, 2], "query": "q"}, 1 << 20) == {
        "result": {"hits": [1, 2], "query": "q"}
    }
    assert summarise_result((1, 2), 1 << 20) == {"result": [1, 2]}
    assert summarise_result(None, 1 << 20) == {"result": None}


@pytest.mark.parametrize("result", [None, True, False, 0, -7, 2**53 - 1])
def test_plain_results_ride_as_they_are(result: object) -> None:
    summary = summarise_result(result, 1 << 20)
    assert summary == {"result": result}
    assert type(summary["result"]) is type(result)


def test_an_int_too_large_for_the_event_is_summarised() -> None:
    summary = summarise_result(10**4200, 1 << 20)["result_summary"]
    assert summary["type"] == "number"
    assert summary["size"] == 4201


def test_a_large_result_is_summarised_with_type_size_and_where_to_find_it() -> None:
    summary = summarise_result({"blob": "x" * INLINE_RESULT_BYTES}, 1 << 20)["result_summary"]
    assert summary["type"] == "object"
    assert summary["size"] == INLINE_RESULT_BYTES + len('{"blob": ""}')
    assert "result store" in summary["note"]


def test_a_small_message_limit_lowers_the_inline_limit_so_the_event_fits() -> None:
    # Given KITTY_MAX_MESSAGE_BYTES of 2000 and a result of 1500 bytes
    limit = 2000
    fields = summarise_result("y" * 1500, limit)

    # Then it is summarised, and the whole event stays under the limit
    assert "result_summary" in fields
    data = {"task_id": "t" * 36, "task": "research.paper", "queue": "research.tasks",
            "attempts": 1, "runtime": 0.5, **fields}  # fmt: skip
    event = Event(event_type="research.task.completed", source="w" * 60, data=data)
    assert len(event.encode()) < limit


def test_a_result_that_is_not_json_is_summarised_not_refused() -> None:
    summary = summarise_result(object(), 1 << 20)["result_summary"]
    assert summary["type"] == "object"
    assert "not JSON" in summary["note"]


def test_the_error_carries_type_and_a_trimmed_message() -> None:
    assert error_data(KeyError("job_id")) == {"type": "KeyError", "message": "'job_id'"}
    long = error_data(ValueError("z" * 10_000))
    assert len(long["message"]) == ERROR_MESSAGE_CHARS
    assert long["message"].endswith("...")


def test_bad_lifecycle_options_on_a_task_say_what_is_wrong() -> None:
    with pytest.raises(ConfigurationError, match="lifecycle_events must be True or False"):
        check_lifecycle_options("research.paper", "no", None)
    with pytest.raises(ConfigurationError, match="event_domain must be one lower-case word"):
        type("Bad", (KittyTask,), {"name": "x.bad", "event_domain": "Research Tasks"})
    check_lifecycle_options("research.paper", False, "research")


def test_the_lifecycle_schemas_are_registered_for_the_builtin_domains() -> None:
    for domain in ("research", "cad", "brain"):
        assert default_registry.model_for(task_event_type(domain, "completed"), 1) is TaskCompleted
        assert default_registry.model_for(task_event_type(domain, "failed"), 1) is TaskFailed
        assert default_registry.model_for(task_event_type(domain, "dead_lettered"), 1) is TaskFailed
    with pytest.raises(ValueError, match="outcome must be one of"):
        task_event_type("research", "retried")


def test_eager_runs_publish_no_lifecycle_event(no_broker: list[str]) -> None:
    # Given an app on a broker that is not there, with a task that succeeds and one that fails
    app = Celery("lifecycle", task_cls=KittyTask, set_as_current=False)
    app.conf.broker_url = UNREACHABLE

    @app.task(name="research.ok")
    def ok() -> int:
        return 1

    @app.task(name="research.broken")
    def broken() -> None:
        raise ValueError("broken")

    # When they run eagerly and directly
    assert ok.apply().get() == 1
    assert broken.apply().failed()
    assert ok() == 1

    # Then no connection was opened to publish their events (the fixture checks)


def test_the_setting_reads_true_false_and_refuses_anything_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    get_settings.cache_clear()
    try:
        monkeypatch.setenv("KITTY_TASK_EVENTS", "false")
        assert get_settings().task_events is False
        get_settings.cache_clear()
        monkeypatch.setenv("KITTY_TASK_EVENTS", "maybe")
        with pytest.raises(ValueError, match="KITTY_TASK_EVENTS"):
            get_settings()
    finally:
        get_settings.cache_clear()
