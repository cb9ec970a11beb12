"""The access table: derived regexes, topic patterns, password hashes, secrets and the CLI."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from kitty_tasks.core.access import (
    ACCESS,
    HASHING_ALGORITHM,
    access_definitions,
    hash_password,
    parse_secrets,
    password_matches,
    password_variable,
    passwords_from,
    permissions_of,
    publisher_may_claim,
    service,
    topic_permissions_of,
    topic_regex,
)
from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.topology import TOPOLOGY
from kitty_tasks.ops.cli import main

SERVICES = ("brain", "research-worker", "cad-worker", "fabrication", "notifications", "audit")
ALL_PASSWORDS = {password_variable(e.service): f"pw-{e.service}" for e in ACCESS}


def allowed(regex: str, name: str) -> bool:
    """How RabbitMQ applies a permission regex to a resource name (a search, so anchors matter)."""
    return re.search(regex, name) is not None


def test_every_kitt_service_has_an_account() -> None:
    assert {e.service for e in ACCESS} == {*SERVICES, "operator"}
    assert len({e.user for e in ACCESS}) == len(ACCESS)


def test_every_regex_is_anchored_and_names_are_escaped() -> None:
    for entry in ACCESS:
        for regex in permissions_of(entry).as_dict().values():
            assert regex.startswith("^"), (entry.service, regex)
            assert regex.endswith("$"), (entry.service, regex)
            re.compile(regex)
    research = permissions_of(service("research-worker"))
    # "research.tasks" escaped: its dot does not let "researchXtasks" through
    assert allowed(research.read, "research.tasks")
    assert not allowed(research.read, "researchXtasks")
    assert not allowed(research.read, "research.tasks.dlq")
    assert not allowed(research.read, "x.research.tasks")


def test_workers_read_only_their_queue_and_never_a_dlq() -> None:
    for name, queue in (("research-worker", "research.tasks"), ("cad-worker", "cad.tasks")):
        permissions = permissions_of(service(name))
        assert allowed(permissions.read, queue)
        others = {"research.tasks", "cad.tasks", "brain.commands"} - {queue}
        for dlq in (q.name for q in TOPOLOGY.queues if q.name.endswith(".dlq")):
            # Read is also purge, configure is also delete: neither on a DLQ
            assert not allowed(permissions.read, dlq), (name, dlq)
            assert not allowed(permissions.configure, dlq), (name, dlq)
        for other in others:
            assert not allowed(permissions.read, other), (name, other)
        # What a Celery worker needs: its pidbox, the ladder, dlx, results on the default exchange
        prefix = service(name).worker
        assert allowed(permissions.configure, f"{prefix}@host.example.celery.pidbox")
        assert not allowed(permissions.configure, "other@host.celery.pidbox")
        for exchange in ("kitty.delay.5s", "dlx", "amq.default", "reply.celery.pidbox"):
            assert allowed(permissions.write, exchange), (name, exchange)


def test_only_the_operator_reads_dead_letter_queues() -> None:
    operator = permissions_of(service("operator"))
    assert allowed(operator.read, "research.tasks.dlq")
    assert allowed(operator.read, "dlx.queue")
    assert not allowed(operator.read, "research.tasks")
    assert operator.configure != ".*"
    assert not allowed(operator.configure, "research.tasks.dlq")


def test_fabrication_may_publish_only_fabrication_events() -> None:
    entry = service("fabrication")
    (topic,) = topic_permissions_of(entry)
    assert topic.exchange == "kitty.events"
    assert allowed(topic.write, "fabrication.print.started")
    assert allowed(topic.write, "fabrication")
    assert not allowed(topic.write, "cad.model.generated")
    assert not allowed(topic.write, "fabricationx.print")
    assert not allowed(topic.write, "x.fabrication.print")
    permissions = permissions_of(entry)
    assert permissions.configure == "^$"
    assert permissions.read == "^$"
    assert allowed(permissions.write, "kitty.events")
    assert not allowed(permissions.write, "kitty.tasks")


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("fabrication.#", "fabrication.print.started", True),
        ("fabrication.#", "fabrication", True),
        ("fabrication.#", "fabrication-x.print", False),
        ("cad.*.generated", "cad.model.generated", True),
        ("cad.*.generated", "cad.a.b.generated", False),
        ("#", "anything.at.all", True),
    ],
)
def test_topic_regex_matches_like_the_topic_exchange(pattern: str, key: str, matches: bool) -> None:
    assert allowed(topic_regex(pattern), key) is matches


def test_topic_regex_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="'#' is supported only as the last word"):
        topic_regex("#.started")


def test_password_hash_is_rabbitmqs_salted_sha256() -> None:
    # The worked example of RabbitMQ's passwords guide: salt 908DC60A, password test12
    assert hash_password("test12", bytes.fromhex("908dc60a")) == (
        "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    )
    fresh = hash_password("test12")
    assert fresh != hash_password("test12"), "a new salt each time"
    assert password_matches("test12", fresh)
    assert not password_matches("test13", fresh)


def test_a_missing_password_names_the_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        passwords_from(ACCESS, {"KITTY_PASSWORD_BRAIN": "x"})
    message = str(caught.value)
    assert "KITTY_PASSWORD_RESEARCH_WORKER" in message
    assert "KITTY_PASSWORD_BRAIN" not in message


def test_secrets_file_formats_and_errors() -> None:
    assert parse_secrets("# comment\nbrain=a=b\n\naudit= x\n") == {"brain": "a=b", "audit": " x"}
    assert parse_secrets('{"brain": "p"}') == {"brain": "p"}
    with pytest.raises(ConfigurationError, match="line 2 is not service=password") as caught:
        parse_secrets("brain=ok\nhunter2\n")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        parse_secrets("{oops")
    with pytest.raises(ConfigurationError, match="password strings"):
        parse_secrets('{"brain": 1}')


def test_publisher_may_claim_only_its_own_sources() -> None:
    assert publisher_may_claim("fabrication", "fabrication-service") is None
    reason = publisher_may_claim("fabrication", "cad-service")
    assert reason is not None
    assert "'cad-service'" in reason
    assert "cad-worker" in reason
    assert "unauthenticated" in str(publisher_may_claim(None, "fabrication-service"))


def test_definitions_hold_hashes_permissions_and_topic_permissions() -> None:
    passwords = {e.service: f"pw-{e.service}" for e in ACCESS}
    definitions = access_definitions(passwords, vhost="/")
    text = json.dumps(definitions)
    for password in passwords.values():
        assert password not in text
    users = {u["name"]: u for u in definitions["users"]}
    assert users.keys() == {e.user for e in ACCESS}
    assert users["operator"]["tags"] == ["monitoring"]
    for entry in ACCESS:
        user = users[entry.user]
        assert user["hashing_algorithm"] == HASHING_ALGORITHM
        assert password_matches(passwords[entry.service], user["password_hash"])
    fabrication = next(p for p in definitions["topic_permissions"] if p["user"] == "fabrication")
    assert fabrication["exchange"] == "kitty.events"
    assert fabrication["vhost"] == "/"


def test_export_writes_an_owner_only_file_without_passwords(tmp_path: Path) -> None:
    out = tmp_path / "access.json"
    result = CliRunner().invoke(main, ["access", "export", "-o", str(out)], env=ALL_PASSWORDS)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    for password in ALL_PASSWORDS.values():
        assert password not in text
        assert password not in result.output
    assert {u["name"] for u in json.loads(text)["users"]} == {e.user for e in ACCESS}


def test_export_reads_a_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text("fabrication=from-file\n")
    result = CliRunner().invoke(
        main,
        ["access", "export", "--service", "fabrication", "--secrets", str(secrets), "-o", "-"],
        env={"KITTY_PASSWORD_FABRICATION": ""},
    )
    assert result.exit_code == 0, result.output
    (user,) = json.loads(result.output)["users"]
    assert password_matches("from-file", user["password_hash"])


def test_export_without_a_password_fails_naming_the_variable(tmp_path: Path) -> None:
    env = {**ALL_PASSWORDS, "KITTY_PASSWORD_AUDIT": ""}
    result = CliRunner().invoke(main, ["access", "export", "-o", str(tmp_path / "a.json")], env=env)
    assert result.exit_code == 1
    assert "KITTY_PASSWORD_AUDIT" in result.output
    assert not (tmp_path / "a.json").exists()


def test_an_unknown_service_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["access", "export", "--service", "printer", "-o", "-"])
    assert result.exit_code == 2
    assert "no service 'printer'" in result.output
    assert "fabrication" in result.output
