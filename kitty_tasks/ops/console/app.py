"""The console's Tornado application, its depth sampler, and the loop that serves both."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import tornado.web
from tornado.ioloop import IOLoop, PeriodicCallback

from kitty_tasks.core.errors import KittyError
from kitty_tasks.ops.console.auth import Credentials
from kitty_tasks.ops.console.depth import SAMPLE_INTERVAL, DepthHistory, read_depths
from kitty_tasks.ops.console.handlers import ROUTES, AuthStaticHandler, NotFoundPage
from kitty_tasks.ops.console.views import ConsoleConfig

__all__ = ["make_app", "serve"]

HERE = Path(__file__).parent
log = logging.getLogger(__name__)


def make_app(config: ConsoleConfig, credentials: Credentials) -> tornado.web.Application:
    """The console: every page behind basic auth, every POST behind Tornado's CSRF check."""
    return tornado.web.Application(
        ROUTES,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        static_handler_class=AuthStaticHandler,
        default_handler_class=NotFoundPage,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict"},
        autoescape="xhtml_escape",
        compress_response=True,
        config=config,
        credentials=credentials,
        history=DepthHistory(),
    )


async def _sample(app: tornado.web.Application) -> None:
    config: ConsoleConfig = app.settings["config"]
    try:
        depths = await IOLoop.current().run_in_executor(
            None, read_depths, config.management(), config.vhost
        )
    except KittyError as err:
        log.warning("depth sample skipped: %s", err)
        return
    app.settings["history"].record(time.time(), depths)


async def _run(
    app: tornado.web.Application, address: str, port: int, ready: Callable[[], None]
) -> None:
    server = app.listen(port, address=address)
    ready()
    await _sample(app)
    sampler = PeriodicCallback(lambda: _sample(app), SAMPLE_INTERVAL * 1000)
    sampler.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    sampler.stop()
    server.stop()


def serve(
    config: ConsoleConfig,
    credentials: Credentials,
    address: str,
    port: int,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Serve the console until SIGINT or SIGTERM; ``ready`` runs once it listens."""
    asyncio.run(_run(make_app(config, credentials), address, port, ready))
