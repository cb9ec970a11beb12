"""The Celery app the reliability tests run as a real worker process: tasks that record ids."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from celery import Celery

from events.idempotency import SQLiteStore, idempotent
from kitty_tasks.core.topology import RESEARCH_TASKS
from kitty_tasks.runtime.task import RETRY_ANY
from kitty_tasks.tasks.research import ResearchRequest

__all__ = ["FLAKY_TASK", "RECORD_TASK", "VALIDATED_TASK", "make_app", "record_line"]

RECORD_TASK = "reliability.record"
FLAKY_TASK = "reliability.flaky"
VALIDATED_TASK = "reliability.validated"
#: Directory where the worker writes what it ran (``runs.log``, ``effects.log``, the store).
RECORD_DIR_ENV = "KITTY_REL_DIR"


def record_line(kind: str, task_id: str) -> None:
    """Append ``kind task_id pid time``: one short O_APPEND write, atomic between processes."""
    directory = Path(os.environ.get(RECORD_DIR_ENV, "."))
    line = f"{kind} {task_id} {os.getpid()} {time.time():.3f}\n".encode()
    fd = os.open(directory / f"{kind}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def make_app(url: str | None) -> Celery:
    """A Celery app with the platform's settings (``celeryconfig``) and the test tasks."""
    app = Celery("reliability", task_cls="kitty_tasks.runtime.task:KittyTask")
    app.config_from_object("celeryconfig")
    if url:
        app.conf.broker_url = url
    # Results are not what these tests count; the record files are.
    app.conf.task_ignore_result = True
    app.conf.task_routes = {"reliability.*": {"queue": RESEARCH_TASKS}}
    store: SQLiteStore | None = None

    def effect_once(task_id: str) -> None:
        nonlocal store
        if store is None:
            store = SQLiteStore(Path(os.environ.get(RECORD_DIR_ENV, ".")) / "idempotency.sqlite3")
        # The platform's idempotency helper, keyed on the task id as events are on event_id.
        guarded = idempotent(
            lambda _e: record_line("effects", task_id), store=store, key=RECORD_TASK
        )
        guarded(SimpleNamespace(event_id=task_id, event_type="reliability.task.record"))  # type: ignore[arg-type]

    @app.task(name=RECORD_TASK, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def record(self: Any, n: int, sleep: float = 0.0) -> int:
        task_id = str(self.request.id)
        record_line("runs", task_id)
        if sleep:
            time.sleep(sleep)
        effect_once(task_id)
        return n

    @app.task(name=FLAKY_TASK, bind=True, shared=False, autoretry_for=RETRY_ANY)  # type: ignore[untyped-decorator]
    def flaky(self: Any, fail_times: int) -> int:
        record_line("runs", str(self.request.id))
        if int(self.request.retries or 0) < fail_times:
            raise RuntimeError(f"failing on purpose, attempt {int(self.request.retries or 0) + 1}")
        record_line("effects", str(self.request.id))
        return fail_times

    @app.task(name=VALIDATED_TASK, bind=True, shared=False)  # type: ignore[untyped-decorator]
    def validated(self: Any, **fields: Any) -> str:
        # The research task's own input model: a schema-invalid task is a Permanent error.
        request = ResearchRequest.model_validate(fields)
        record_line("runs", str(self.request.id))
        return request.query

    return app


#: ``celery -A tests.reliability.workerapp worker`` serves this one (URL from RABBITMQ_URL).
app = make_app(os.environ.get("RABBITMQ_URL"))
