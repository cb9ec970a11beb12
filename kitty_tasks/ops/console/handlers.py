"""The console's pages: each request logged in, each POST with its CSRF token, read-only obeyed."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import amqp
import tornado.escape
import tornado.web
from tornado.ioloop import IOLoop

from kitty_tasks.core.errors import KittyError
from kitty_tasks.core.topology import DLX_QUEUE, TOPOLOGY, definitions_json
from kitty_tasks.ops.cli_format import format_age
from kitty_tasks.ops.console.auth import Credentials
from kitty_tasks.ops.console.depth import DepthHistory
from kitty_tasks.ops.console.picture import topology_svg
from kitty_tasks.ops.console.views import (
    ConsoleConfig,
    InputError,
    dead_letter_queues,
    left_reasons,
    message_view,
    overview,
    run_purge,
    run_replay,
    topology_view,
    triage,
)
from kitty_tasks.ops.queues import QueueNotFound

__all__ = ["ROUTES", "AuthStaticHandler", "ConsoleHandler"]

T = TypeVar("T")

READ_ONLY = (
    "this console runs read-only (--read-only): replay and purge are switched off; "
    "nothing was moved or deleted"
)
REALM = "kitty-tasks console"
CSRF_REFUSED = "refused: the form's CSRF token is missing or wrong; reload the page and try again"
#: Pages may load scripts, styles and images from the console itself only: a dead letter's
#: text that slipped through escaping still could not run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _size(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    return f"{value / 1e9:.1f} GB" if value >= 1e9 else f"{value / 1e6:.0f} MB"


class Refused(tornado.web.HTTPError):
    """An HTTP error whose message the operator reads on the error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, reason=None)
        self.message = message


class _Guarded(tornado.web.RequestHandler):
    """Basic auth before anything else, and headers that keep pages to themselves."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def require_login(self) -> None:
        credentials: Credentials = self.settings["credentials"]
        if not credentials.accepts(self.request.headers.get("Authorization")):
            raise Refused(401, "log in with KITTY_CONSOLE_USER and KITTY_CONSOLE_PASSWORD")

    def prepare(self) -> None:
        self.require_login()

    def check_xsrf_cookie(self) -> None:
        # Tornado checks the token before prepare(): a stranger's POST still gets 401 first.
        self.require_login()
        super().check_xsrf_cookie()


class AuthStaticHandler(_Guarded, tornado.web.StaticFileHandler):
    """The console's CSS and script, behind the same login."""


class ConsoleHandler(_Guarded):
    """Base of the pages: blocking broker reads off the event loop, errors as readable pages."""

    @property
    def config(self) -> ConsoleConfig:
        config: ConsoleConfig = self.settings["config"]
        return config

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(
            config=self.config,
            read_only=self.config.read_only,
            format_age=format_age,
            dlx_queue=DLX_QUEUE,
            quote=lambda name: tornado.escape.url_escape(name, plus=False),
            size=_size,
        )
        return namespace

    async def blocking(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``function`` in a thread; the broker's and the operator's errors become pages."""
        call = functools.partial(function, *args, **kwargs)
        try:
            return await IOLoop.current().run_in_executor(None, call)
        except QueueNotFound as err:
            raise Refused(404, str(err)) from err
        except (InputError, ValueError) as err:
            raise Refused(400, str(err)) from err
        except (KittyError, amqp.exceptions.AMQPError, OSError) as err:
            raise Refused(502, f"the broker did not answer as expected: {err}") from err

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        message = error.message if isinstance(error, Refused) else self._reason
        if status_code == 401:
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
        if status_code == 403 and not isinstance(error, Refused):
            message = CSRF_REFUSED
        self.render("error.html", status=status_code, message=message, title=f"{status_code}")


class OverviewPage(ConsoleHandler):
    """Health, queues with their depth chart, workers, and the light."""

    async def get(self) -> None:
        view = await self.blocking(overview, self.config)
        self.render("overview.html", title="Overview", **view)


class DepthApi(ConsoleHandler):
    """The depth samples as JSON, for the chart's script."""

    def get(self) -> None:
        history: DepthHistory = self.settings["history"]
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({**history.series(), "now": time.time()}))


class DeadLetterList(ConsoleHandler):
    """Every DLQ with depth and oldest age."""

    async def get(self) -> None:
        summaries = await self.blocking(dead_letter_queues, self.config)
        self.render("dlqs.html", title="Dead letters", summaries=summaries)


def _page_number(text: str | None) -> int:
    try:
        page = int(text or "1")
    except ValueError:
        raise Refused(400, f"page must be a whole number, not {text!r}") from None
    if page < 1:
        raise Refused(400, f"page counts from 1, not {page}")
    return page


class DeadLetterQueuePage(ConsoleHandler):
    """One DLQ: groups by error and type from a bounded scan, and a paged list of its letters."""

    async def get(self, name: str) -> None:
        page = _page_number(self.get_query_argument("page", None))
        error_type = self.get_query_argument("error_type", "")
        kind = self.get_query_argument("type", "")
        found = await self.blocking(triage, self.config, name)
        rows = [
            letter
            for letter in found.letters
            if error_type in ("", letter.error_type) and kind in ("", letter.type)
        ]
        size = self.config.page_size
        pages = max(1, -(-len(rows) // size))
        if page > pages:
            raise Refused(400, f"page {page} is past the last page ({pages})")
        self.render(
            "dlq.html", title=name, triage=found, rows=rows[(page - 1) * size : page * size],
            page=page, pages=pages, matching=len(rows), error_type=error_type, kind=kind,
        )  # fmt: skip


class MessagePage(ConsoleHandler):
    """One dead letter: decoded body, properties, headers and traceback."""

    async def get(self, name: str, position: str) -> None:
        expected = self.get_query_argument("id", "")
        view = await self.blocking(message_view, self.config, name, int(position))
        moved = view is None or bool(expected and view.letter.id != expected)
        self.render("message.html", title=f"{name} #{position}", queue=name, view=view,
                    moved=moved, position=int(position))  # fmt: skip


def _fields(handler: tornado.web.RequestHandler, names: tuple[str, ...]) -> dict[str, str]:
    return {name: handler.get_body_argument(name, "").strip() for name in names}


class ReplayAction(ConsoleHandler):
    """A dry run first; the move itself only with ``confirmed=yes`` from the preview's form."""

    async def post(self, name: str) -> None:
        if self.config.read_only:
            raise Refused(403, READ_ONLY)
        fields = _fields(self, ("scope", "error_type", "type", "id", "to", "confirmed"))
        dry_run = fields["confirmed"] != "yes"
        described, report = await self.blocking(
            run_replay, self.config, name, fields, dry_run=dry_run
        )
        self.render("replay.html", title=f"Replay {name}", queue=name, fields=fields,
                    described=described, report=report, reasons=left_reasons(report))  # fmt: skip


class PurgeAction(ConsoleHandler):
    """Delete a DLQ's messages once its name has been typed."""

    async def post(self, name: str) -> None:
        if self.config.read_only:
            raise Refused(403, READ_ONLY)
        purged = await self.blocking(
            run_purge, self.config, name, self.get_body_argument("confirm_name", "")
        )
        self.render("purged.html", title=f"Purged {name}", queue=name, purged=purged)


class TopologyPage(ConsoleHandler):
    """The code's topology against the live broker, and its picture."""

    async def get(self) -> None:
        view = await self.blocking(topology_view, self.config)
        drifted = {name for _, name in view["drifted"]}
        self.render(
            "topology.html", title="Topology", picture=topology_svg(TOPOLOGY, drifted), **view
        )


class TopologyExport(ConsoleHandler):
    """The definitions file, as `kitty-tasks topology export` writes it."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Disposition", 'attachment; filename="definitions.json"')
        self.write(definitions_json(TOPOLOGY))


class TopologyPicture(ConsoleHandler):
    """The topology picture alone, as an SVG file."""

    def get(self) -> None:
        self.set_header("Content-Type", "image/svg+xml")
        self.write(topology_svg(TOPOLOGY))


_NAME = r"([^/]+)"
ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/", OverviewPage),
    (r"/api/depth", DepthApi),
    (r"/dlq", DeadLetterList),
    (rf"/dlq/{_NAME}", DeadLetterQueuePage),
    (rf"/dlq/{_NAME}/message/(\d+)", MessagePage),
    (rf"/dlq/{_NAME}/replay", ReplayAction),
    (rf"/dlq/{_NAME}/purge", PurgeAction),
    (r"/topology", TopologyPage),
    (r"/topology/definitions.json", TopologyExport),
    (r"/topology.svg", TopologyPicture),
]


class NotFoundPage(ConsoleHandler):
    """Any other path: logged in first, then told it does not exist."""

    def prepare(self) -> None:
        super().prepare()
        raise Refused(404, f"no page at {self.request.path}")
