"""The access table on a live broker: create or update the accounts, and report drift."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping

from kitty_tasks.core.access import (
    ACCESS,
    HASHING_ALGORITHM,
    ServiceAccess,
    hash_password,
    permissions_of,
    topic_permissions_of,
)
from kitty_tasks.core.declarer import Difference
from kitty_tasks.core.management import ManagementClient, ManagementError

__all__ = ["apply_access", "compare_access"]


def _user_path(user: str) -> str:
    return urllib.parse.quote(user, safe="")


def apply_access(
    client: ManagementClient,
    vhost: str,
    passwords: Mapping[str, str],
    entries: Iterable[ServiceAccess] = ACCESS,
) -> list[str]:
    """Create or update each account, its permissions and topic permissions on ``vhost``.

    Only a salted hash of each password goes over the wire. Returns the users applied.
    """
    applied = []
    vhost_path = client.quote(vhost)
    for entry in entries:
        user = _user_path(entry.user)
        client.request(
            "PUT",
            f"users/{user}",
            {
                "password_hash": hash_password(passwords[entry.service]),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": ",".join(entry.tags),
            },
        )
        client.request("PUT", f"permissions/{vhost_path}/{user}", permissions_of(entry).as_dict())
        wanted = {t.exchange for t in topic_permissions_of(entry)}
        if any(t["exchange"] not in wanted for t in _topic_permissions(client, vhost, entry.user)):
            # A hand-made grant on another exchange would widen what the table says.
            client.request("DELETE", f"topic-permissions/{vhost_path}/{user}")
        for topic in topic_permissions_of(entry):
            client.request("PUT", f"topic-permissions/{vhost_path}/{user}", topic.as_dict())
        applied.append(entry.user)
    return applied


def _get_or_none(client: ManagementClient, path: str) -> object:
    """GET ``path``; None when the broker answers 404."""
    try:
        return client.get(path)
    except ManagementError as err:
        if err.status == 404:
            return None
        raise


def _topic_permissions(client: ManagementClient, vhost: str, user: str) -> list[dict[str, str]]:
    found = _get_or_none(client, f"users/{_user_path(user)}/topic-permissions")
    if not isinstance(found, list):
        return []
    return [t for t in found if isinstance(t, dict) and t.get("vhost") == vhost]


def compare_access(
    client: ManagementClient, vhost: str, entries: Iterable[ServiceAccess] = ACCESS
) -> list[Difference]:
    """Every way the accounts on ``vhost`` differ from the table (passwords are not compared)."""
    differences: list[Difference] = []
    vhost_path = client.quote(vhost)
    for entry in entries:
        user = _user_path(entry.user)
        live_user = _get_or_none(client, f"users/{user}")
        if not isinstance(live_user, dict):
            differences.append(Difference("missing", "user", entry.user))
            continue
        tags = live_user.get("tags") or []
        live_tags = sorted(tags.split(",") if isinstance(tags, str) else tags)
        if [t for t in live_tags if t] != sorted(entry.tags):
            differences.append(
                Difference(
                    "inequivalent",
                    "user",
                    entry.user,
                    f"tags {live_tags} on the broker, {sorted(entry.tags)} in the table",
                )
            )
        live_permissions = _get_or_none(client, f"permissions/{vhost_path}/{user}")
        expected = permissions_of(entry).as_dict()
        if not isinstance(live_permissions, dict):
            differences.append(
                Difference("missing", "permissions", entry.user, f"none on vhost {vhost!r}")
            )
        else:
            for kind, regex in expected.items():
                if live_permissions.get(kind) != regex:
                    differences.append(
                        Difference(
                            "inequivalent",
                            "permissions",
                            entry.user,
                            f"{kind} is {live_permissions.get(kind)!r} on the broker, "
                            f"{regex!r} in the table",
                        )
                    )
        differences.extend(_compare_topics(client, vhost, entry))
    return differences


def _compare_topics(client: ManagementClient, vhost: str, entry: ServiceAccess) -> list[Difference]:
    differences = []
    live = {t["exchange"]: t for t in _topic_permissions(client, vhost, entry.user)}
    for topic in topic_permissions_of(entry):
        found = live.pop(topic.exchange, None)
        name = f"{entry.user} on {topic.exchange}"
        if found is None:
            differences.append(Difference("missing", "topic permission", name))
            continue
        for kind in ("write", "read"):
            wanted = getattr(topic, kind)
            if found.get(kind) != wanted:
                differences.append(
                    Difference(
                        "inequivalent",
                        "topic permission",
                        name,
                        f"{kind} is {found.get(kind)!r} on the broker, {wanted!r} in the table",
                    )
                )
    for exchange in sorted(live):
        differences.append(
            Difference("unexpected", "topic permission", f"{entry.user} on {exchange}")
        )
    return differences
