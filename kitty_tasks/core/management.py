"""A small client for RabbitMQ's management HTTP API (stdlib only)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kitty_tasks.core.errors import KittyError

__all__ = ["ManagementClient", "ManagementError"]


class ManagementError(KittyError):
    """The management API could not be reached or refused the request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status the API answered; None when it could not be reached.
        self.status = status


class ManagementClient:
    """Talks to ``/api`` of the management plugin with the broker's own credentials."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.timeout = timeout

    @classmethod
    def from_urls(cls, management_url: str, amqp_url: str) -> ManagementClient:
        """Build a client for ``management_url`` with the user and password of ``amqp_url``."""
        parsed = urllib.parse.urlsplit(amqp_url)
        return cls(
            management_url,
            urllib.parse.unquote(parsed.username or "guest"),
            urllib.parse.unquote(parsed.password or "guest"),
        )

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - the URL is the operator's own setting
            f"{self.base_url}/api/{path}", data=data, method=method
        )
        req.add_header("Authorization", self._auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                text = resp.read().decode()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:300]
            raise ManagementError(
                f"{method} /api/{path} answered {err.code}: {detail}", status=err.code
            ) from err
        except (urllib.error.URLError, OSError) as err:
            raise ManagementError(
                f"cannot reach the RabbitMQ management API at {self.base_url} ({err}); "
                "is the rabbitmq_management plugin enabled?"
            ) from err
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        """GET ``/api/<path>``."""
        return self.request("GET", path)

    @staticmethod
    def quote(vhost: str) -> str:
        """URL-encode a vhost name for a path segment (``/`` becomes ``%2F``)."""
        return urllib.parse.quote(vhost, safe="")

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of ``vhost`` with its arguments, depth and consumers."""
        return list(self.get(f"queues/{self.quote(vhost)}"))

    def exchanges(self, vhost: str) -> list[dict[str, Any]]:
        """Every exchange of ``vhost``."""
        return list(self.get(f"exchanges/{self.quote(vhost)}"))

    def bindings(self, vhost: str) -> list[dict[str, Any]]:
        """Every binding of ``vhost``."""
        return list(self.get(f"bindings/{self.quote(vhost)}"))

    def create_vhost(self, vhost: str, user: str) -> None:
        """Create ``vhost`` and give ``user`` full permissions on it."""
        self.request("PUT", f"vhosts/{self.quote(vhost)}")
        self.request(
            "PUT",
            f"permissions/{self.quote(vhost)}/{urllib.parse.quote(user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    def delete_vhost(self, vhost: str) -> None:
        """Delete ``vhost`` and everything in it."""
        self.request("DELETE", f"vhosts/{self.quote(vhost)}")
