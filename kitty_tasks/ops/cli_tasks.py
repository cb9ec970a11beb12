"""``kitty-tasks tasks submit`` and ``tasks result``: results read from the configured store."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import click
from celery import states
from kombu.exceptions import OperationalError

from kitty_tasks.core.connection import connected, safe_url
from kitty_tasks.core.errors import BatchRejected, KittyError, TaskFailed
from kitty_tasks.core.topology import MAX_PRIORITY
from kitty_tasks.ops.cli_dlq import operator_errors
from kitty_tasks.ops.cli_format import echo_json, json_list, json_object

__all__ = ["EXIT_FAILED", "EXIT_PENDING", "EXIT_USAGE", "tasks"]

#: Exit codes of ``tasks result`` and ``tasks submit --wait`` (0: the task succeeded).
EXIT_FAILED = 1  # failed, dead-lettered or revoked
EXIT_USAGE = 2  # bad arguments, as click's usage errors
EXIT_PENDING = 3  # no result yet (after --wait, if given)

WAIT_OPTION = click.option(
    "--wait", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
    help="Wait up to this long for the task to finish.",
)  # fmt: skip


class BadCall(click.ClickException):
    """Arguments the task cannot take: one line, exit code 2."""

    exit_code = EXIT_USAGE


@click.group()
def tasks() -> None:
    """Submit tasks and read their results."""


def _app() -> Any:
    # Loaded on use: the other commands (health, dlq, topology) need no Celery app.
    from kitty_tasks.runtime.application import app  # noqa: PLC0415

    return app


@contextmanager
def _store_errors() -> Iterator[None]:
    """One line naming the store when it cannot be read (its drivers raise their own errors)."""
    try:
        with operator_errors():
            yield
    except click.ClickException:
        raise
    except Exception as err:  # SQLAlchemy's, redis-py's, ...: a CLI error, never a traceback
        store = safe_url(str(_app().conf.result_backend))
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise click.ClickException(f"cannot read results from {store}: {first_line}") from err


def _outcome(task_id: str, wait: float | None) -> tuple[dict[str, Any], int]:
    """(what to print, exit code) for ``task_id``, read from the result store."""
    from kitty_tasks.runtime.results import outcome, result_of  # noqa: PLC0415

    result = _app().AsyncResult(task_id)
    answer: dict[str, Any] = {"task_id": task_id}
    try:
        if wait is None:
            meta = result.backend.get_task_meta(task_id)
            if meta.get("status") not in states.READY_STATES:
                return {**answer, "state": meta.get("status")}, EXIT_PENDING
            value = outcome(task_id, meta)
        else:
            value = result_of(result, wait)
    except TaskFailed as failed:
        error = {"type": failed.error_type, "message": failed.error_message}
        return {**answer, "state": failed.state, "error": error, "attempts": failed.attempts}, (
            EXIT_FAILED
        )
    except TimeoutError:
        return {**answer, "state": result.state}, EXIT_PENDING
    return {**answer, "state": states.SUCCESS, "result": value}, 0


def _print_outcome(answer: dict[str, Any], code: int, wait: float | None, as_json: bool) -> None:
    """Print ``answer`` for people or scripts, then exit with ``code``."""
    if as_json:
        echo_json(answer)
    elif code == 0:
        click.echo(f"{answer['state']}: {json.dumps(answer['result'], default=str)}")
    elif code == EXIT_FAILED:
        attempts = answer["attempts"]
        tries = f" after {attempts} attempt(s)" if attempts else ""
        error = answer["error"]
        click.echo(f"{answer['state']}{tries}: {error['type']}: {error['message']}")
    if code == EXIT_PENDING:
        after = f" after {wait:g}s" if wait is not None else ""
        click.echo(f"Error: task {answer['task_id']} is still {answer['state']}{after}", err=True)
    sys.exit(code)


@tasks.command("result")
@click.argument("task_id")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks_result(task_id: str, wait: float | None, as_json: bool) -> None:
    """Print TASK_ID's state and result or error, from any process.

    Exit 0 when it succeeded, 1 when it failed or was dead-lettered, 3 while it has no
    result (an unknown id looks the same: the store cannot tell them apart).
    """
    with _store_errors():
        answer, code = _outcome(task_id, wait)
    _print_outcome(answer, code, wait, as_json)


def _check_call(task: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """``BadCall`` unless ``task`` takes ``args`` and ``kwargs``; checked before publishing."""
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as err:
        raise BadCall(f"{task.name} cannot take these arguments: {err}") from err


def _known(app: Any, task_name: Any) -> None:
    """``ClickException`` unless ``task_name`` is a task of the app (not one of Celery's)."""
    if (
        not isinstance(task_name, str)
        or task_name not in app.tasks
        or task_name.startswith("celery.")
    ):
        known = sorted(name for name in app.tasks if not name.startswith("celery."))
        raise click.ClickException(f"unknown task {task_name!r}; known: {', '.join(known)}")


def _options(priority: int | None, queue: str | None) -> dict[str, Any]:
    """Publish options of one task: no publish retries; priority and queue when given."""
    options: dict[str, Any] = {"retry": False}
    if priority is not None:
        options["priority"] = priority
    if queue is not None:
        options["queue"] = queue
    return options


def _file_calls(
    app: Any, lines: TextIO, task_name: str | None, priority: int | None, queue: str | None
) -> list[tuple[str, list[Any], dict[str, Any], dict[str, Any]]]:
    """(task, args, kwargs, options) of each JSONL line, all checked; ``BadCall`` names the line."""
    calls = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as err:
            raise BadCall(f"line {number}: not JSON: {err}") from err
        if not isinstance(entry, dict):
            raise BadCall(f"line {number}: expected a JSON object, got {line.strip()[:80]}")
        name = entry.get("task", task_name)
        args, kwargs = entry.get("args", []), entry.get("kwargs", {})
        level = entry.get("priority", priority)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise BadCall(f"line {number}: args must be a list and kwargs an object")
        if level is not None and (
            isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= MAX_PRIORITY
        ):
            raise BadCall(f"line {number}: priority must be an integer 0-{MAX_PRIORITY}")
        try:
            _known(app, name)
            _check_call(app.tasks[name], args, kwargs)
        except click.ClickException as err:
            raise BadCall(f"line {number}: {err.message}") from err
        calls.append((str(name), args, kwargs, _options(level, entry.get("queue", queue))))
    return calls


def _submit_file(
    app: Any,
    url: str,
    calls: list[tuple[str, list[Any], dict[str, Any], dict[str, Any]]],
    *,
    as_json: bool,
) -> None:
    """Submit every task of a JSONL file in one batch; print each id, or what was refused."""
    from kitty_tasks.runtime.sending import batch_on  # noqa: PLC0415 - loads Celery

    with operator_errors(), connected(url):
        pass  # fail with one clear line before Celery's own connection retries
    results: list[Any] = []
    try:
        with app.connection_for_write(url) as connection, batch_on(app, connection):
            for name, args, kwargs, options in calls:
                results.append(app.tasks[name].apply_async(args, kwargs, **options))
    except BatchRejected as err:
        if as_json:
            echo_json({"refused": err.refused, "unroutable": err.unroutable,
                       "confirmed": err.confirmed})  # fmt: skip
        else:
            for task_id in err.confirmed:
                click.echo(f"submitted {task_id}")
        click.echo(f"Error: {err}", err=True)
        sys.exit(EXIT_FAILED)
    except (KittyError, OperationalError) as err:
        raise click.ClickException(f"cannot submit the tasks of the file: {err}") from err
    submitted = [
        {"task_id": r.id, "task": name} for r, (name, *_) in zip(results, calls, strict=True)
    ]
    if as_json:
        echo_json(submitted)
    else:
        for item in submitted:
            click.echo(f"submitted {item['task']} as {item['task_id']}")


@tasks.command("submit")
@click.argument("task_name", required=False)
@click.option(
    "--from-file", "from_file", type=click.File("r"), default=None, metavar="PATH",
    help="Submit every line of a JSONL file ({\"task\", \"args\", \"kwargs\", \"priority\", "
    "\"queue\"}; '-' reads stdin) with one confirm wait.",
)  # fmt: skip
@click.option("--args", "args_text", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_text", default="{}", help="Keyword arguments as a JSON object.")
@click.option(
    "--priority", type=click.IntRange(0, MAX_PRIORITY), default=None, help="0 (low) to 10 (high)."
)
@click.option("--queue", default=None, help="Queue to send to (default: the task's route).")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def tasks_submit(
    ctx: click.Context,
    *,
    task_name: str | None,
    from_file: TextIO | None,
    args_text: str,
    kwargs_text: str,
    priority: int | None,
    queue: str | None,
    wait: float | None,
    as_json: bool,
) -> None:
    """Publish TASK_NAME (e.g. research.paper) with JSON arguments; --wait for its result.

    Exit codes with --wait are those of ``tasks result``; 2 when the task cannot take
    the arguments (nothing is published). With --from-file, every line is checked before
    any is published; exit 1 when the broker refused some (the confirmed ones are listed).
    """
    app = _app()
    url = ctx.obj["url"]
    app.loader.import_default_modules()
    if from_file is not None:
        if wait is not None:
            raise BadCall("--wait reads one task's result; use `tasks result` per id")
        calls = _file_calls(app, from_file, task_name, priority, queue)
        _submit_file(app, url, calls, as_json=as_json)
        return
    if task_name is None:
        raise BadCall("give TASK_NAME or --from-file")
    args = json_list(args_text, "--args")
    kwargs = json_object(kwargs_text, "--kwargs")
    _known(app, task_name)
    _check_call(app.tasks[task_name], args, kwargs)
    options = _options(priority, queue)
    with operator_errors(), connected(url):
        pass  # fail with one clear line before Celery's own connection retries
    try:
        with app.connection_for_write(url) as connection:
            result = app.tasks[task_name].apply_async(
                args, kwargs, connection=connection, **options
            )
    except (KittyError, OperationalError) as err:
        raise click.ClickException(f"cannot submit {task_name}: {err}") from err
    submitted = {"task_id": result.id, "task": task_name}
    if wait is None:
        if as_json:
            echo_json(submitted)
        else:
            click.echo(f"submitted {task_name} as {result.id}")
        return
    if not as_json:
        click.echo(f"submitted {task_name} as {result.id}")
    with _store_errors():
        answer, code = _outcome(result.id, wait)
    _print_outcome({**submitted, **answer}, code, wait, as_json)
