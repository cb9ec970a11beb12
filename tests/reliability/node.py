"""A throwaway RabbitMQ node for the reliability tests: start, SIGKILL, restart, reconfigure."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kombu import Connection

__all__ = [
    "RABBITMQ4_ROOT",
    "RABBITMQ_BIN",
    "ChrootNode",
    "NodeError",
    "RabbitNode",
    "free_port",
    "rabbitmq_available",
    "wait_for",
]

#: The real scripts, not /usr/sbin's wrappers: those `su` to the rabbitmq user and
#: would use the shared broker's cookie and HOME.
RABBITMQ_BIN = Path(os.environ.get("KITTY_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
#: The RabbitMQ 4.x chroot of scripts/rabbitmq4.sh (its /proc and /dev mounted while it runs).
RABBITMQ4_ROOT = (
    Path(os.environ.get("KITTY_RABBITMQ4_CACHE", "/var/cache/kitty-rabbitmq4")) / "rootfs"
)
#: The chroot's nodes register with an epmd of their own: not the machine's (4369), nor the
#: script's node's (4370).
RABBITMQ4_EPMD_PORT = "4371"
#: Seconds a node gets to boot (2 cores, several nodes in a run).
START_TIMEOUT = 90.0

T = TypeVar("T")


class NodeError(RuntimeError):
    """The throwaway node did not start, stop or answer a CLI command."""


def rabbitmq_available() -> bool:
    """True when the RabbitMQ server scripts are installed here."""
    return (RABBITMQ_BIN / "rabbitmq-server").exists() and shutil.which("erl") is not None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
    progress: Callable[[], object] | None = None,
) -> T:
    """Poll ``condition`` until it is truthy; raise ``TimeoutError`` at the deadline.

    With ``progress``, the deadline is ``timeout`` seconds without progress: each change
    of ``progress()`` starts it again, so a slow but moving run (a loaded CI machine)
    is waited for and only a stalled one fails.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    seen: object = None
    while True:
        try:
            value = condition()
            if progress is not None:
                now = progress()
                if now != seen:
                    seen, deadline = now, time.monotonic() + timeout
        except Exception as err:  # the broker may be half up: keep polling until the deadline
            last_error = err
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            stalled = " without progress" if progress is not None else ""
            raise TimeoutError(f"{what} not reached within {timeout:g}s{stalled}{detail}")
        time.sleep(interval)


@dataclass
class RabbitNode:
    """One RabbitMQ node with its own name, ports, config, cookie and data dir under ``base``."""

    base: Path
    name: str
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    management_port: int | None = None
    #: rabbitmq.conf settings (key = value); loopback listeners are always added.
    config: dict[str, str] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """The node's host part (``localhost``)."""
        return self.name.split("@", 1)[1]

    @property
    def mnesia_base(self) -> Path:
        """Directory of the node's data; kept across restarts."""
        return self.base / "mnesia"

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:  # noqa: S107
        """AMQP URL of this node for ``user`` on ``vhost``."""
        quoted = urllib.parse.quote(vhost, safe="")
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{quoted}"

    def env(self) -> dict[str, str]:
        """Environment for the server and the CLI tools: everything points into ``base``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env |= {
            # The cookie lives in HOME: the CLI and the node share ours, not the shared broker's.
            "HOME": str(self.base),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "RABBITMQ_MNESIA_BASE": str(self.mnesia_base),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.base / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(self.base / "rabbit.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        return env

    def command(self, tool: str) -> list[str]:
        """How to run one of RabbitMQ's scripts (the server, rabbitmqctl, ...) for this node."""
        return [str(RABBITMQ_BIN / tool)]

    def write_files(self) -> None:
        """Write config, plugins file and the cookie (the cookie only once)."""
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        cookie = self.base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")
        lines = {
            "listeners.tcp.default": f"127.0.0.1:{self.port}",
            "loopback_users": "none",
            # Small, fast log: the file is read when a test fails.
            "log.file.level": "info",
            "log.console": "false",
        }
        if self.management_port is not None:
            lines |= {
                "management.tcp.ip": "127.0.0.1",
                "management.tcp.port": str(self.management_port),
            }
        lines |= self.config
        (self.base / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        (self.base / "advanced.config").write_text("[].\n")
        plugins = list(self.plugins)
        if self.management_port is not None and "rabbitmq_management" not in plugins:
            plugins.append("rabbitmq_management")
        (self.base / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")

    # -- lifecycle -----------------------------------------------------------------

    def start(self, *, wait: bool = True) -> RabbitNode:
        """Boot the node (keeping its data dir) and wait until AMQP answers."""
        if self.running:
            raise NodeError(f"{self.name} is already running (pid {self.pid})")
        self.write_files()
        out = (self.base / "log" / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            self.command("rabbitmq-server"),
            env=self.env(),
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own process group: kill -9 takes erl and its helpers, nothing else.
            start_new_session=True,
        )
        out.close()
        if wait:
            self.wait_until_ready()
        return self

    def wait_until_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll until an AMQP handshake succeeds; fail with the log's tail if the node died."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise NodeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with Connection(self.url(), connect_timeout=2) as conn:
                conn.connect()
            return True

        try:
            wait_for(ready, timeout=timeout, interval=0.3, what=f"{self.name} accepting AMQP")
        except TimeoutError as err:
            raise NodeError(f"{err}\n{self.log_tail()}") from err

    @property
    def pid(self) -> int | None:
        """Pid of the node's process group leader (the BEAM), when running."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """True while the node's process lives."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the node: no clean shutdown, no flush beyond what the broker already did."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node cleanly (SIGTERM), SIGKILL if it does not go in ``timeout``."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
            return
        # Helpers left in the group (erl_child_setup) go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) and start again on the same data dir."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def reconfigure(self, **settings: str) -> None:
        """Merge rabbitmq.conf ``settings`` (dots written as ``__``) and restart to apply them."""
        self.config |= {key.replace("__", "."): value for key, value in settings.items()}
        self.restart()

    # -- CLI -------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0, tool: str = "rabbitmqctl") -> str:
        """Run ``rabbitmqctl -n <node> args``; return stdout, raise ``NodeError`` on failure."""
        command = [*self.command(tool), "-n", self.name, *args]
        try:
            done = subprocess.run(
                command,
                env=self.env(),
                capture_output=True,
                timeout=timeout,
                check=False,
                cwd=self.base,
            )
        except subprocess.TimeoutExpired as err:
            raise NodeError(f"{' '.join(command)} timed out after {timeout:g}s") from err
        if done.returncode != 0:
            raise NodeError(
                f"{' '.join(command)} exited {done.returncode}: "
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def eval(self, expression: str) -> str:
        """Evaluate an Erlang expression on the node (``rabbitmqctl eval``)."""
        return self.ctl("eval", expression).strip()

    def close_all_connections(self, reason: str = "reliability test") -> None:
        """``rabbitmqctl close_all_connections``: every client loses its connection."""
        self.ctl("close_all_connections", reason)

    def set_memory_watermark(self, fraction: float) -> None:
        """``rabbitmqctl set_vm_memory_high_watermark``: a tiny value raises the memory alarm."""
        self.ctl("set_vm_memory_high_watermark", f"{fraction:g}")

    def add_user(self, user: str, password: str, vhost: str, perms: Iterable[str]) -> None:
        """Create ``user`` with (configure, write, read) permission regexes on ``vhost``."""
        self.ctl("add_user", user, password)
        self.ctl("set_permissions", "-p", vhost, user, *perms)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's logs, for failure messages."""
        chunks = []
        for path in sorted((self.base / "log").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(chunks)


@dataclass
class ChrootNode(RabbitNode):
    """A node of the RabbitMQ 4.x in ``RABBITMQ4_ROOT``; ``base`` must lie inside that root."""

    @staticmethod
    def available() -> bool:
        """True when the chroot is built and mounted (``scripts/rabbitmq4.sh start``)."""
        return os.path.ismount(RABBITMQ4_ROOT / "proc") and os.path.ismount(RABBITMQ4_ROOT / "dev")

    def env(self) -> dict[str, str]:
        """The node's environment, its paths as seen from inside the chroot."""
        outside = str(RABBITMQ4_ROOT)
        env = {k: v.replace(outside, "") for k, v in super().env().items()}
        return env | {"ERL_EPMD_PORT": RABBITMQ4_EPMD_PORT, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def command(self, tool: str) -> list[str]:
        """The chroot's script: chroot(8) keeps the environment ``env()`` gives it."""
        return ["chroot", str(RABBITMQ4_ROOT), f"/usr/lib/rabbitmq/bin/{tool}"]

    def shutdown_epmd(self) -> None:
        """Stop the chroot's epmd of the reliability nodes once no node is registered there."""

        def stopped() -> bool:
            done = subprocess.run(
                ["chroot", str(RABBITMQ4_ROOT), "epmd", "-kill"],
                env=self.env(), capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            # "epmd: Cannot connect to local epmd": it is gone.
            return b"Cannot connect" in done.stdout + done.stderr

        with contextlib.suppress(TimeoutError, subprocess.SubprocessError, OSError):
            wait_for(stopped, timeout=30, interval=0.5, what="the chroot nodes' epmd gone")
