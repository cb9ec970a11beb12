"""Who may do what on the broker: one account per KITT service, as data, and its regexes.

Each service says what it does (publishes to, consumes, declares, binds); RabbitMQ's
configure/write/read regexes and the topic permissions on ``kitty.events`` derive from
that, with every literal name anchored and escaped. Pure data and functions: the
management API calls are in ``core/accounts.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.topology import (
    AUDIT_EVENTS,
    BRAIN_COMMANDS,
    CAD_TASKS,
    DELAY_PREFIX,
    DLQ_SUFFIX,
    DLX_EXCHANGE,
    DLX_QUEUE,
    EVENTS_EXCHANGE,
    NOTIFICATIONS,
    RESEARCH_TASKS,
    RPC_EXCHANGE,
    TASKS_EXCHANGE,
)

__all__ = [
    "ACCESS",
    "DEFAULT_EXCHANGE_RESOURCE",
    "HASHING_ALGORITHM",
    "NOTHING",
    "Permissions",
    "ServiceAccess",
    "TopicPermission",
    "access_definitions",
    "hash_password",
    "password_variable",
    "passwords_from",
    "permissions_of",
    "publisher_may_claim",
    "service",
    "services_for_source",
    "topic_permissions_of",
    "topic_regex",
]

#: Matches no resource name: RabbitMQ names the default exchange ``amq.default``.
NOTHING = "^$"
#: The name permissions use for the default exchange (``""``).
DEFAULT_EXCHANGE_RESOURCE = "amq.default"
#: RabbitMQ's default password hashing; ``hash_password`` writes its format.
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
#: Environment variable prefix of a service's password: ``KITTY_PASSWORD_RESEARCH_WORKER``.
PASSWORD_PREFIX = "KITTY_PASSWORD_"  # noqa: S105 - a variable name, not a password

#: Celery's remote-control and event exchanges (kombu.pidbox and celery.events).
CELERY_EXCHANGES = ("celery.pidbox", "reply.celery.pidbox", "celeryev")
#: Queues a Celery worker makes for itself: its pidbox, reply queues, event receivers.
_REPLY_QUEUES = r".+\.reply\.celery\.pidbox"
_EVENT_RECEIVERS = r"celeryev\..+"
#: The RPC result backend's reply queue of a task submitter (a UUID).
_RESULT_QUEUES = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_DELAY_EXCHANGES = re.escape(DELAY_PREFIX) + r".+"
_DEAD_LETTER_QUEUES = r".+" + re.escape(DLQ_SUFFIX)


def exact(*names: str) -> tuple[str, ...]:
    """Regex fragments that match exactly ``names``."""
    return tuple(re.escape(n) for n in names)


@dataclass(frozen=True)
class Permissions:
    """RabbitMQ's three permission regexes of one user in one vhost."""

    configure: str
    write: str
    read: str

    def as_dict(self) -> dict[str, str]:
        """The management API's (and the definitions file's) fields."""
        return {"configure": self.configure, "write": self.write, "read": self.read}


@dataclass(frozen=True)
class TopicPermission:
    """Routing keys a user may publish to (write) and bind with (read) on one topic exchange."""

    exchange: str
    write: str
    read: str

    def as_dict(self) -> dict[str, str]:
        """The management API's (and the definitions file's) fields."""
        return {"exchange": self.exchange, "write": self.write, "read": self.read}


@dataclass(frozen=True)
class ServiceAccess:
    """What one KITT service does on the broker; every name is a regex fragment.

    Args:
        service: the service, also its broker user name.
        sources: event ``source`` values this service may publish as.
        publishes: exchanges it publishes to.
        event_keys: topic patterns (``fabrication.#``) of the events it may publish.
        consumes: queues it reads (consume, get; RabbitMQ also lets a reader purge).
        declares: queues and exchanges it declares (RabbitMQ also lets a declarer delete).
        binds: (exchange, queue) fragments it binds.
        event_bindings: binding keys it may bind on ``kitty.events``.
        worker: a Celery worker's node-name prefix (``research`` for ``-n research@%h``):
            adds the remote-control exchanges, its pidbox and reply queues.
        tags: management tags (``monitoring`` lets it list every queue).
    """

    service: str
    sources: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()
    event_keys: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    declares: tuple[str, ...] = ()
    binds: tuple[tuple[str, str], ...] = ()
    event_bindings: tuple[str, ...] = ()
    worker: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def user(self) -> str:
        """The broker user of this service."""
        return self.service


def _failure_ladder() -> tuple[str, ...]:
    # A consumer's failure policy publishes retry copies and dead letters.
    return (_DELAY_EXCHANGES, *exact(DLX_EXCHANGE))


def celery_worker(
    service: str,
    queue: str,
    prefix: str,
    *,
    sources: tuple[str, ...],
    event_keys: tuple[str, ...],
    publishes: tuple[str, ...] = (),
    consumes: tuple[str, ...] = (),
) -> ServiceAccess:
    """A service that runs a Celery worker on ``queue`` with node name ``<prefix>@host``.

    ``publishes`` and ``consumes`` add what the service does besides the worker's work.
    """
    pidbox = re.escape(f"{prefix}@") + r".+\.celery\.pidbox"
    worker_queues = (*exact(queue), pidbox, _REPLY_QUEUES, _EVENT_RECEIVERS)
    return ServiceAccess(
        service,
        sources=sources,
        # Results and replies go through the default exchange; sub-tasks to kitty.tasks.
        publishes=(
            *exact(TASKS_EXCHANGE, DEFAULT_EXCHANGE_RESOURCE, EVENTS_EXCHANGE, *CELERY_EXCHANGES),
            *_failure_ladder(),
            *publishes,
        ),
        event_keys=event_keys,
        consumes=(*worker_queues, *consumes),
        # Celery declares its queue and exchange at start, and its remote-control entities;
        # whatever a service consumes on its own it declares too (reply queues).
        declares=(*worker_queues, *exact(TASKS_EXCHANGE, *CELERY_EXCHANGES), *consumes),
        binds=(
            (re.escape(TASKS_EXCHANGE), re.escape(queue)),
            (re.escape("celery.pidbox"), pidbox),
            (re.escape("reply.celery.pidbox"), _REPLY_QUEUES),
            (re.escape("celeryev"), _EVENT_RECEIVERS),
        ),
        worker=prefix,
    )


def event_consumer(service: str, queue: str, *, sources: tuple[str, ...]) -> ServiceAccess:
    """A service that consumes the guide's event queue ``queue`` (declared by the topology)."""
    return ServiceAccess(
        service,
        sources=sources,
        publishes=_failure_ladder(),
        consumes=exact(queue),
    )


#: Every KITT service's account. The broker user is the service name.
ACCESS: tuple[ServiceAccess, ...] = (
    celery_worker(
        "brain",
        BRAIN_COMMANDS,
        "brain",
        sources=("brain-service", "brain"),
        event_keys=("brain.#", "notification.#"),
        # The brain also calls RPC methods and reads its submitted tasks' results.
        publishes=exact(RPC_EXCHANGE),
        consumes=(_RESULT_QUEUES,),
    ),
    celery_worker(
        "research-worker",
        RESEARCH_TASKS,
        "research",
        sources=("research-service", "research-worker"),
        event_keys=("research.#",),
    ),
    celery_worker(
        "cad-worker",
        CAD_TASKS,
        "cad",
        sources=("cad-service", "cad-worker"),
        event_keys=("cad.#",),
    ),
    ServiceAccess(
        "fabrication",
        sources=("fabrication-service", "fabrication"),
        publishes=exact(EVENTS_EXCHANGE),
        event_keys=("fabrication.#",),
    ),
    event_consumer("notifications", NOTIFICATIONS, sources=("notification-service",)),
    event_consumer("audit", AUDIT_EVENTS, sources=("audit-service",)),
    ServiceAccess(
        "operator",
        sources=("operator",),
        # DLQ replay republishes through the default exchange, straight to the queue;
        # Flower and `celery inspect` broadcast on celery.pidbox and read the replies.
        publishes=exact(DEFAULT_EXCHANGE_RESOURCE, "celery.pidbox"),
        consumes=(_DEAD_LETTER_QUEUES, *exact(DLX_QUEUE), _REPLY_QUEUES, _EVENT_RECEIVERS),
        declares=(_REPLY_QUEUES, _EVENT_RECEIVERS, *exact(*CELERY_EXCHANGES)),
        binds=(
            (re.escape("reply.celery.pidbox"), _REPLY_QUEUES),
            (re.escape("celeryev"), _EVENT_RECEIVERS),
        ),
        tags=("monitoring",),
    ),
)


def service(name: str) -> ServiceAccess:
    """The access entry of service ``name``; ``ConfigurationError`` names the known ones."""
    for entry in ACCESS:
        if entry.service == name:
            return entry
    known = ", ".join(e.service for e in ACCESS)
    raise ConfigurationError(f"no service {name!r} in the access table (known: {known})")


def any_of(fragments: Iterable[str]) -> str:
    """One anchored regex matching any of ``fragments``; ``^$`` (nothing) when there are none."""
    unique = list(dict.fromkeys(fragments))
    if not unique:
        return NOTHING
    return "^(?:" + "|".join(unique) + ")$"


def permissions_of(entry: ServiceAccess) -> Permissions:
    """RabbitMQ's configure/write/read regexes for ``entry``.

    Declaring a queue with a dead-letter exchange also needs write on the exchange and
    read on the queue; binding needs write on the queue and read on the exchange.
    """
    bound_queues = [queue for _, queue in entry.binds]
    bound_exchanges = [exchange for exchange, _ in entry.binds]
    return Permissions(
        configure=any_of(entry.declares),
        write=any_of([*entry.publishes, *bound_queues]),
        read=any_of([*entry.consumes, *bound_exchanges]),
    )


def topic_regex(pattern: str) -> str:
    """An anchored regex matching the routing keys AMQP topic ``pattern`` matches.

    Words, ``*`` and a trailing ``#`` are supported (the table needs no more); a ``#``
    elsewhere is a ``ValueError``.
    """
    words = pattern.split(".")
    if "#" in words[:-1]:
        raise ValueError(f"topic pattern {pattern!r}: '#' is supported only as the last word")
    if words == ["#"]:
        return "^.*$"
    trailing_hash = words[-1] == "#"
    fixed = words[:-1] if trailing_hash else words
    text = r"\.".join(r"[^.]*" if w == "*" else re.escape(w) for w in fixed)
    if trailing_hash:
        text += r"(?:\.[^.]*)*"
    return f"^{text}$"


def topic_permissions_of(entry: ServiceAccess) -> tuple[TopicPermission, ...]:
    """The topic permission on ``kitty.events``: event keys to publish, binding keys to bind."""
    write = "|".join(topic_regex(p)[1:-1] for p in entry.event_keys)
    read = "|".join(re.escape(key) for key in entry.event_bindings)
    return (
        TopicPermission(
            EVENTS_EXCHANGE,
            write=f"^(?:{write})$" if write else NOTHING,
            read=f"^(?:{read})$" if read else NOTHING,
        ),
    )


def services_for_source(source: str) -> tuple[str, ...]:
    """Broker users allowed to publish events with ``source``."""
    return tuple(entry.user for entry in ACCESS if source in entry.sources)


def publisher_may_claim(publisher: str | None, source: str) -> str | None:
    """None when broker user ``publisher`` may publish as ``source``; else the reason why not."""
    allowed = services_for_source(source)
    if publisher is None:
        return f"event claims source {source!r} but carries no user_id (unauthenticated)"
    if publisher in allowed:
        return None
    expected = ", ".join(allowed) or "no service"
    return (
        f"event claims source {source!r} but was published by broker user {publisher!r}; "
        f"that source belongs to {expected}"
    )


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` hash: base64(salt + sha256(salt + pw))."""
    salt = os.urandom(4) if salt is None else salt
    if len(salt) != 4:
        raise ValueError("RabbitMQ's salt is 4 bytes")
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def password_matches(password: str, password_hash: str) -> bool:
    """True when ``password`` is the one ``password_hash`` (RabbitMQ's sha256 format) holds."""
    raw = base64.b64decode(password_hash)
    return hash_password(password, raw[:4]) == password_hash


def password_variable(name: str) -> str:
    """Environment variable holding service ``name``'s password: ``KITTY_PASSWORD_<NAME>``."""
    return PASSWORD_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def passwords_from(
    entries: Iterable[ServiceAccess],
    environ: Mapping[str, str],
    secrets: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Each service's password from ``secrets`` (by service name) or the environment.

    ``ConfigurationError`` names every missing one and where it may be given; there
    are no defaults.
    """
    secrets = secrets or {}
    found: dict[str, str] = {}
    missing: list[str] = []
    for entry in entries:
        password = secrets.get(entry.service) or environ.get(password_variable(entry.service))
        if password:
            found[entry.service] = password
        else:
            missing.append(f"{entry.service} ({password_variable(entry.service)})")
    if missing:
        raise ConfigurationError(
            "no password for " + ", ".join(missing) + ": set the variable, or give the "
            "service's line in --secrets"
        )
    return found


def parse_secrets(text: str) -> dict[str, str]:
    """A secrets file: a JSON object ``{"service": "password"}`` or ``service=password`` lines."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError as err:
            raise ConfigurationError(f"secrets file is not valid JSON: {err}") from err
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigurationError("secrets file must map service names to password strings")
        return dict(value)
    secrets: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition("=")
        if not sep or not name.strip() or not password:
            # The line is not echoed: it may hold a password.
            raise ConfigurationError(f"secrets file line {number} is not service=password")
        secrets[name.strip()] = password
    return secrets


def access_definitions(
    passwords: Mapping[str, str],
    *,
    vhost: str = "/",
    entries: Iterable[ServiceAccess] = ACCESS,
    salt: bytes | None = None,
) -> dict[str, Any]:
    """RabbitMQ definitions of the accounts: users (hashes only), permissions, topic permissions."""
    chosen = list(entries)
    return {
        "users": [
            {
                "name": e.user,
                "password_hash": hash_password(passwords[e.service], salt),
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": list(e.tags),
            }
            for e in chosen
        ],
        "permissions": [
            {"user": e.user, "vhost": vhost, **permissions_of(e).as_dict()} for e in chosen
        ],
        "topic_permissions": [
            {"user": e.user, "vhost": vhost, **t.as_dict()}
            for e in chosen
            for t in topic_permissions_of(e)
        ],
    }
