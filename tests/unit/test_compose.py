"""compose/ and Prometheus files: they parse, name files that exist, set no default password."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kitty_tasks.core.access import ACCESS, password_variable
from kitty_tasks.core.access import service as access_entry
from kitty_tasks.core.settings import Settings
from kitty_tasks.core.topology import AUDIT_EVENTS, EVENT_QUEUES, TASK_QUEUES
from tests.compose_support import (
    ALERTS,
    COMPOSE_DIR,
    COMPOSE_FILES,
    PROMETHEUS_CONFIG,
    ROOT,
    alert_rules,
    bind_mounts,
    compose_variables,
    env_example_variables,
    load,
    metric_names,
    project_metric_names,
)

#: A current RabbitMQ 4.x image with the management plugin (the quorum profile needs 4.0+).
RABBITMQ_IMAGE = r"rabbitmq:4\.([1-9]|[1-9][0-9])-management"
SECRET = re.compile(r"PASSWORD|PASS$|COOKIE|AUTH|SECRET|TOKEN")
APP_SERVICES = ("research-worker", "cad-worker", "brain-worker", "flower", "console", "exporter")
#: The broker user each compose service logs in as (an account of the access table).
COMPOSE_USERS = {
    "research-worker": "research-worker",
    "cad-worker": "cad-worker",
    "brain-worker": "brain",
    "flower": "operator",
    "console": "operator",
    "exporter": "operator",
}
#: Files compose mounts that a command writes before `docker compose up` (git-ignored).
GENERATED = {"./rabbitmq/access.json": "kitty-tasks access export"}
#: Variables `kitty-tasks access export` reads besides those compose uses.
ACCESS_VARIABLES = {password_variable(e.service) for e in ACCESS}


def services(path: Path) -> dict[str, Any]:
    return dict(load(path)["services"])


def mounted_source(service: dict[str, Any], target: str) -> str:
    for source, mount_target in bind_mounts(service):
        if mount_target == target:
            return source
    raise AssertionError(f"nothing is mounted at {target}")


@pytest.mark.parametrize("path", [*COMPOSE_FILES, PROMETHEUS_CONFIG, ALERTS], ids=lambda p: p.name)
def test_every_file_parses(path: Path) -> None:
    assert isinstance(load(path), dict)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_bind_mounted_file_exists(path: Path) -> None:
    for name, service in services(path).items():
        for source, _ in bind_mounts(service):
            if source in GENERATED:
                # Not in git (password hashes): ignored, and written by the named command.
                ignored = (ROOT / ".gitignore").read_text().splitlines()
                assert f"compose/{source.removeprefix('./')}" in ignored, source
                continue
            assert (path.parent / source).is_file(), f"{path.name}: {name} mounts missing {source}"


def test_the_image_builds_from_files_that_exist() -> None:
    # Given the build section every app service shares
    for name in APP_SERVICES:
        build = services(COMPOSE_DIR / "docker-compose.yml")[name]["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert context == ROOT
        assert dockerfile.is_file()
    # Then every COPY source of the Dockerfile exists in the context
    text = (COMPOSE_DIR / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.MULTILINE)
    sources = [s for line in copies for s in line.split()]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    # And the build context (trimmed by Dockerfile.dockerignore) keeps every one of them
    kept = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source.rstrip('/')}" in kept, f"Dockerfile.dockerignore drops {source}"
    # And the installed project is what pyproject.toml packages
    assert {"kitty_tasks", "events", "rpc", "celeryconfig.py", "pyproject.toml"} <= set(sources)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_no_default_passwords(path: Path) -> None:
    settings = "\n".join(
        line.split(" #")[0]
        for line in path.read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    # A secret is a required variable: unset, `docker compose` stops with the message.
    for match in compose_variables(path):
        if SECRET.search(match["name"]):
            assert match["op"] == ":?", f"{match.group()} must be required (${{VAR:?message}})"
            assert match["arg"].strip(), f"{match.group()} needs a message"
    for word in ("guest", "changeme", "password123", "admin:admin"):
        assert word not in settings.lower(), f"{path.name} sets {word!r}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_variable_is_documented_in_env_example(path: Path) -> None:
    documented = env_example_variables()
    for match in compose_variables(path):
        assert match["name"] in documented, f"{match['name']} is not in compose/.env.example"


def test_env_example_documents_only_used_variables_and_leaves_secrets_empty() -> None:
    used = {m["name"] for p in COMPOSE_FILES for m in compose_variables(p)} | ACCESS_VARIABLES
    text = (COMPOSE_DIR / ".env.example").read_text()
    for name, value in env_example_variables().items():
        assert name in used, f".env.example documents unused {name}"
        # Each variable has its own comment above it.
        assert re.search(rf"#[^\n]*\n(?:#[^\n]*\n)*{name}=", text), f"{name} has no comment"
        if SECRET.search(name) or name == "RABBITMQ_USER":
            assert value == "", f"{name} must have no example value"


def test_single_node_broker_setup() -> None:
    rabbitmq = services(COMPOSE_DIR / "docker-compose.yml")["rabbitmq"]
    assert re.fullmatch(RABBITMQ_IMAGE, rabbitmq["image"]), rabbitmq["image"]
    assert rabbitmq["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert mounted_source(rabbitmq, "/etc/rabbitmq/rabbitmq.conf") == "./rabbitmq/rabbitmq.conf"
    assert mounted_source(rabbitmq, "/etc/rabbitmq/kitty/definitions.json") == (
        "./rabbitmq/definitions.json"
    )
    plugins = (COMPOSE_DIR / "rabbitmq/enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins
    assert "rabbitmq_prometheus" in plugins
    assert plugins.strip().endswith("].")


@pytest.mark.parametrize(
    ("compose", "conf"), [("docker-compose.yml", "rabbitmq.conf"), ("cluster.yml", "cluster.conf")]
)
def test_the_entrypoint_loads_the_mounted_definitions(compose: str, conf: str) -> None:
    # Given the seeding script and the conf file each broker uses
    script = (COMPOSE_DIR / "rabbitmq/entrypoint.sh").read_text()
    settings = (COMPOSE_DIR / "rabbitmq" / conf).read_text()
    load_dir = re.search(r"^load_definitions\s*=\s*(\S+)", settings, re.MULTILINE)
    assert load_dir
    # Then the script writes where rabbitmq.conf loads from, and reads what compose mounts
    assert f"DEFINITIONS_DIR={load_dir[1]}" in script
    topology = re.search(r"^TOPOLOGY=(\S+)", script, re.MULTILINE)
    assert topology
    for name, service in services(COMPOSE_DIR / compose).items():
        if name.startswith("rabbitmq"):
            assert mounted_source(service, topology[1])
            assert mounted_source(service, "/etc/rabbitmq/rabbitmq.conf") == f"./rabbitmq/{conf}"
            script_path = service["entrypoint"][-1]
            assert mounted_source(service, script_path) == "./rabbitmq/entrypoint.sh"
            assert service["command"] == ["rabbitmq-server"]


def test_app_services_wait_for_a_healthy_broker_and_log_in_as_their_own_user() -> None:
    all_services = services(COMPOSE_DIR / "docker-compose.yml")
    for name in APP_SERVICES:
        app = all_services[name]
        assert app["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
        # Its own account of the access table, with that account's required password
        user = access_entry(COMPOSE_USERS[name]).user
        url = app["environment"]["RABBITMQ_URL"]
        assert url.startswith(f"amqp://{user}:${{{password_variable(user)}:?"), name
        assert "@rabbitmq:5672/" in url, name
        assert "RABBITMQ_USER" not in url, name


def test_each_worker_runs_under_the_node_name_and_queue_its_account_allows() -> None:
    all_services = services(COMPOSE_DIR / "docker-compose.yml")
    for name in ("research-worker", "cad-worker", "brain-worker"):
        command = all_services[name]["command"]
        entry = access_entry(COMPOSE_USERS[name])
        # The pidbox permission covers only <prefix>@host.celery.pidbox
        assert command[command.index("-n") + 1] == f"{entry.worker}@%h", name
        queue = command[command.index("-Q") + 1]
        assert any(q == queue.replace(".", "\\.") for q in entry.consumes), name


@pytest.mark.parametrize(
    ("compose", "conf"), [("docker-compose.yml", "rabbitmq.conf"), ("cluster.yml", "cluster.conf")]
)
def test_every_broker_loads_the_exported_accounts(compose: str, conf: str) -> None:
    script = (COMPOSE_DIR / "rabbitmq/entrypoint.sh").read_text()
    access_path = re.search(r"^ACCESS=(\S+)", script, re.MULTILINE)
    assert access_path
    # The script refuses to start without the file, naming the command that writes it
    assert 'if [ ! -f "$ACCESS" ]' in script
    assert "kitty-tasks access export" in script
    for name, node in services(COMPOSE_DIR / compose).items():
        if name.startswith("rabbitmq"):
            assert mounted_source(node, access_path[1]) == "./rabbitmq/access.json", name


def test_workers_serve_each_task_queue_with_metrics() -> None:
    all_services = services(COMPOSE_DIR / "docker-compose.yml")
    served = set()
    # Each queue's pool fits its work (README, "Worker defaults per queue"), as the Procfile's.
    pools = {"research-worker": "threads", "cad-worker": "prefork", "brain-worker": "prefork"}
    procfile = (COMPOSE_DIR.parent / "Procfile").read_text()
    for name, pool in pools.items():
        service = all_services[name]
        command = service["command"]
        assert command[:4] == ["celery", "-A", "kitty_tasks", "worker"]
        assert command[command.index("--pool") + 1] == pool
        queue = command[command.index("-Q") + 1]
        prefix = name.split("-")[0]
        # (make run names each research process research@research.N.host)
        assert re.search(rf"-Q {re.escape(queue)} -n {prefix}@\S*%h --pool {pool} ", procfile)
        served.add(command[command.index("-Q") + 1])
        port = service["environment"]["KITTY_METRICS_PORT"]
        assert port in service["expose"]
        assert service["environment"]["PROMETHEUS_MULTIPROC_DIR"] in service["tmpfs"]
    assert served == set(TASK_QUEUES)


def test_research_runs_one_threads_worker_per_core_as_make_run_does() -> None:
    research = services(COMPOSE_DIR / "docker-compose.yml")["research-worker"]
    run_sh = (COMPOSE_DIR.parent / "scripts" / "run.sh").read_text()
    # Replicas in compose, honcho's concurrency in make run: the same variable and default
    assert research["deploy"]["replicas"] == "${KITTY_RESEARCH_PROCESSES:-2}"
    assert '-c "research=${KITTY_RESEARCH_PROCESSES:-2}"' in run_sh
    assert "container_name" not in research  # replicas need names of their own


def test_flower_requires_basic_auth_in_compose() -> None:
    flower = services(COMPOSE_DIR / "docker-compose.yml")["flower"]
    assert flower["command"][:3] == ["python", "-m", "kitty_tasks.ops.flower"]
    assert "--insecure-local" not in flower["command"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_the_console_requires_its_login_in_compose() -> None:
    console = services(COMPOSE_DIR / "docker-compose.yml")["console"]
    command = console["command"]
    assert command[:2] == ["kitty-tasks", "console"]
    assert "--read-only" not in command
    port = command[command.index("--port") + 1]
    assert any(mapping.endswith(f":{port}:{port}") for mapping in console["ports"])
    for name in ("KITTY_CONSOLE_USER", "KITTY_CONSOLE_PASSWORD"):
        assert console["environment"][name].startswith(f"${{{name}:?"), name


def test_cluster_has_three_nodes_sharing_a_required_cookie() -> None:
    nodes = services(COMPOSE_DIR / "cluster.yml")
    assert sorted(nodes) == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    conf = (COMPOSE_DIR / "rabbitmq/cluster.conf").read_text()
    for name, node in nodes.items():
        env = node["environment"]
        assert env["RABBITMQ_ERLANG_COOKIE"].startswith("${RABBITMQ_ERLANG_COOKIE:?"), name
        assert env["RABBITMQ_NODENAME"] == f"rabbit@{node['hostname']}"
        assert f"= {env['RABBITMQ_NODENAME']}" in conf, f"{name} is not a peer in cluster.conf"
        # The quorum profile needs RabbitMQ 4.x: every node runs a current 4.x image.
        assert re.fullmatch(RABBITMQ_IMAGE, node["image"]), node["image"]
        definitions = mounted_source(node, "/etc/rabbitmq/kitty/definitions.json")
        assert definitions == "./rabbitmq/definitions.quorum.json"
    assert "peer_discovery_backend = classic_config" in conf
    # The cluster definitions are the quorum profile's (see test_definitions): quorum
    # queues, and the audit log a stream.
    queues = json.loads((COMPOSE_DIR / "rabbitmq/definitions.quorum.json").read_text())["queues"]
    types = {q["name"]: q["arguments"].get("x-queue-type") for q in queues}
    assert types.pop(AUDIT_EVENTS) == "stream"
    assert set(types.values()) == {"quorum"}
    assert {*EVENT_QUEUES, *TASK_QUEUES} <= {q["name"] for q in queues}


def test_prometheus_loads_the_mounted_rules_and_scrapes_every_part() -> None:
    config = load(PROMETHEUS_CONFIG)
    prometheus = services(COMPOSE_DIR / "docker-compose.yml")["prometheus"]
    for rule_file in config["rule_files"]:
        assert (COMPOSE_DIR / mounted_source(prometheus, rule_file)).resolve() == ALERTS
    assert mounted_source(prometheus, "/etc/prometheus/prometheus.yml") == (
        "./prometheus/prometheus.yml"
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    all_services = services(COMPOSE_DIR / "docker-compose.yml")
    targets = {
        target
        for job in jobs.values()
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {"rabbitmq:15692", "exporter:9808", "flower:5555"} <= targets
    for target in targets:
        host = target.split(":")[0]
        assert host in all_services, target
    assert "15692" in all_services["rabbitmq"]["expose"]
    assert "9808" in all_services["exporter"]["command"]
    assert jobs["rabbitmq-queues"]["metrics_path"] == "/metrics/detailed"
    workers = jobs["kitty-workers"]["dns_sd_configs"][0]
    assert sorted(workers["names"]) == ["brain-worker", "cad-worker", "research-worker"]
    assert (
        str(workers["port"]) == all_services["research-worker"]["environment"]["KITTY_METRICS_PORT"]
    )


def test_alerts_cover_what_operators_asked_for() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    assert "> 10000" in rules["KittyQueueBacklog"]["expr"]
    no_consumers = rules["KittyTaskQueueWithoutConsumers"]
    assert "== 0" in no_consumers["expr"]
    assert no_consumers["for"] == "5m"
    for queue in TASK_QUEUES:
        assert queue.replace(".", "\\\\.") in no_consumers["expr"]
    assert "dlq" in rules["KittyDeadLettersGrowing"]["expr"]
    assert "> 0.8" in rules["RabbitMQMemoryHigh"]["expr"]
    assert "< 5e9" in rules["RabbitMQDiskLow"]["expr"]


def test_alerts_read_only_metrics_that_exist() -> None:
    # Broker names are checked against a live scrape in tests/integration/test_broker_metrics.py.
    project = project_metric_names()
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        for name in names:
            if name.startswith("kitty_"):
                assert name in project, f"{rule['alert']}: the project exports no {name}"
            else:
                assert name.startswith("rabbitmq_") or name == "up", f"{rule['alert']}: {name}"


def test_metric_name_extraction() -> None:
    expr = 'sum by (queue) (rate(kitty_tasks_total{outcome="failed"}[5m])) / on(queue) up > 1e3'
    assert metric_names(expr) == {"kitty_tasks_total", "up"}


@pytest.mark.parametrize("conf", ["rabbitmq.conf", "cluster.conf"])
def test_the_broker_refuses_bodies_the_platform_would_refuse(conf: str) -> None:
    settings = (COMPOSE_DIR / "rabbitmq" / conf).read_text()
    limit = re.search(r"^max_message_size\s*=\s*(\d+)", settings, re.MULTILINE)
    assert limit
    assert int(limit[1]) == Settings.model_fields["max_message_bytes"].default
